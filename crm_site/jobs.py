"""Background work with progress a page can show, and Celery tasks that enter a tenant's scope.

A task takes the tenant id first. ``@tenant_task()`` runs short bodies inside one ``tenant_scope``
(one transaction), in the workspace's time zone like its pages (so "today" in a segment rule or a message
is the shop's day, in a job as on the page). Long bodies use ``@tenant_task(atomic=False)``: the workspace is set for the ORM and
the body commits its own batches with ``tenant_transaction()``, so ``report_progress`` is seen by the
page while the work goes on.
"""

from __future__ import annotations

import functools
import logging

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from crm_site import tenancy
from crm_site.models import BackgroundJob, Workspace

log = logging.getLogger(__name__)


def tenant_task(atomic: bool = True, **celery_options):
    """Declare a Celery task whose first argument is a tenant id; the body runs as that workspace."""

    def decorate(body):
        @shared_task(name=f"{body.__module__}.{body.__name__}", **celery_options)
        @functools.wraps(body)
        def task(tenant_id: int, *args, **kwargs):
            zone = _workspace_zone(tenant_id)
            if atomic:
                with tenancy.tenant_scope(tenant_id), timezone.override(zone):
                    return body(*args, **kwargs)
            token = tenancy._current_tenant.set(int(tenant_id))
            try:
                with timezone.override(zone):
                    return body(*args, **kwargs)
            finally:
                tenancy._current_tenant.reset(token)

        return task

    return decorate


def _workspace_zone(tenant_id: int):
    workspace = Workspace.objects.filter(pk=tenant_id).only("time_zone").first()
    return tenancy.workspace_time_zone(workspace) if workspace else timezone.get_default_timezone()


def start_job(kind: str, *, user=None, total: int = 0, message: str = "") -> BackgroundJob:
    """Create a queued job in the current workspace and return it (commit before handing its id to Celery)."""
    with tenancy.tenant_transaction():
        return BackgroundJob.objects.create(kind=kind, created_by=user, total=total, message=message)


def report_progress(job_id: int, *, progress: int | None = None, total: int | None = None,
                    message: str | None = None, state: str | None = None, result: dict | None = None) -> None:
    """Record how far a job got. Call it between batches, outside an open transaction, so the page sees it."""
    changes = {"updated_at": timezone.now()}
    if progress is not None:
        changes["progress"] = progress
    if total is not None:
        changes["total"] = total
    if message is not None:
        changes["message"] = message[:2000]
    if result is not None:
        changes["result"] = result
    if state is not None:
        changes["state"] = state
        if state in (BackgroundJob.State.DONE, BackgroundJob.State.FAILED):
            changes["finished_at"] = timezone.now()
    with tenancy.tenant_transaction():
        BackgroundJob.objects.filter(pk=job_id).update(**changes)


def run_job(job_id: int, work) -> None:
    """Run ``work(job_id)`` for a job, marking it running, then done, or failed with the reason."""
    report_progress(job_id, state=BackgroundJob.State.RUNNING)
    try:
        result = work(job_id)
    except Exception as error:  # the page must say why; the worker log keeps the traceback
        log.exception("job %s failed", job_id)
        if transaction.get_connection().in_atomic_block:
            raise
        report_progress(job_id, state=BackgroundJob.State.FAILED, message=f"Failed: {error}")
        return
    report_progress(job_id, state=BackgroundJob.State.DONE, result=result if isinstance(result, dict) else None)
