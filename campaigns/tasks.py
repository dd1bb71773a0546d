"""Celery tasks of campaigns: thin wrappers that find the workspaces with work and run the domain functions.

Beat runs ``dispatch_due_everywhere`` and ``send_due_everywhere`` every few seconds (PeriodicTask rows
created on migrate, editable in Django admin). They fan out one task per workspace with work. Nothing
depends on a task surviving: send times and leases live in the database, so a lost task (a restarted
broker, a killed worker) is simply replaced by the next kick.

The tasks they queue expire after one tick (``fan_out_expiry``): beat queues work every tick whether or not
the workers are still busy with the last one, and without an expiry the queue would grow behind them (two
senders per workspace every 15 seconds, each then starting late, long after its tick). A worker that takes
up an expired task drops it at once; the next tick has queued a fresh one.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from campaigns import outbox, sending
from campaigns.models import Campaign
from crm_site.jobs import tenant_task
from crm_site.models import Workspace
from crm_site.tenancy import current_tenant_id, platform_scope

log = logging.getLogger(__name__)


@shared_task(name="campaigns.tasks.dispatch_due_everywhere", ignore_result=True)
def dispatch_due_everywhere() -> int:
    """Queue a dispatch for every workspace with a live campaign; return how many were queued."""
    now = timezone.now()
    with platform_scope():
        live = Campaign.objects.filter(tenant=OuterRef("pk"), status__in=(Campaign.Status.SCHEDULED,
                                                                          Campaign.Status.SENDING))
        tenant_ids = list(Workspace.objects.filter(is_active=True).filter(Exists(live)).values_list("pk", flat=True))
    for tenant_id in tenant_ids:
        dispatch_workspace.apply_async((tenant_id,), expires=fan_out_expiry(settings.RAPPORT_DISPATCH_EVERY_SECONDS))
    log.debug("dispatch queued for %s workspaces at %s", len(tenant_ids), now)
    return len(tenant_ids)


@tenant_task(ignore_result=True)
def dispatch_workspace() -> dict:
    """Turn the workspace's due campaign steps into messages, then queue senders when there is work."""
    result = outbox.dispatch_due()
    if result.created:
        queue_senders(current_tenant_id())
    return {"created": result.created, "deferred": result.deferred}


def fan_out_expiry(every_seconds: int) -> int:
    """Return how long a queued dispatch or send task stays worth starting: until the next tick replaces it."""
    return max(int(every_seconds), 1)


def queue_senders(tenant_id: int) -> None:
    """Queue the workspace's senders once the current transaction commits (they must see its messages).

    A sender no worker has started by the next send tick expires: that tick queues its own.
    """

    def queue():
        for _ in range(settings.RAPPORT_SEND_PARALLELISM):
            send_workspace.apply_async((tenant_id,), expires=fan_out_expiry(settings.RAPPORT_SEND_EVERY_SECONDS))

    transaction.on_commit(queue)


@shared_task(name="campaigns.tasks.send_due_everywhere", ignore_result=True)
def send_due_everywhere() -> int:
    """Queue senders for every workspace with due messages; return how many workspaces."""
    now = timezone.now()
    with platform_scope():
        due = sending.due_messages(now).filter(tenant=OuterRef("pk"))
        tenant_ids = list(Workspace.objects.filter(is_active=True).filter(Exists(due)).values_list("pk", flat=True))
    for tenant_id in tenant_ids:
        queue_senders(tenant_id)
    return len(tenant_ids)


@tenant_task(atomic=False, ignore_result=True)
def send_workspace() -> dict:
    """Deliver the workspace's due messages for up to RAPPORT_SEND_TASK_SECONDS (each batch commits on its own)."""
    outcome = sending.send_due()
    return {"sent": outcome.sent, "retried": outcome.retried, "failed": outcome.failed}


@tenant_task(ignore_result=True)
def run_recurring(campaign_id: int) -> int | None:
    """Start the next run of a recurring campaign (called by its beat entry); return the run number.

    A duplicate delivery of the same tick (a retried task) is ignored: a run started less than a minute
    ago is not repeated.
    """
    campaign = Campaign.objects.select_for_update().filter(pk=campaign_id, kind=Campaign.Kind.RECURRING).first()
    if campaign is None or campaign.status != Campaign.Status.SCHEDULED:
        return None
    now = timezone.now()
    if campaign.last_run_at and (now - campaign.last_run_at).total_seconds() < 60:
        return None
    run = outbox.start_run(campaign, now=now)
    tenant_id = current_tenant_id()
    transaction.on_commit(lambda: dispatch_workspace.delay(tenant_id))
    return run.number

