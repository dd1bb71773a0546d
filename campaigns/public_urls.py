"""Public URLs of campaigns (no workspace in the path, no login): tracking and inbound webhooks."""

from django.urls import path

from campaigns import public_views

app_name = "campaigns_public"
urlpatterns = [
    path("t/c/<str:token>/", public_views.click, name="click"),
    path("t/o/<str:token>.gif", public_views.open_pixel, name="open"),
    path("hooks/campaigns/sms/<str:token>/", public_views.inbound_sms, name="inbound_sms"),
    path("hooks/campaigns/email-reply/<str:token>/", public_views.inbound_email_reply, name="inbound_email_reply"),
]
