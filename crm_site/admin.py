"""Django admin for the platform: superusers see every workspace (WorkspaceMiddleware enters the platform scope).

Every model of ours is admin-registered through ``PlatformAdmin`` (platform tables) or ``TenantAdmin``
(tenant-owned tables), which open the admin to superusers only: a staff member of a workspace never sees
another workspace's rows here, whatever Django permissions they were given. Inlines of tenant-owned
children use ``TenantTabularInline`` / ``TenantStackedInline`` so new rows get the parent's workspace.
"""

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet

from crm_site.models import BackgroundJob, Invitation, Membership, Workspace
from crm_site.tenancy import TenantModel


def _is_platform_admin(request) -> bool:
    return request.user.is_active and request.user.is_superuser


class PlatformAdmin(admin.ModelAdmin):
    """Admin of any Rapport model: superusers only."""

    def has_module_permission(self, request):
        return _is_platform_admin(request)

    def has_view_permission(self, request, obj=None):
        return _is_platform_admin(request)

    def has_add_permission(self, request):
        return _is_platform_admin(request)

    def has_change_permission(self, request, obj=None):
        return _is_platform_admin(request)

    def has_delete_permission(self, request, obj=None):
        return _is_platform_admin(request)

    def get_queryset(self, request):
        # Django looks an object up before checking permissions; without the platform scope that lookup
        # would fail closed with an error page instead of a plain "not allowed".
        if not _is_platform_admin(request):
            raise PermissionDenied
        return super().get_queryset(request)


class TenantAdminForm(forms.ModelForm):
    """Refuses to link a row to an object of another workspace (the admin sees all of them at once)."""

    def clean(self):
        cleaned_data = super().clean()
        tenant = cleaned_data.get("tenant") if "tenant" in self.fields else None
        tenant_id = tenant.pk if tenant is not None else self.instance.tenant_id
        if tenant_id is None:
            return cleaned_data
        for name in self.fields:
            value = cleaned_data.get(name)
            related = list(value) if isinstance(value, QuerySet) else [value]  # many-to-many values are querysets
            foreign = [obj for obj in related if isinstance(obj, TenantModel) and obj.tenant_id != tenant_id]
            if foreign:
                self.add_error(name, f"{foreign[0]} belongs to another workspace.")
        return cleaned_data


class TenantAdmin(PlatformAdmin):
    """Admin of a tenant-owned model: workspace shown and filterable, fixed once the row exists."""

    form = TenantAdminForm
    list_select_related = ["tenant"]
    autocomplete_fields = ["tenant"]

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if obj is not None and "tenant" not in readonly:
            # Moving a row to another workspace would strand its children in the old one.
            readonly.append("tenant")
        return readonly


class TenantInlineFormSet(BaseInlineFormSet):
    """Gives each inline row the workspace of its parent (the platform scope sets none to default to)."""

    def _construct_form(self, i, **kwargs):
        form = super()._construct_form(i, **kwargs)
        if form.instance.tenant_id is None:
            form.instance.tenant_id = self.instance.tenant_id
        return form


class TenantInlineMixin:
    form = TenantAdminForm
    formset = TenantInlineFormSet
    exclude = ["tenant"]
    extra = 0


class TenantTabularInline(TenantInlineMixin, admin.TabularInline):
    pass


class TenantStackedInline(TenantInlineMixin, admin.StackedInline):
    pass


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Workspace)
class WorkspaceAdmin(PlatformAdmin):
    list_display = ["name", "slug", "is_active", "time_zone", "currency", "created_at"]
    list_filter = ["is_active", "currency"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(PlatformAdmin):
    list_display = ["user", "workspace", "role", "created_at"]
    list_filter = ["role", "workspace"]
    search_fields = ["user__username", "user__email", "workspace__name"]
    list_select_related = ["user", "workspace"]
    autocomplete_fields = ["user", "workspace"]


@admin.register(Invitation)
class InvitationAdmin(TenantAdmin):
    list_display = ["email", "tenant", "role", "invited_by", "created_at", "expires_at", "accepted_at"]
    list_filter = ["role", "tenant", "accepted_at"]
    list_select_related = ["tenant", "invited_by"]
    search_fields = ["email"]
    readonly_fields = ["token"]
    raw_id_fields = ["invited_by"]


@admin.register(BackgroundJob)
class BackgroundJobAdmin(TenantAdmin):
    list_display = ["kind", "tenant", "state", "progress", "total", "created_at", "finished_at"]
    list_filter = ["state", "kind", "tenant"]
    search_fields = ["kind", "message"]
    raw_id_fields = ["created_by"]
    date_hierarchy = "created_at"
