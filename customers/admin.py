"""Django admin for customers, orders, consent, suppressions, the timeline, API keys and imports (superusers only)."""

from django.contrib import admin

from crm_site.admin import PlatformAdmin, TenantAdmin, TenantTabularInline
from customers.models import (
    ApiKey,
    ConsentEvent,
    Customer,
    ImportRun,
    Interaction,
    MessagingPause,
    Order,
    OrderLine,
    Product,
    Suppression,
)


@admin.register(Customer)
class CustomerAdmin(TenantAdmin):
    list_display = ["__str__", "email", "phone", "tenant", "email_opt_in", "sms_opt_in", "first_seen_at"]
    list_filter = ["tenant", "email_opt_in", "sms_opt_in"]
    search_fields = ["email", "phone", "first_name", "last_name", "external_id"]
    readonly_fields = ["email_opt_in", "sms_opt_in"]  # derived from the consent ledger, never edited by hand
    show_full_result_count = False


@admin.register(Product)
class ProductAdmin(TenantAdmin):
    list_display = ["name", "sku", "category", "price", "tenant"]
    list_filter = ["tenant", "category"]
    search_fields = ["name", "sku", "category"]


class OrderLineInline(TenantTabularInline):
    model = OrderLine
    raw_id_fields = ["product"]


@admin.register(Order)
class OrderAdmin(TenantAdmin):
    list_display = ["external_id", "customer", "tenant", "placed_at", "total", "currency", "status"]
    list_filter = ["tenant", "status", "channel", "currency"]
    search_fields = ["external_id", "customer__email"]
    list_select_related = ["tenant", "customer"]
    raw_id_fields = ["customer"]
    date_hierarchy = "placed_at"
    show_full_result_count = False
    inlines = [OrderLineInline]


@admin.register(OrderLine)
class OrderLineAdmin(TenantAdmin):
    list_display = ["order", "sku", "quantity", "unit_price", "line_total", "tenant"]
    list_filter = ["tenant"]
    search_fields = ["sku", "order__external_id"]
    list_select_related = ["tenant", "order"]
    raw_id_fields = ["order", "product"]
    show_full_result_count = False


@admin.register(ConsentEvent)
class ConsentEventAdmin(TenantAdmin):
    list_display = ["customer", "channel", "purpose", "action", "method", "occurred_at", "tenant"]
    list_filter = ["tenant", "channel", "action", "method"]
    search_fields = ["customer__email", "source"]
    list_select_related = ["tenant", "customer"]
    raw_id_fields = ["customer"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        return False  # append-only ledger: record a new event instead

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Suppression)
class SuppressionAdmin(TenantAdmin):
    list_display = ["channel", "reason", "note", "created_at", "tenant"]
    list_filter = ["tenant", "channel", "reason"]
    search_fields = ["value_hash", "note"]


@admin.register(Interaction)
class InteractionAdmin(TenantAdmin):
    list_display = ["customer", "kind", "summary", "occurred_at", "tenant"]
    list_filter = ["tenant", "kind"]
    search_fields = ["summary", "customer__email"]
    list_select_related = ["tenant", "customer"]
    raw_id_fields = ["customer", "author"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False


@admin.register(MessagingPause)
class MessagingPauseAdmin(TenantAdmin):
    list_display = ["customer", "paused_until", "created_at", "tenant"]
    list_filter = ["tenant"]
    search_fields = ["customer__email"]
    list_select_related = ["tenant", "customer"]
    raw_id_fields = ["customer"]


@admin.register(ApiKey)
class ApiKeyAdmin(PlatformAdmin):
    list_display = ["name", "prefix", "workspace", "created_by", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["workspace", "revoked_at"]
    search_fields = ["name", "prefix", "workspace__name"]
    list_select_related = ["workspace", "created_by"]
    raw_id_fields = ["created_by"]
    autocomplete_fields = ["workspace"]
    # Keys are made (and their secret shown once) in the workspace's settings, never typed in here.
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        return False


@admin.register(ImportRun)
class ImportRunAdmin(TenantAdmin):
    list_display = ["original_name", "kind", "status", "mode", "created_count", "updated_count", "error_count",
                    "created_at", "tenant"]
    list_filter = ["tenant", "kind", "status", "mode"]
    search_fields = ["original_name"]
    list_select_related = ["tenant"]
    raw_id_fields = ["job", "created_by"]
    readonly_fields = ["errors", "summary", "header", "mapping", "options"]
