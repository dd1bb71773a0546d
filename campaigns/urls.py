from django.urls import path

from campaigns import views

app_name = "campaigns"
urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.create, name="create"),
    path("journeys/new/", views.journey_templates, name="journey_templates"),
    path("<int:campaign_id>/", views.detail, name="detail"),
    path("<int:campaign_id>/edit/", views.edit, name="edit"),
    path("<int:campaign_id>/preview/", views.preview, name="preview"),
    path("<int:campaign_id>/test-send/", views.test_send, name="test_send"),
    path("<int:campaign_id>/report/", views.report, name="report"),
    path("<int:campaign_id>/schedule/", views.transition, {"action": "schedule"}, name="schedule"),
    path("<int:campaign_id>/pause/", views.transition, {"action": "pause"}, name="pause"),
    path("<int:campaign_id>/resume/", views.transition, {"action": "resume"}, name="resume"),
    path("<int:campaign_id>/cancel/", views.transition, {"action": "cancel"}, name="cancel"),
    path("<int:campaign_id>/steps/new/", views.step_create, name="step_create"),
    path("<int:campaign_id>/steps/<int:step_id>/", views.step_edit, name="step_edit"),
    path("<int:campaign_id>/steps/<int:step_id>/move/", views.step_move, name="step_move"),
    path("<int:campaign_id>/steps/<int:step_id>/delete/", views.step_delete, name="step_delete"),
    # Workspace settings (admins): linked from the settings tabs.
    path("settings/senders/", views.senders, name="senders"),
    path("settings/senders/<int:sender_id>/", views.sender_edit, name="sender_edit"),
    path("settings/sending-policy/", views.sending_policy_edit, name="sending_policy"),
]
