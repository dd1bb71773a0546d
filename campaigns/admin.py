"""Django admin for campaigns: every workspace's campaigns, steps, outbox and tracking events (superusers only)."""

from django.contrib import admin

from campaigns.models import (
    Campaign,
    CampaignRun,
    CampaignStep,
    Message,
    MessageEvent,
    RewardCode,
    SenderIdentity,
    SendingPolicy,
)
from crm_site.admin import TenantAdmin, TenantStackedInline


@admin.register(SenderIdentity)
class SenderIdentityAdmin(TenantAdmin):
    list_display = ["name", "from_name", "from_email", "sms_from", "is_default", "tenant"]
    list_filter = ["tenant", "is_default"]
    search_fields = ["name", "from_name", "from_email"]


@admin.register(SendingPolicy)
class SendingPolicyAdmin(TenantAdmin):
    list_display = ["tenant", "frequency_cap", "frequency_window_days", "quiet_hours_enabled", "quiet_hours_start",
                    "quiet_hours_end"]


class CampaignStepInline(TenantStackedInline):
    model = CampaignStep
    fields = ["position", "channel", "delay_days", "delay_hours", "subject", "body", "body_format"]


@admin.register(Campaign)
class CampaignAdmin(TenantAdmin):
    list_display = ["name", "tenant", "kind", "status", "priority", "trigger", "scheduled_at", "created_at"]
    list_filter = ["tenant", "kind", "status", "priority", "trigger"]
    search_fields = ["name", "description"]
    date_hierarchy = "created_at"
    raw_id_fields = ["created_by", "schedule"]
    inlines = [CampaignStepInline]


@admin.register(CampaignStep)
class CampaignStepAdmin(TenantAdmin):
    list_display = ["campaign", "position", "channel", "delay_days", "delay_hours", "subject", "tenant"]
    list_filter = ["channel", "tenant"]
    search_fields = ["subject", "body", "campaign__name"]
    list_select_related = ["tenant", "campaign"]
    raw_id_fields = ["campaign"]


@admin.register(CampaignRun)
class CampaignRunAdmin(TenantAdmin):
    list_display = ["campaign", "number", "tenant", "started_at", "steps_dispatched", "finished_at"]
    list_filter = ["tenant"]
    list_select_related = ["tenant", "campaign"]
    raw_id_fields = ["campaign"]


@admin.register(Message)
class MessageAdmin(TenantAdmin):
    list_display = ["pk", "campaign", "customer", "channel", "status", "skip_reason", "scheduled_for", "attempts",
                    "sent_at", "tenant"]
    list_filter = ["status", "channel", "skip_reason", "tenant"]
    search_fields = ["to_address", "provider_message_id"]
    raw_id_fields = ["campaign", "step", "customer"]
    list_select_related = ["tenant", "campaign", "customer"]
    show_full_result_count = False
    readonly_fields = ["lease_owner", "lease_expires_at", "provider_message_id", "created_at"]


@admin.register(MessageEvent)
class MessageEventAdmin(TenantAdmin):
    list_display = ["kind", "message", "campaign", "occurred_at", "tenant"]
    list_filter = ["kind", "tenant"]
    raw_id_fields = ["message", "campaign", "customer"]
    list_select_related = ["tenant", "message", "campaign"]
    show_full_result_count = False


@admin.register(RewardCode)
class RewardCodeAdmin(TenantAdmin):
    list_display = ["code", "campaign", "customer", "created_at", "redeemed_at", "tenant"]
    list_filter = ["tenant"]
    search_fields = ["code"]
    raw_id_fields = ["campaign", "customer"]
    list_select_related = ["tenant", "campaign", "customer"]
