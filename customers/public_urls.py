"""Public pages of a workspace, mounted at /p/<public_slug>/ (no login; see customers.public_views)."""

from django.urls import path

from customers import public_views

app_name = "public"
urlpatterns = [
    path("subscribe/", public_views.subscribe, name="subscribe"),
    path("subscribe/confirm/<str:token>/", public_views.confirm, name="confirm"),
    path("preferences/<str:token>/", public_views.preferences, name="preferences"),
    path("unsubscribe/<str:token>/", public_views.unsubscribe, name="unsubscribe"),
    path("export/<str:token>/", public_views.export, name="export"),
]
