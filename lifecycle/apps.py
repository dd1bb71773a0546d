from django.apps import AppConfig
from django.db.models.signals import post_migrate


class LifecycleConfig(AppConfig):
    name = "lifecycle"
    verbose_name = "Lifecycle: stages, flags and metrics"

    def ready(self):
        from lifecycle import chart_filters, listing, receivers

        listing.register()
        chart_filters.register()
        receivers.connect()
        post_migrate.connect(ensure_nightly_refresh, sender=self)


NIGHTLY_REFRESH = "lifecycle: nightly refresh of every workspace"


def ensure_nightly_refresh(**kwargs):
    """Create (once) the beat entry of the nightly lifecycle refresh at 03:15 UTC; admins may edit it after."""
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    using = kwargs.get("using", "default")
    if PeriodicTask.objects.using(using).filter(name=NIGHTLY_REFRESH).exists():
        return
    schedule, _ = CrontabSchedule.objects.using(using).get_or_create(
        minute="15", hour="3", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC")
    PeriodicTask.objects.using(using).create(
        name=NIGHTLY_REFRESH, task="lifecycle.tasks.refresh_everywhere", crontab=schedule,
        description="Created by Rapport on migrate; safe to edit (time, or disable).")
