"""Celery tasks of lifecycle: thin wrappers that enter the workspace and call lifecycle.runs.

* ``refresh_everywhere``: beat runs it nightly (PeriodicTask created on migrate, editable in Django admin);
  it queues one full refresh per active workspace.
* ``refresh_workspace_job``: a full refresh, optionally reporting to a BackgroundJob the Lifecycle page shows.
* ``refresh_customers_job``: the incremental refresh of customers whose orders changed.
"""

from __future__ import annotations

import logging

from celery import shared_task

from crm_site.jobs import report_progress, run_job, tenant_task
from crm_site.models import Workspace
from crm_site.tenancy import current_tenant_id, tenant_scope
from lifecycle import analytics, runs

log = logging.getLogger(__name__)

INCREMENTAL_BATCH = 5_000  # customers per incremental task: one query each, small enough to retry cheaply
# Beyond this many customers (a big import) one full refresh is cheaper than many incremental ones.
FULL_REFRESH_ABOVE = 50_000


@shared_task(name="lifecycle.tasks.refresh_everywhere", ignore_result=True)
def refresh_everywhere() -> int:
    """Queue a full lifecycle refresh of every active workspace; return how many were queued."""
    tenant_ids = list(Workspace.objects.filter(is_active=True).values_list("pk", flat=True))
    for tenant_id in tenant_ids:
        refresh_workspace_job.delay(tenant_id)
    log.info("lifecycle refresh queued for %s workspaces", len(tenant_ids))
    return len(tenant_ids)


@tenant_task(atomic=False, ignore_result=True)
def refresh_workspace_job(job_id: int | None = None) -> None:
    """Run a full refresh of the workspace in scope, reporting each step to the job when there is one."""
    tenant_id = current_tenant_id()
    if job_id is None:
        runs.refresh_workspace(tenant_id)
        _warm_charts(tenant_id)
        return

    def work(job_id):
        def progress(step, total, message):
            report_progress(job_id, progress=step, total=total, message=message)

        result = runs.refresh_workspace(tenant_id, progress=progress)
        _warm_charts(tenant_id)
        return {"customers": result.customers, "rows_written": result.rows_written,
                "events_written": result.events_written, "model_kind": result.model_kind}

    run_job(job_id, work)


def _warm_charts(tenant_id: int) -> None:
    # The first page view after a run then reads the heavy charts from the cache; a failure only makes it slower.
    try:
        workspace = Workspace.objects.get(pk=tenant_id)
        with tenant_scope(workspace):
            analytics.warm_charts(workspace)
    except Exception:
        log.exception("could not precompute the lifecycle charts of workspace %s", tenant_id)


@tenant_task(atomic=False, ignore_result=True, autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def refresh_customers_job(customer_ids: list[int]) -> None:
    """Refresh the given customers of the workspace in scope (after new orders); none once it is closed."""
    tenant_id = current_tenant_id()
    # Checked first: retrying a closed or deleted workspace's refresh would only fail five times more.
    if Workspace.objects.filter(pk=tenant_id, is_active=True).exists():
        runs.refresh_customers(tenant_id, customer_ids)
        analytics.forget_live_numbers(tenant_id)  # committed by now: the next page view counts the stages again


def queue_customer_refresh(tenant_id: int, customer_ids) -> None:
    """Queue incremental refreshes for these customers, in batches (one full refresh when there are very many);
    a broker outage is logged, never raised, since the nightly full refresh catches up anyway.
    """
    customer_ids = sorted({int(pk) for pk in customer_ids})
    if len(customer_ids) > FULL_REFRESH_ABOVE:
        _queue_or_log(refresh_workspace_job, tenant_id, "the full refresh")
        return
    for start in range(0, len(customer_ids), INCREMENTAL_BATCH):
        batch = customer_ids[start:start + INCREMENTAL_BATCH]
        _queue_or_log(refresh_customers_job, tenant_id, f"the refresh of {len(batch)} customers", batch)


def _queue_or_log(task, tenant_id: int, what: str, *args) -> None:
    try:
        task.delay(tenant_id, *args)
    except Exception:  # the orders are saved; only their immediate lifecycle update is late
        log.exception("could not queue %s of workspace %s", what, tenant_id)
