"""Django admin for lifecycle metrics, transitions and each workspace's thresholds (superusers only)."""

from django.contrib import admin

from crm_site.admin import TenantAdmin
from lifecycle.models import CustomerMetrics, LifecycleEvent, LifecyclePolicy, LifecycleRun, RewardGrant


@admin.register(CustomerMetrics)
class CustomerMetricsAdmin(TenantAdmin):
    list_display = [
        "customer", "tenant", "stage", "order_count", "revenue", "days_since_last_order", "usual_gap_days",
        "p_alive", "rfm_segment", "is_heavy_user", "is_reward_due", "computed_at",
    ]
    list_filter = ["tenant", "stage", "is_heavy_user", "is_reward_due", "is_reinforce_due", "model_kind"]
    search_fields = ["customer__email", "customer__external_id", "customer__last_name", "rfm_segment"]
    list_select_related = ["tenant", "customer"]
    raw_id_fields = ["customer"]
    show_full_result_count = False


@admin.register(LifecycleEvent)
class LifecycleEventAdmin(TenantAdmin):
    list_display = ["customer", "kind", "from_value", "to_value", "reason", "occurred_at", "tenant"]
    list_filter = ["tenant", "kind", "to_value"]
    search_fields = ["customer__email", "customer__external_id", "reason"]
    list_select_related = ["tenant", "customer"]
    raw_id_fields = ["customer"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False


@admin.register(LifecyclePolicy)
class LifecyclePolicyAdmin(TenantAdmin):
    list_display = [
        "tenant", "onboarding_days", "at_risk_gap_multiplier", "at_risk_p_alive", "one_time_buyer_at_risk_days",
        "lapsed_days", "heavy_user_revenue_share", "updated_at",
    ]
    search_fields = ["tenant__name", "tenant__slug"]


@admin.register(RewardGrant)
class RewardGrantAdmin(TenantAdmin):
    list_display = ["customer", "rule", "occasion", "granted_at", "note", "tenant"]
    list_filter = ["tenant", "rule"]
    search_fields = ["customer__email", "customer__external_id", "rule", "note"]
    list_select_related = ["tenant", "customer"]
    raw_id_fields = ["customer"]
    date_hierarchy = "granted_at"


@admin.register(LifecycleRun)
class LifecycleRunAdmin(TenantAdmin):
    list_display = ["started_at", "tenant", "model_kind", "customers", "repeat_customers", "rows_written",
                    "events_written", "seconds", "finished_at"]
    list_filter = ["tenant", "model_kind"]
    readonly_fields = ["model_params", "population", "stage_counts"]
    date_hierarchy = "started_at"
