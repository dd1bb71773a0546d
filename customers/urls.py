from django.urls import include, path

from customers import views

app_name = "customers"
urlpatterns = [
    path("", views.customer_list, name="list"),
    path("new/", views.customer_create, name="create"),
    path("<int:customer_id>/", views.customer_detail, name="detail"),
    path("<int:customer_id>/edit/", views.customer_edit, name="edit"),
    path("<int:customer_id>/notes/", views.customer_add_note, name="add_note"),
    path("", include("customers.import_urls")),  # CSV import and export
]
