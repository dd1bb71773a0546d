"""The numbers behind the Lifecycle page and the Dashboard, each one aggregate query over the workspace.

Every function runs in the workspace's scope and returns plain data ready for ``json_script`` (charts) or a
template, each item with the customer-list link of the customers behind it. The heavier ones (cohorts, Pareto
curve, CLV distribution) are kept per full lifecycle run: the refresh task computes them right after the run
(``warm_charts``), so pages read them from the cache until the next one. Stage counts, flow and churn follow
every change: pages pass a ``live_stamp`` (latest run, latest transition, last incremental refresh), and the
numbers are kept under it, so the next change makes the next view count again. ``shop_totals`` holds the
Dashboard's customer and order counts without counting every order on each view.
"""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from decimal import Decimal
from urllib.parse import urlencode

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Max, Q, Sum
from django.db.models.functions import TruncMonth
from django.urls import reverse
from django.utils import timezone

from crm_site.tenancy import current_tenant_id
from customers.models import Customer, Order
from lifecycle.models import CustomerMetrics, LifecycleEvent, LifecycleRun, Stage

# A full run (nightly) replaces the cached charts; this only bounds how long they outlive a stopped schedule.
CACHE_SECONDS = 26 * 3600
# Live numbers are kept under their stamp; this only bounds a change no stamp sees (a customer deleted).
LIVE_SECONDS = 10 * 60
# Edits and deletions of older customers and orders reach the Dashboard's totals within this (new rows at once).
TOTALS_SECONDS = 5 * 60
STAGE_ORDER = [Stage.PROSPECT, Stage.ONBOARDING, Stage.ACTIVE, Stage.AT_RISK, Stage.LAPSED]
ALIVE_STAGES = (Stage.ONBOARDING, Stage.ACTIVE, Stage.AT_RISK)
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
    """Return the per-run value ``name``: from the cache, else as stored on the run, else computed (and cached).

    The value is also put on the in-memory run's ``charts``, so ``warm_charts`` stores what it computed.
    """
    run = latest_run() if run is _LOOK_UP else run
    key = f"lifecycle:{current_tenant_id()}:{run.pk if run else 0}:{name}"
    value = cache.get(key)
    if value is None:
        stored = (run.charts or {}).get(name) if run is not None else None
        value = stored if stored is not None else compute()
        cache.set(key, value, CACHE_SECONDS)
    if run is not None:
        run.charts = {**(run.charts or {}), name: value}
    return value


def _without_jit() -> None:
    # Compiling these one-off aggregates costs PostgreSQL more than it saves (seconds at 10M orders); the
    # setting ends with the transaction.
    if settings.IS_POSTGRES and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")


def live_stamp(run=_LOOK_UP) -> str:
    """Return the stamp of the workspace's live lifecycle numbers: its latest run, its latest transition and the
    last incremental refresh (``forget_live_numbers``); any write of stages or flags changes one of them.
    """
    run = latest_run() if run is _LOOK_UP else run
    last_event = LifecycleEvent.objects.order_by("-id").values_list("id", flat=True).first()
    version = cache.get_or_set(_version_key(current_tenant_id()), time.time_ns, None)
    return f"{run.pk if run else 0}:{last_event or 0}:{version}"


def forget_live_numbers(tenant_id: int) -> None:
    """Make the next view of the workspace count its live numbers again (after an incremental refresh wrote)."""
    cache.set(_version_key(tenant_id), time.time_ns(), None)


def _version_key(tenant_id: int) -> str:
    return f"lifecycle:{tenant_id}:version"


def _kept_live(name: str, compute, stamp: str | None):
    if stamp is None:
        return compute()
    return cache.get_or_set(f"lifecycle:{current_tenant_id()}:live:{stamp}:{name}", compute, LIVE_SECONDS)


def warm_charts(workspace) -> None:
    """Compute the per-run charts of the workspace and the order totals, cache them and store them on its latest
    run (call in its scope, right after a full run), so no page view scans the orders for them; and keep the
    stage counts the run left.
    """
    run = latest_run()
    if run is None:
        return
    run.charts = {}
    _without_jit()
    revenue_concentration(workspace.slug, run=run)
    clv_distribution(workspace.slug, run=run)
    retention_cohorts(workspace.slug, workspace.time_zone, run=run)
    run.charts["orders"] = _count_orders()
    LifecycleRun.objects.filter(pk=run.pk).update(charts=run.charts)
    stage_summary(workspace.slug, stamp=live_stamp(run))  # the first view after the run then counts nothing


# --- Stages ------------------------------------------------------------------------------------------


def stage_summary(workspace_slug: str, *, stamp: str | None = None) -> dict:
    """Return customers per stage and per flag, and the 12-month revenue and predicted CLV of at-risk customers
    (counted again when ``stamp`` changes; always when it is None).
    """

    def compute():
        return CustomerMetrics.objects.aggregate(
            **{stage.value: Count("id", filter=Q(stage=stage.value)) for stage in STAGE_ORDER},
            heavy_users=Count("id", filter=Q(is_heavy_user=True)),
            reward_due=Count("id", filter=Q(is_reward_due=True)),
            reinforce_due=Count("id", filter=Q(is_reinforce_due=True)),
            at_risk_revenue=Sum("trailing_revenue_12m", filter=Q(stage=Stage.AT_RISK)),
            at_risk_clv=Sum("predicted_clv_12m", filter=Q(stage=Stage.AT_RISK)),
            total=Count("id"),
        )

    row = _kept_live("summary", compute, stamp)
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


def stage_flow(workspace_slug: str, time_zone: str, months: int = 12, now: dt.datetime | None = None, *,
               stamp: str | None = None) -> dict:
    """Return, per month, how many customers moved into each stage from another (the transition events; a
    customer's first classification is no move), and the last 30 days' moves as from -> to counts.
    """
    zone = zoneinfo.ZoneInfo(time_zone)
    now = now or timezone.now()
    starts = _month_starts(now, months, zone)

    def compute():
        recent = (_moves().filter(occurred_at__gte=now - dt.timedelta(days=30)).values("from_value", "to_value")
                  .annotate(n=Count("id")).order_by("-n")[:12])
        return [(row["from_value"], row["to_value"], row["n"]) for row in recent]

    recent = _kept_live("recent-moves", compute, stamp)
    counts = {(month, to_value): n for month, to_value, n in _monthly_moves(time_zone, starts, stamp)}
    labels = [start.strftime("%Y-%m") for start in starts]
    datasets = [
        {"stage": stage.value, "label": stage.label, "url": customers_url(workspace_slug, stage=stage.value),
         "data": [counts.get((start.date(), stage.value), 0) for start in starts]}
        for stage in STAGE_ORDER
    ]
    labels_of = dict(Stage.choices)
    transitions = [{"from": labels_of.get(from_value, from_value), "to": labels_of.get(to_value, to_value),
                    "count": n, "url": customers_url(workspace_slug, stage=to_value)}
                   for from_value, to_value, n in recent]
    return {"labels": labels, "datasets": datasets, "transitions": transitions}


def _moves():
    # A customer's first classification (no from_value) is no move; the partial index lifecycle_event_moves.
    return LifecycleEvent.objects.filter(kind="stage").exclude(from_value="")


def _monthly_moves(time_zone: str, starts: list[dt.datetime], stamp: str | None) -> list[tuple]:
    """Return (month's first day, stage moved into, customers) of the moves since ``starts[0]``, by the zone's
    months; the flow chart and the churn rate share it.
    """

    def compute():
        zone = zoneinfo.ZoneInfo(time_zone)
        rows = (_moves().filter(occurred_at__gte=starts[0]).annotate(month=TruncMonth("occurred_at", tzinfo=zone))
                .values("month", "to_value").annotate(n=Count("id")).order_by())
        return [(row["month"].date().replace(day=1), row["to_value"], row["n"]) for row in rows]

    return _kept_live(f"moves:{time_zone}:{starts[0]:%Y-%m}:{len(starts)}", compute, stamp)


def churn_rate(workspace_slug: str, time_zone: str, months: int = 12, now: dt.datetime | None = None, *,
               stamp: str | None = None, alive_now: int | None = None) -> dict:
    """Return the monthly churn rate: customers who lapsed that month ÷ customers alive (onboarding, active or
    at risk) at the month's first lifecycle run (else the latest run before it, else today: ``alive_now``, the
    page's stage counts, or counted).
    """
    zone = zoneinfo.ZoneInfo(time_zone)
    now = now or timezone.now()
    starts = _month_starts(now, months, zone)
    alive_stages = ALIVE_STAGES

    def compute():
        # Runs of the window and a month before it (the first month's base); nightly runs keep this ~400 rows.
        return list(LifecycleRun.objects.filter(started_at__lt=now, started_at__gte=starts[0] - dt.timedelta(days=31))
                    .order_by("started_at").values_list("started_at", "stage_counts"))

    runs = _kept_live(f"churn-runs:{starts[0]:%Y-%m-%d}", compute, stamp)
    lapsed = {month: n for month, to_value, n in _monthly_moves(time_zone, starts, stamp) if to_value == Stage.LAPSED}
    points = []
    for position, start in enumerate(starts):
        end = starts[position + 1] if position + 1 < len(starts) else now
        before = [counts for started_at, counts in runs if started_at <= start]
        within = [counts for started_at, counts in runs if start < started_at < end]
        chosen = before[-1] if before else (within[0] if within else None)
        if not chosen and alive_now is None:
            alive_now = CustomerMetrics.objects.filter(stage__in=alive_stages).count()
        base = sum((chosen or {}).get(stage.value, 0) for stage in alive_stages) if chosen else alive_now
        count = lapsed.get(start.date(), 0)
        points.append({"month": start.strftime("%Y-%m"), "lapsed": count, "base": base,
                       "rate": round(100.0 * count / base, 2) if base else 0.0})
    return {"points": points, "url": customers_url(workspace_slug, stage=Stage.LAPSED.value)}


# --- Dashboard totals --------------------------------------------------------------------------------


def shop_totals(run=_LOOK_UP) -> dict:
    """Return the workspace's customers, e-mail opt-ins, orders (every status) and their revenue (sum of totals).

    Orders: as counted right after the latest full run (``warm_charts``) plus those added since (ids past the
    highest one counted, through the primary key), so no view counts every order; a new order shows at once, an
    edit or deletion of an older one after the next full run. Customers: counted at most every
    ``TOTALS_SECONDS``, plus those added since; so are orders before the first run.
    """
    run = latest_run() if run is _LOOK_UP else run
    customers = _with_added(Customer, _customer_totals, "last_customer",
                            _kept_count("customers", lambda: Customer.objects.aggregate(**_customer_totals())))
    orders = (run.charts or {}).get("orders") if run is not None else None
    orders = _with_added(Order, _order_totals, "last_order", orders or _kept_count("orders", _count_orders))
    return {"customers": customers["customers"], "email_opt_ins": customers["email_opt_ins"],
            "orders": orders["orders"], "revenue": Decimal(orders["revenue"])}


def _kept_count(name: str, count) -> dict:
    counted = cache.get(key := f"dashboard:{current_tenant_id()}:{name}")
    if counted is None:
        counted = count()
        cache.set(key, counted, TOTALS_SECONDS)
        return {**counted, "fresh": True}
    return counted


def _with_added(model, totals, last: str, counted: dict) -> dict:
    """Return ``counted`` plus the rows of ``model`` past its highest id (none when it was just counted)."""
    counted = dict(counted)
    fresh = counted.pop("fresh", False)
    added = {} if fresh else model.objects.filter(pk__gt=counted[last] or 0).aggregate(**totals())
    return {name: _number(value) + _number(added.get(name)) for name, value in counted.items() if name != last}


def _number(value):
    return Decimal(value) if isinstance(value, str) else (value or 0)


def _count_orders() -> dict:
    counted = Order.objects.aggregate(**_order_totals())
    return {**counted, "revenue": str(counted["revenue"] or 0)}


def _customer_totals() -> dict:
    return {"customers": Count("id"), "email_opt_ins": Count("id", filter=Q(email_opt_in=True)),
            "last_customer": Max("id")}


def _order_totals() -> dict:
    return {"orders": Count("id"), "revenue": Sum("total"), "last_order": Max("id")}


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
        if connection.vendor == "postgresql":
            # Orders joined to their customer's metrics row directly (the ORM's path goes through customers_customer).
            with connection.cursor() as cursor:
                cursor.execute(
                    """
                    SELECT date_trunc('month', m.first_order_at AT TIME ZONE %(zone)s) AS cohort,
                           date_trunc('month', o.placed_at AT TIME ZONE %(zone)s) AS month,
                           COUNT(DISTINCT o.customer_id)
                    FROM customers_order o JOIN lifecycle_customermetrics m ON m.customer_id = o.customer_id
                    WHERE o.tenant_id = %(tenant)s AND m.tenant_id = %(tenant)s AND o.placed_at >= %(start)s
                      AND m.first_order_at >= %(start)s AND o.status IN ('placed', 'partially_refunded')
                    GROUP BY 1, 2
                    """,
                    {"zone": time_zone, "tenant": current_tenant_id(), "start": starts[0]},
                )
                active = cursor.fetchall()
        else:  # the embedded SQLite of `make run`
            active = list(
                Order.objects.filter(placed_at__gte=starts[0], status__in=("placed", "partially_refunded"),
                                     customer__metrics__first_order_at__gte=starts[0])
                .annotate(cohort=TruncMonth("customer__metrics__first_order_at", tzinfo=zone),
                          month=TruncMonth("placed_at", tzinfo=zone))
                .values_list("cohort", "month").annotate(n=Count("customer_id", distinct=True)).order_by())
        return ({cohort.date().isoformat(): n for cohort, n in sizes.items()},
                [(cohort.date().isoformat(), month.date().isoformat(), n) for cohort, month, n in active])

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
