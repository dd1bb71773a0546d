"""Django admin for the platform: superusers see every workspace (WorkspaceMiddleware enters the platform scope)."""

from django.contrib import admin

from crm_site.models import BackgroundJob, Invitation, Membership, Workspace


class TenantAdmin(admin.ModelAdmin):
    """Admin of a tenant-owned model: filterable by workspace, workspace shown in every list."""

    list_select_related = ["tenant"]
    autocomplete_fields = ["tenant"]

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    has_view_permission = has_add_permission = has_change_permission = has_delete_permission = (
        lambda self, request, obj=None: request.user.is_active and request.user.is_superuser
    )


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_active", "time_zone", "currency", "created_at"]
    list_filter = ["is_active", "currency"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "workspace", "role", "created_at"]
    list_filter = ["role", "workspace"]
    search_fields = ["user__username", "user__email", "workspace__name"]
    list_select_related = ["user", "workspace"]
    autocomplete_fields = ["user", "workspace"]


@admin.register(Invitation)
class InvitationAdmin(TenantAdmin):
    list_display = ["email", "tenant", "role", "created_at", "expires_at", "accepted_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["email"]
    readonly_fields = ["token"]


@admin.register(BackgroundJob)
class BackgroundJobAdmin(TenantAdmin):
    list_display = ["kind", "tenant", "state", "progress", "total", "created_at", "finished_at"]
    list_filter = ["state", "kind", "tenant"]
    search_fields = ["kind", "message"]
