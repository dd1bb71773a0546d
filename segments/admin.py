from django.contrib import admin

from crm_site.admin import TenantAdmin
from segments.models import Segment, SegmentMember


@admin.register(Segment)
class SegmentAdmin(TenantAdmin):
    list_display = ["name", "tenant", "kind", "is_builtin", "frozen_at", "updated_at"]
    list_filter = ["tenant", "kind", "is_builtin"]
    search_fields = ["name", "description", "builtin_key"]
    readonly_fields = ["created_at", "updated_at"]
    raw_id_fields = ["created_by"]


@admin.register(SegmentMember)
class SegmentMemberAdmin(TenantAdmin):
    list_display = ["segment", "customer", "tenant", "added_at"]
    list_filter = ["tenant"]
    search_fields = ["segment__name", "customer__email", "customer__external_id"]
    list_select_related = ["tenant", "segment", "customer"]
    raw_id_fields = ["segment", "customer"]
    show_full_result_count = False
