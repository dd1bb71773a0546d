from django.urls import path

from segments import views

app_name = "segments"
urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.create, name="create"),
    path("upload/", views.upload, name="upload"),
    path("builder/preview/", views.builder_preview, name="builder_preview"),
    path("builder/condition/", views.builder_condition, name="builder_condition"),
    path("builder/tree/", views.builder_tree, name="builder_tree"),
    path("<int:segment_id>/", views.detail, name="detail"),
    path("<int:segment_id>/edit/", views.edit, name="edit"),
    path("<int:segment_id>/count/", views.member_count, name="count"),
    path("<int:segment_id>/copy/", views.copy, name="copy"),
    path("<int:segment_id>/snapshot/", views.snapshot, name="snapshot"),
    path("<int:segment_id>/delete/", views.delete, name="delete"),
    path("<int:segment_id>/export.csv", views.export, name="export"),
]
