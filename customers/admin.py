from django.contrib import admin

from crm_site.admin import TenantAdmin
from customers.models import ConsentEvent, Customer, Interaction, Order, OrderLine, Product, Suppression


@admin.register(Customer)
class CustomerAdmin(TenantAdmin):
    list_display = ["__str__", "email", "phone", "tenant", "email_opt_in", "sms_opt_in", "first_seen_at"]
    list_filter = ["tenant", "email_opt_in", "sms_opt_in"]
    search_fields = ["email", "phone", "first_name", "last_name", "external_id"]
    show_full_result_count = False


@admin.register(Product)
class ProductAdmin(TenantAdmin):
    list_display = ["name", "sku", "category", "price", "tenant"]
    list_filter = ["tenant", "category"]
    search_fields = ["name", "sku", "category"]


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    raw_id_fields = ["product"]
    exclude = ["tenant"]


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

    def has_change_permission(self, request, obj=None):
        return False  # append-only ledger


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
    show_full_result_count = False


from customers.models import ImportRun  # noqa: E402  (added by the CSV import)


@admin.register(ImportRun)
class ImportRunAdmin(TenantAdmin):
    list_display = ["original_name", "kind", "status", "mode", "created_count", "updated_count", "error_count",
                    "created_at", "tenant"]
    list_filter = ["tenant", "kind", "status", "mode"]
    search_fields = ["original_name"]
    list_select_related = ["tenant"]
    raw_id_fields = ["job", "created_by"]
    readonly_fields = ["errors", "summary", "header", "mapping", "options"]
