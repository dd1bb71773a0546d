from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from crm_site import accounts, views
from customers import api_keys, gdpr_views

workspace_patterns = [
    path("", views.dashboard, name="dashboard"),
    path("settings/", views.workspace_settings, name="workspace_settings"),
    path("settings/members/", accounts.members, name="members"),
    path("settings/members/<int:membership_id>/", accounts.member_edit, name="member_edit"),
    path("settings/invitations/<int:invitation_id>/revoke/", accounts.invitation_revoke, name="invitation_revoke"),
    path("settings/api-keys/", api_keys.api_keys, name="api_keys"),
    path("settings/api-keys/<int:key_id>/revoke/", api_keys.api_key_revoke, name="api_key_revoke"),
    path("jobs/<int:job_id>/", views.job_progress, name="job_progress"),
    path("customers/<int:customer_id>/data.json", gdpr_views.customer_data_export, name="customer_data_export"),
    path("customers/<int:customer_id>/erase/", gdpr_views.customer_erase, name="customer_erase"),
    path("customers/", include("customers.urls")),
    path("lifecycle/", include("lifecycle.urls")),
    path("segments/", include("segments.urls")),
    path("campaigns/", include("campaigns.urls")),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("crm_site.account_urls")),
    path("admin/", admin.site.urls),
    path("w/<slug:workspace_slug>/", include(workspace_patterns)),
    path("", include("campaigns.public_urls")),  # tracked links, open pixel, inbound webhooks
    path("api/v1/", include("customers.api_urls")),
    path("p/<slug:public_slug>/", include("customers.public_urls")),
]

if settings.ANYMAIL.get("WEBHOOK_SECRET"):  # ESP tracking and inbound webhooks, only behind basic auth
    urlpatterns.append(path("anymail/", include("anymail.urls")))

handler400 = "crm_site.views.bad_request"
handler403 = "crm_site.views.permission_denied"
handler404 = "crm_site.views.page_not_found"
handler500 = "crm_site.views.server_error"
