"""URLs of the JSON API, mounted at /api/v1/. No trailing slashes; anything else is a JSON 404."""

from django.urls import path, re_path

from customers import api

app_name = "api"
urlpatterns = [
    path("openapi.json", api.openapi_document, name="openapi"),
    path("customers", api.customer_upsert, name="customer_upsert"),
    path("customers/batch", api.customer_batch, name="customer_batch"),
    path("customers/<str:external_id>", api.customer_detail, name="customer_detail"),
    path("customers/<str:external_id>/export", api.customer_export, name="customer_export"),
    path("customers/<str:external_id>/erase", api.customer_erase, name="customer_erase"),
    path("orders", api.order_upsert, name="order_upsert"),
    path("orders/batch", api.order_batch, name="order_batch"),
    path("orders/<str:external_id>", api.order_detail, name="order_detail"),
    path("consent-events", api.consent_event_create, name="consent_event_create"),
    re_path(r"^(?P<rest>.*)$", api.not_found, name="not_found"),
]
