from django.urls import path

from lifecycle import views

app_name = "lifecycle"
urlpatterns = [
    path("", views.index, name="index"),
    path("refresh/", views.refresh, name="refresh"),
    path("settings/", views.policy_settings, name="settings"),
]
