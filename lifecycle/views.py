"""Lifecycle pages: the charts a marketer reads at a glance, the on-demand refresh, and the workspace's
lifecycle settings (admins)."""

import datetime as dt

from django.contrib import messages
from django.db import transaction
from django.http import HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.utils import timezone

from crm_site.jobs import start_job
from crm_site.models import BackgroundJob
from crm_site.tenancy import requires_role
from lifecycle import analytics
from lifecycle.forms import LifecyclePolicyForm, RewardRuleFormSet
from lifecycle.runs import REFRESH_STEPS, workspace_policy

REFRESH_JOB = "lifecycle refresh"
STALE_AFTER = dt.timedelta(minutes=15)  # a job silent this long died with its worker; a new one may start


def page_context(workspace) -> dict:
    """Return everything the Lifecycle page shows: summary, chart data (with links) and the model's status."""
    slug, zone = workspace.slug, workspace.time_zone
    run = analytics.latest_run()
    stamp = analytics.live_stamp(run)
    summary = analytics.stage_summary(slug, stamp=stamp)
    pareto = analytics.revenue_concentration(slug, run=run)
    alive_now = sum(stage["count"] for stage in summary["stages"] if stage["stage"] in analytics.ALIVE_STAGES)
    charts = {
        "stages": summary["stages"],
        "flow": analytics.stage_flow(slug, zone, stamp=stamp),
        "pareto": pareto,
        "churn": analytics.churn_rate(slug, zone, stamp=stamp, alive_now=alive_now),
        "clv": analytics.clv_distribution(slug, run=run),
    }
    return {
        "section": "lifecycle",
        "summary": summary,
        "pareto": pareto,
        "charts": charts,
        "cohorts": analytics.retention_cohorts(slug, zone, run=run),
        "model": analytics.model_status(run=run),
        "job": _latest_refresh(),
    }


def index(request, workspace_slug):
    """The Lifecycle page: stage counts, headline numbers and charts, each linking to its customers."""
    return render(request, "lifecycle/index.html", page_context(request.workspace))


@requires_role("marketer")
def refresh(request, workspace_slug):
    """Start a full refresh in the background; the page polls its progress."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    from lifecycle.tasks import refresh_workspace_job

    job = _unfinished_refresh()
    if job is None:
        job = start_job(REFRESH_JOB, user=request.user, total=REFRESH_STEPS, message="Queued")
        tenant_id = request.workspace.pk
        transaction.on_commit(lambda: refresh_workspace_job.delay(tenant_id, job.pk))
        note = "Lifecycle refresh started."
    else:
        note = "A lifecycle refresh is already under way."
    if request.headers.get("HX-Request") == "true":
        return render(request, "partials/job_progress.html", {"job": job})
    messages.info(request, note)
    return redirect("lifecycle:index", workspace_slug=workspace_slug)


def _latest_refresh() -> BackgroundJob | None:
    return BackgroundJob.objects.filter(kind=REFRESH_JOB).order_by("-created_at", "-id").first()


def _unfinished_refresh() -> BackgroundJob | None:
    """Return the refresh job still queued or running (updated in the last 15 minutes), else None."""
    job = _latest_refresh()
    if job is None or job.is_finished or job.updated_at < timezone.now() - STALE_AFTER:
        return None
    return job


@requires_role("admin")
def policy_settings(request, workspace_slug):
    """The workspace's lifecycle thresholds and reward rules (admins); a bad value re-renders with the errors."""
    policy = workspace_policy()
    if request.method == "POST":
        form = LifecyclePolicyForm(request.POST, instance=policy)
        rules = RewardRuleFormSet(request.POST, prefix="rules")
        if form.is_valid() and rules.is_valid():
            policy = form.save(commit=False)
            policy.reward_rules = rules.rules
            policy.save()
            messages.success(request, "Lifecycle settings saved. They apply from the next refresh.")
            return redirect("lifecycle:settings", workspace_slug=workspace_slug)
        messages.error(request, "The settings were not saved: please correct the fields marked below.")
        status = 400
    else:
        form = LifecyclePolicyForm(instance=policy)
        rules = RewardRuleFormSet(initial=policy.reward_rules or [], prefix="rules")
        status = 200
    return render(request, "lifecycle/settings.html", {"section": "settings", "form": form, "rules": rules},
                  status=status)
