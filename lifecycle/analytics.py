"""The numbers behind the Lifecycle page and the Dashboard, each one aggregate query over the workspace.

Every function runs in the workspace's scope and returns plain data ready for ``json_script`` (charts) or a
template, each item with the customer-list link of the customers behind it. The heavier ones (cohorts, Pareto
curve, CLV distribution) are kept per full lifecycle run: the refresh task computes them right after the run
(``warm_charts``), so pages read them from the cache until the next one. Stage counts, flow and churn are live.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from urllib.parse import urlencode

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncMonth
from django.urls import reverse
from django.utils import timezone

from crm_site.tenancy import current_tenant_id
from customers.models import Order
from lifecycle.models import CustomerMetrics, LifecycleEvent, LifecycleRun, Stage

# A full run (nightly) replaces the cached charts; this only bounds how long they outlive a stopped schedule.
CACHE_SECONDS = 26 * 3600
STAGE_ORDER = [Stage.PROSPECT, Stage.ONBOARDING, Stage.ACTIVE, Stage.AT_RISK, Stage.LAPSED]
CLV_EDGES = [0, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]
COHORT_MONTHS = 12


def customers_url(workspace_slug: str, **filters) -> str:
    """Return the customer list URL showing the customers that match ``filters`` (list filter names)."""
    query = urlencode({name: value for name, value in filters.items() if value not in (None, "")})
    return reverse("customers:list", args=[workspace_slug]) + (f"?{query}" if query else "")


def latest_run() -> LifecycleRun | None:
    """Return the workspace's latest full lifecycle run, or None before the first."""
    return LifecycleRun.objects.order_by("-started_at", "-id").first()


_LOOK_UP = object()  # "find the latest run yourself"; a page passes the one it already read


def _cached(name: str, compute, run=_LOOK_UP):
    run = latest_run() if run is _LOOK_UP else run
    key = f"lifecycle:{current_tenant_id()}:{run.pk if run else 0}:{name}"
    return cache.get_or_set(key, compute, CACHE_SECONDS)


def warm_charts(workspace) -> None:
    """Compute and cache the per-run charts of the workspace (call in its scope, right after a full run)."""
    run = latest_run()
    revenue_concentration(workspace.slug, run=run)
    clv_distribution(workspace.slug, run=run)
    retention_cohorts(workspace.slug, workspace.time_zone, run=run)


# --- Stages ------------------------------------------------------------------------------------------


def stage_summary(workspace_slug: str) -> dict:
    """Return customers per stage and per flag, and the 12-month revenue and predicted CLV of at-risk customers."""
    row = CustomerMetrics.objects.aggregate(
        **{stage.value: Count("id", filter=Q(stage=stage.value)) for stage in STAGE_ORDER},
        heavy_users=Count("id", filter=Q(is_heavy_user=True)),
        reward_due=Count("id", filter=Q(is_reward_due=True)),
        reinforce_due=Count("id", filter=Q(is_reinforce_due=True)),
        at_risk_revenue=Sum("trailing_revenue_12m", filter=Q(stage=Stage.AT_RISK)),
        at_risk_clv=Sum("predicted_clv_12m", filter=Q(stage=Stage.AT_RISK)),
        total=Count("id"),
    )
    stages = [{"stage": stage.value, "label": stage.label, "count": row[stage.value],
               "url": customers_url(workspace_slug, stage=stage.value)} for stage in STAGE_ORDER]
    return {
        "stages": stages,
        "total": row["total"],
        "heavy_users": row["heavy_users"],
        "reward_due": row["reward_due"],
        "reinforce_due": row["reinforce_due"],
        "at_risk_revenue": float(row["at_risk_revenue"] or 0),
        "at_risk_clv": float(row["at_risk_clv"] or 0),
        "at_risk_url": customers_url(workspace_slug, stage=Stage.AT_RISK.value, sort="-spend"),
        "flag_urls": {flag: customers_url(workspace_slug, flag=flag)
                      for flag in ("heavy_user", "reward_due", "reinforce_due")},
    }


def _month_starts(now: dt.datetime, months: int, zone: zoneinfo.ZoneInfo) -> list[dt.datetime]:
    local = now.astimezone(zone)
    year, month = local.year, local.month
    starts = []
    for _ in range(months):
        starts.append(dt.datetime(year, month, 1, tzinfo=zone))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return starts[::-1]


def stage_flow(workspace_slug: str, time_zone: str, months: int = 12, now: dt.datetime | None = None) -> dict:
    """Return, per month, how many customers moved into each stage from another (the transition events; a
    customer's first classification is no move), and the last 30 days' moves as from -> to counts.
    """
    zone = zoneinfo.ZoneInfo(time_zone)
    now = now or timezone.now()
    starts = _month_starts(now, months, zone)
    rows = (LifecycleEvent.objects.filter(kind="stage", occurred_at__gte=starts[0]).exclude(from_value="")
            .annotate(month=TruncMonth("occurred_at", tzinfo=zone)).values("month", "to_value")
            .annotate(n=Count("id")).order_by())
    counts = {(row["month"].date().replace(day=1), row["to_value"]): row["n"] for row in rows}
    labels = [start.strftime("%Y-%m") for start in starts]
    datasets = [
        {"stage": stage.value, "label": stage.label, "url": customers_url(workspace_slug, stage=stage.value),
         "data": [counts.get((start.date(), stage.value), 0) for start in starts]}
        for stage in STAGE_ORDER
    ]
    recent = (LifecycleEvent.objects.filter(kind="stage", occurred_at__gte=now - dt.timedelta(days=30))
              .exclude(from_value="").values("from_value", "to_value").annotate(n=Count("id")).order_by("-n")[:12])
    labels_of = dict(Stage.choices)
    transitions = [{"from": labels_of.get(row["from_value"], row["from_value"]),
                    "to": labels_of.get(row["to_value"], row["to_value"]), "count": row["n"],
                    "url": customers_url(workspace_slug, stage=row["to_value"])} for row in recent]
    return {"labels": labels, "datasets": datasets, "transitions": transitions}


def churn_rate(workspace_slug: str, time_zone: str, months: int = 12, now: dt.datetime | None = None) -> dict:
    """Return the monthly churn rate: customers who lapsed that month ÷ customers alive (onboarding, active or
    at risk) at the month's first lifecycle run (else the latest run before it, else today).
    """
    zone = zoneinfo.ZoneInfo(time_zone)
    now = now or timezone.now()
    starts = _month_starts(now, months, zone)
    lapsed_rows = (LifecycleEvent.objects.filter(kind="stage", to_value=Stage.LAPSED, occurred_at__gte=starts[0])
                   .exclude(from_value="").annotate(month=TruncMonth("occurred_at", tzinfo=zone))
                   .values("month").annotate(n=Count("id")).order_by())
    lapsed = {row["month"].date().replace(day=1): row["n"] for row in lapsed_rows}
    alive_stages = (Stage.ONBOARDING, Stage.ACTIVE, Stage.AT_RISK)
    # Runs of the window and a month before it (the first month's base); nightly runs keep this ~400 rows.
    runs = list(LifecycleRun.objects.filter(started_at__lt=now, started_at__gte=starts[0] - dt.timedelta(days=31))
                .order_by("started_at").values_list("started_at", "stage_counts"))
    current = CustomerMetrics.objects.filter(stage__in=alive_stages).count()
    points = []
    for position, start in enumerate(starts):
        end = starts[position + 1] if position + 1 < len(starts) else now
        before = [counts for started_at, counts in runs if started_at <= start]
        within = [counts for started_at, counts in runs if start < started_at < end]
        chosen = before[-1] if before else (within[0] if within else None)
        base = sum((chosen or {}).get(stage.value, 0) for stage in alive_stages) if chosen else current
        count = lapsed.get(start.date(), 0)
        points.append({"month": start.strftime("%Y-%m"), "lapsed": count, "base": base,
                       "rate": round(100.0 * count / base, 2) if base else 0.0})
    return {"points": points, "url": customers_url(workspace_slug, stage=Stage.LAPSED.value)}


# --- Revenue -----------------------------------------------------------------------------------------


def revenue_concentration(workspace_slug: str, *, run=_LOOK_UP) -> dict:
    """Return the Pareto curve of lifetime net revenue: the cumulative share of revenue (y, %) from the top x%
    of buying customers (x from 0 to 100), the share from the top 20% (interpolated on the curve when the
    customers do not split evenly), and the link to those customers (spend at least the 20% cut).
    """

    def compute():
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT bucket, COUNT(*), SUM(revenue), MIN(revenue) FROM (
                    SELECT revenue, NTILE(100) OVER (ORDER BY revenue DESC, customer_id) AS bucket
                    FROM lifecycle_customermetrics WHERE tenant_id = %s AND revenue > 0
                ) ranked GROUP BY bucket ORDER BY bucket
                """,
                [current_tenant_id()],
            )
            return [(int(count), float(total), float(lowest)) for _, count, total, lowest in cursor.fetchall()]

    buckets = _cached("pareto", compute, run)
    customers = sum(count for count, _, _ in buckets)
    revenue = sum(total for _, total, _ in buckets)
    points = [{"x": 0.0, "y": 0.0}]
    seen, running, top20_min = 0, 0.0, None
    for count, total, lowest in buckets:
        seen += count
        running += total
        points.append({"x": round(100 * seen / customers, 2), "y": round(100 * running / revenue, 2)})
        if top20_min is None and 100 * seen >= 20 * customers:
            top20_min = lowest
    return {
        "points": points,
        "customers": customers,
        "top20_share": _share_at(points, 20.0) if buckets else 0.0,
        "url": customers_url(workspace_slug, spend_min=f"{top20_min:.2f}" if top20_min is not None else None,
                             sort="-spend"),
    }


def _share_at(points: list[dict], x: float) -> float:
    """Return y at ``x`` on the curve through ``points`` (sorted by x), linearly between the two around it."""
    for before, after in zip(points, points[1:]):
        if after["x"] >= x:
            if after["x"] == before["x"]:
                return after["y"]
            return round(before["y"] + (after["y"] - before["y"]) * (x - before["x"]) / (after["x"] - before["x"]), 1)
    return points[-1]["y"]


def clv_distribution(workspace_slug: str, *, run=_LOOK_UP) -> dict:
    """Return the histogram of predicted 12-month CLV among buying customers, bins linked to their customers."""

    def compute():
        edges = CLV_EDGES
        buckets = {}
        for position, low in enumerate(edges):
            high = edges[position + 1] if position + 1 < len(edges) else None
            condition = Q(predicted_clv_12m__gte=low) & (Q(predicted_clv_12m__lt=high) if high else Q())
            buckets[f"b{position}"] = Count("id", filter=condition)
        row = CustomerMetrics.objects.filter(order_count__gt=0).aggregate(**buckets)
        return [row[f"b{position}"] for position in range(len(edges))]

    counts = _cached("clv", compute, run)
    bins = []
    for position, low in enumerate(CLV_EDGES):
        high = CLV_EDGES[position + 1] if position + 1 < len(CLV_EDGES) else None
        label = f"{low:,}–{high:,}" if high else f"{low:,}+"
        bins.append({"label": label, "count": counts[position],
                     "url": customers_url(workspace_slug, clv_min=low,
                                          clv_max=f"{high - 0.01:.2f}" if high else None, sort="-spend")})
    return {"bins": bins}


def retention_cohorts(workspace_slug: str, time_zone: str, months: int = COHORT_MONTHS,
                      now: dt.datetime | None = None, run=_LOOK_UP) -> dict:
    """Return monthly cohorts (by first-order month) of the last ``months`` months: size, and per later month
    the share of the cohort that ordered that month (100% in month 0); each cell has a heat level.
    """
    zone = zoneinfo.ZoneInfo(time_zone)
    now = now or timezone.now()
    starts = _month_starts(now, months, zone)

    def compute():
        sizes = {row["cohort"]: row["n"] for row in (
            CustomerMetrics.objects.filter(first_order_at__gte=starts[0])
            .annotate(cohort=TruncMonth("first_order_at", tzinfo=zone)).values("cohort")
            .annotate(n=Count("id")).order_by())}
        active = (Order.objects.filter(placed_at__gte=starts[0], status__in=("placed", "partially_refunded"),
                                       customer__metrics__first_order_at__gte=starts[0])
                  .annotate(cohort=TruncMonth("customer__metrics__first_order_at", tzinfo=zone),
                            month=TruncMonth("placed_at", tzinfo=zone))
                  .values("cohort", "month").annotate(n=Count("customer_id", distinct=True)).order_by())
        return ({cohort.date().isoformat(): n for cohort, n in sizes.items()},
                [(row["cohort"].date().isoformat(), row["month"].date().isoformat(), row["n"]) for row in active])

    sizes, active = _cached(f"cohorts:{time_zone}:{starts[0]:%Y-%m}:{months}", compute, run)
    index = {start.date().isoformat(): position for position, start in enumerate(starts)}
    cells = {}
    for cohort, month, count in active:
        if cohort in index and month in index:
            cells[(cohort, index[month] - index[cohort])] = count
    rows = []
    for start in starts:
        key = start.date().isoformat()
        size = sizes.get(key, 0)
        offsets = []
        for offset in range(months):
            if index[key] + offset >= months:
                offsets.append(None)
                continue
            share = 100.0 * cells.get((key, offset), 0) / size if size else 0.0
            offsets.append({"share": round(share, 1), "heat": _heat(share) if size else 0})
        last_day = (start + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
        rows.append({"month": start.strftime("%Y-%m"), "size": size, "cells": offsets,
                     "url": customers_url(workspace_slug, first_order_min=start.date().isoformat(),
                                          first_order_max=last_day.date().isoformat())})
    return {"rows": rows, "offsets": list(range(months))}


def _heat(share: float) -> int:
    """Return the heat of a cohort cell as one of Bootstrap's background opacities (0, 10, 25, 50, 75, 100)."""
    return next((level for floor, level in ((75, 100), (50, 75), (25, 50), (10, 25), (0.001, 10)) if share >= floor), 0)


def model_status(*, run=_LOOK_UP) -> dict:
    """Return what the page says about predictions: the model in use and why (or why not), from the latest run."""
    run = latest_run() if run is _LOOK_UP else run
    if run is None:
        return {"state": "none", "text": "Not computed yet: run a refresh to compute stages and metrics."}
    if run.model_kind == LifecycleRun.ModelKind.BGNBD:
        params = (run.model_params or {}).get("bgnbd") or {}
        text = (f"Predictions from a BG/NBD model fitted on {run.customers:,} customers "
                f"({run.repeat_customers:,} repeat buyers) on {run.finished_at or run.started_at:%Y-%m-%d %H:%M}.")
        if run.fallback_reason:
            text += f" Note: {run.fallback_reason}."
        return {"state": "bgnbd", "text": text, "params": params, "run": run}
    return {"state": "rules", "run": run,
            "text": f"Rule-based predictions: {run.fallback_reason or 'too little data for the BG/NBD model'}. "
                    "P(alive) is not shown; the 12-month CLV is the last 12 months' run rate."}
