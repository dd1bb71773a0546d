"""URLs of the CSV import and export, included from customers/urls.py (namespace ``customers``)."""

from django.urls import path

from customers import import_views

urlpatterns = [
    path("import/", import_views.import_start, name="import_start"),
    path("import/<int:import_id>/", import_views.import_detail, name="import_detail"),
    path("import/<int:import_id>/errors.csv", import_views.import_errors, name="import_errors"),
    path("export.csv", import_views.customers_export, name="export"),
]
