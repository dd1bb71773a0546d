from django.apps import AppConfig
from django.db.models.signals import post_migrate


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns and journeys"

    def ready(self):
        from campaigns import webhooks  # noqa: F401 - connects anymail's tracking and inbound signals

        post_migrate.connect(ensure_periodic_tasks, sender=self)


def ensure_periodic_tasks(**kwargs):
    """Create (once) the beat entries that kick the dispatcher and the senders; admins may edit them after."""
    from django.conf import settings
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    using = kwargs.get("using", "default")
    for name, task, seconds in (
        ("campaigns: dispatch due steps", "campaigns.tasks.dispatch_due_everywhere",
         settings.RAPPORT_DISPATCH_EVERY_SECONDS),
        ("campaigns: send due messages", "campaigns.tasks.send_due_everywhere", settings.RAPPORT_SEND_EVERY_SECONDS),
    ):
        if PeriodicTask.objects.using(using).filter(name=name).exists():
            continue
        schedule, _ = IntervalSchedule.objects.using(using).get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.using(using).create(name=name, task=task, interval=schedule,
                                                 description="Created by Rapport on migrate; safe to edit.")
