"""A campaign's life: draft -> scheduled -> sending -> done, with pause, resume and cancel; recurring schedules.

* A **broadcast** is scheduled for a time; the dispatcher starts it then (``sending``) and it is ``done`` when
  every message is settled.
* A **recurring** campaign is ``scheduled`` while its django-celery-beat entry (editable here and in Django
  admin) starts a run at every tick.
* A **journey** goes live (``sending``): from then on its trigger events enter customers.

``problems(campaign)`` says what stops a campaign from going out, in words a marketer can act on.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo

from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from campaigns.models import OPEN_STATUSES, Campaign, Message
from campaigns.rendering import TemplateRejected, validate_template
from crm_site.tenancy import current_tenant_id
from customers.models import Channel

S = Campaign.Status


class TransitionError(ValueError):
    """A status change that is not possible now; ``str()`` says why."""


def problems(campaign: Campaign) -> list[str]:
    """Return what prevents the campaign from going out (empty when it is ready)."""
    found = []
    steps = list(campaign.steps.order_by("position"))
    if not steps:
        found.append("Add at least one message step.")
    if campaign.kind == Campaign.Kind.JOURNEY and not campaign.trigger:
        found.append("Choose the lifecycle moment that starts the journey.")
    if campaign.kind == Campaign.Kind.RECURRING and campaign.schedule_id is None:
        found.append("Set when the campaign recurs.")
    if any(step.channel == Channel.EMAIL for step in steps) and campaign.sender_id is None:
        found.append("Choose a sender identity for e-mails.")
    for step in steps:
        if step.channel == Channel.EMAIL and not step.subject.strip():
            found.append(f"Step {step.position}: an e-mail needs a subject.")
        for label, source, options in (("subject", step.subject, {"subject": True}),
                                       ("message", step.body, {"html": step.body_format == "html"})):
            try:
                validate_template(source, **options)
            except TemplateRejected as error:
                found.append(f"Step {step.position} {label}: {error}")
    return found


def _require_ready(campaign: Campaign) -> None:
    found = problems(campaign)
    if found:
        raise TransitionError(" ".join(found))


@transaction.atomic
def schedule(campaign: Campaign, *, at: dt.datetime | None = None) -> Campaign:
    """Send a broadcast at ``at`` (now when None), enable a recurring schedule, or put a journey live; return it."""
    if campaign.status not in (S.DRAFT, S.PAUSED, S.SCHEDULED):
        raise TransitionError(f"A {campaign.get_status_display().lower()} campaign cannot be scheduled.")
    _require_ready(campaign)
    now = timezone.now()
    if campaign.kind == Campaign.Kind.BROADCAST:
        if campaign.run_count:
            raise TransitionError("This broadcast has already gone out; duplicate it to send again.")
        campaign.scheduled_at = at or now
        campaign.status = S.SCHEDULED
    elif campaign.kind == Campaign.Kind.RECURRING:
        campaign.status = S.SCHEDULED
        _enable_schedule(campaign, True)
    else:
        campaign.status = S.SENDING
        campaign.started_at = campaign.started_at or now
    campaign.save()
    return campaign


@transaction.atomic
def pause(campaign: Campaign) -> Campaign:
    """Stop sending (nothing is dropped: pending messages wait) and return the campaign."""
    if campaign.status not in (S.SCHEDULED, S.SENDING):
        raise TransitionError("Only a scheduled or sending campaign can be paused.")
    campaign.status = S.PAUSED
    campaign.save(update_fields=["status", "updated_at"])
    _enable_schedule(campaign, False)
    return campaign


@transaction.atomic
def resume(campaign: Campaign) -> Campaign:
    """Carry on where a paused campaign stopped and return it."""
    if campaign.status != S.PAUSED:
        raise TransitionError("Only a paused campaign can be resumed.")
    _require_ready(campaign)
    if campaign.kind == Campaign.Kind.RECURRING:
        campaign.status = S.SCHEDULED
        _enable_schedule(campaign, True)
    elif campaign.kind == Campaign.Kind.JOURNEY or campaign.run_count:
        campaign.status = S.SENDING
    else:
        campaign.status = S.SCHEDULED
        campaign.scheduled_at = campaign.scheduled_at or timezone.now()  # the dispatcher waits for a time
    campaign.save(update_fields=["status", "scheduled_at", "updated_at"])
    return campaign


@transaction.atomic
def cancel(campaign: Campaign) -> int:
    """Cancel the campaign for good; its unsent messages are dropped as 'cancelled'. Return how many."""
    if campaign.status in (S.DONE, S.CANCELLED):
        raise TransitionError("This campaign is already finished.")
    dropped = Message.objects.filter(campaign=campaign, status__in=OPEN_STATUSES).exclude(
        status=Message.Status.SENDING
    ).update(status=Message.Status.SUPPRESSED, skip_reason=Message.SkipReason.CANCELLED, lease_owner="")
    campaign.status = S.CANCELLED
    campaign.finished_at = timezone.now()
    campaign.save(update_fields=["status", "finished_at", "updated_at"])
    _enable_schedule(campaign, False)
    return dropped


# --- Recurring schedules (django-celery-beat) ------------------------------------------------------------


def set_recurrence(campaign: Campaign, *, minute: str = "0", hour: str = "9", day_of_week: str = "*",
                   day_of_month: str = "*", month_of_year: str = "*", time_zone: str = "UTC") -> PeriodicTask:
    """Create or change the beat entry that starts the recurring campaign's runs; return it.

    The crontab fields are validated by django-celery-beat; an invalid one raises TransitionError.
    """
    from django.core.exceptions import ValidationError

    try:
        zone = zoneinfo.ZoneInfo(time_zone or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise TransitionError(f"Unknown time zone {time_zone!r}.") from None
    crontab = CrontabSchedule(minute=minute, hour=hour, day_of_week=day_of_week, day_of_month=day_of_month,
                              month_of_year=month_of_year, timezone=zone)
    try:
        crontab.full_clean(exclude=["timezone"])
    except ValidationError as error:
        raise TransitionError("; ".join(f"{k.replace('_', ' ')}: {' '.join(v)}"
                                        for k, v in error.message_dict.items())) from None
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute=minute, hour=hour, day_of_week=day_of_week, day_of_month=day_of_month,
        month_of_year=month_of_year, timezone=zone,
    )
    task = campaign.schedule or PeriodicTask(task="campaigns.tasks.run_recurring")
    task.name = f"Campaign #{campaign.pk} of workspace {current_tenant_id()}: {campaign.name}"[:200]
    task.task = "campaigns.tasks.run_recurring"
    task.crontab = crontab
    task.interval = None
    task.args = json.dumps([campaign.tenant_id, campaign.pk])
    task.enabled = campaign.status == S.SCHEDULED
    task.save()
    if campaign.schedule_id != task.pk:
        campaign.schedule = task
        campaign.save(update_fields=["schedule", "updated_at"])
    return task


def drop_recurrence(campaign: Campaign) -> None:
    """Delete the beat entry of a campaign that no longer recurs (its kind changed)."""
    if campaign.schedule_id is not None:
        PeriodicTask.objects.filter(pk=campaign.schedule_id).delete()
        campaign.schedule = None
        campaign.save(update_fields=["schedule", "updated_at"])


def recurrence(campaign: Campaign) -> dict | None:
    """Return the crontab fields of a recurring campaign's schedule (None when it has none)."""
    task = campaign.schedule
    if task is None or task.crontab is None:
        return None
    crontab = task.crontab
    return {"minute": crontab.minute, "hour": crontab.hour, "day_of_week": crontab.day_of_week,
            "day_of_month": crontab.day_of_month, "month_of_year": crontab.month_of_year,
            "time_zone": str(crontab.timezone), "human": crontab.human_readable, "enabled": task.enabled}


def _enable_schedule(campaign: Campaign, enabled: bool) -> None:
    # save(), not update(): beat notices schedule changes through django-celery-beat's save signal.
    task = PeriodicTask.objects.filter(pk=campaign.schedule_id).first() if campaign.schedule_id else None
    if task is not None and task.enabled != enabled:
        task.enabled = enabled
        task.save()
