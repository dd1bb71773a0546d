#!/usr/bin/env python
"""Time the Dashboard and the Lifecycle page of a large workspace, beside the page's heaviest SQL run directly.

    CACHE_URL=redis://127.0.0.1:6379/11 .venv/bin/python bench/dashboards.py --workspace bench --requests 30

What is measured
    Server time, in process: Django's test ``Client`` signed in as the workspace's owner (a benchmark user made
    once) requests each page through the whole stack (middleware, session, tenant scope, views, templates) with
    DEBUG off; the time is ``client.get`` from call to rendered response. No network is involved, so this is
    the time a gunicorn worker spends on the page. Every response must be a 200 showing the page's numbers.

    Cold: before each of ``--cold`` requests the workspace's cached page numbers are removed (its keys only on
    Redis; the whole cache on the other backends), so the request computes everything a first visit after a
    cache loss computes. Warm: ``--requests`` requests one after the other after one warm-up request.

    The baseline, in the same run: the page's single heaviest aggregate, the stage counts (COUNT(*) FILTER per
    stage and flag, at-risk sums) over the workspace's lifecycle_customermetrics, run directly with psycopg on
    a connection of its own inside the workspace's row-level-security scope, ``--requests`` times. For
    reference the script also times, the same way, the aggregate the Dashboard used to run on every view
    (COUNT and SUM over all the workspace's orders). The ratio is page p50 ÷ stage-count SQL p50.

Use the cache of the deployment (CACHE_URL=redis://…) to measure what production does: the default file cache
of ``make run`` is slower. Loopback only; request counts are bounded (at most 200 warm, 20 cold).
docs/benchmarks.md holds the results.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MAX_REQUESTS = 200
MAX_COLD = 20
TARGET_WARM_P95_MS = 500
BENCH_USER = "bench-dashboards"

STAGE_COUNTS_SQL = """
SELECT COUNT(*) FILTER (WHERE stage = 'prospect'), COUNT(*) FILTER (WHERE stage = 'onboarding'),
       COUNT(*) FILTER (WHERE stage = 'active'), COUNT(*) FILTER (WHERE stage = 'at_risk'),
       COUNT(*) FILTER (WHERE stage = 'lapsed'), COUNT(*) FILTER (WHERE is_heavy_user),
       COUNT(*) FILTER (WHERE is_reward_due), COUNT(*) FILTER (WHERE is_reinforce_due),
       SUM(trailing_revenue_12m) FILTER (WHERE stage = 'at_risk'),
       SUM(predicted_clv_12m) FILTER (WHERE stage = 'at_risk'), COUNT(*)
FROM lifecycle_customermetrics WHERE tenant_id = %(tenant)s
"""
ORDER_TOTALS_SQL = "SELECT COUNT(*), SUM(total) FROM customers_order WHERE tenant_id = %(tenant)s"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


@dataclass
class Timing:
    """Milliseconds of one page (or statement), cold and warm, and the queries of one warm request."""

    label: str
    warm_ms: list[float] = field(default_factory=list)
    cold_ms: list[float] = field(default_factory=list)
    queries_warm: int = 0
    queries_cold: int = 0

    def line(self) -> str:
        cold = (f"cold p50 {percentile(self.cold_ms, .5):8.1f} ms  max {max(self.cold_ms):8.1f} ms "
                f"({self.queries_cold} queries)") if self.cold_ms else ""
        return (f"{self.label:<34} warm p50 {percentile(self.warm_ms, .5):7.1f} ms  "
                f"p95 {percentile(self.warm_ms, .95):7.1f} ms ({self.queries_warm} queries)   {cold}")


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm_site.settings")
    os.environ.setdefault("DJANGO_DEBUG", "0")
    import django

    django.setup()


def owner_client(workspace):
    """Return a test Client signed in as the benchmark's owner of ``workspace`` (user and membership made once)."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from crm_site.models import Membership, Role

    user, _ = get_user_model().objects.get_or_create(username=BENCH_USER, defaults={"email": "bench@example.com"})
    Membership.objects.get_or_create(workspace=workspace, user=user, defaults={"role": Role.OWNER})
    client = Client()
    client.force_login(user)
    return client


def forget_cached_pages(tenant_id: int) -> None:
    """Remove what the pages of the workspace keep in the cache (its keys on Redis, else the whole cache)."""
    from django.core.cache import cache
    from django.core.cache.backends.redis import RedisCache

    if isinstance(cache, RedisCache):
        client = cache._cache.get_client(write=True)
        for prefix in (f"lifecycle:{tenant_id}:", f"dashboard:{tenant_id}:"):
            keys = list(client.scan_iter(match=f"*:{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
    else:
        cache.clear()


def time_page(client, url: str, must_show: str, requests: int, cold: int, tenant_id: int, label: str) -> Timing:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    timing = Timing(label)

    def one() -> float:
        started = time.perf_counter()
        response = client.get(url)
        elapsed = 1000 * (time.perf_counter() - started)
        if response.status_code != 200 or must_show not in response.content.decode():
            raise SystemExit(f"{url} answered {response.status_code} without {must_show!r}")
        return elapsed

    for _ in range(cold):
        forget_cached_pages(tenant_id)
        with CaptureQueriesContext(connection) as queries:
            timing.cold_ms.append(one())
        timing.queries_cold = len(queries)
    one()  # warm-up: fills the cache when there were no cold requests
    for position in range(requests):
        with CaptureQueriesContext(connection) as queries:
            timing.warm_ms.append(one())
        if position == 0:
            timing.queries_warm = len(queries)
    return timing


def conninfo() -> str:
    from django.db import connection

    settings = connection.settings_dict
    parts = {"host": settings["HOST"] or "127.0.0.1", "port": settings["PORT"] or 5432, "dbname": settings["NAME"],
             "user": settings["USER"], "password": settings.get("PASSWORD") or ""}
    return " ".join(f"{name}={value}" for name, value in parts.items() if value != "")


def time_sql(sql: str, tenant_id: int, runs: int, label: str) -> Timing:
    """Run ``sql`` ``runs`` times on a psycopg connection of its own, in the workspace's RLS scope."""
    import psycopg

    timing = Timing(label)
    with psycopg.connect(conninfo(), autocommit=False) as connection:
        for _ in range(runs + 1):
            with connection.transaction(), connection.cursor() as cursor:
                cursor.execute("SELECT set_config('app.tenant_id', %s, true)", [str(tenant_id)])
                started = time.perf_counter()
                cursor.execute(sql, {"tenant": tenant_id})
                cursor.fetchall()
                timing.warm_ms.append(1000 * (time.perf_counter() - started))
    timing.warm_ms.pop(0)  # the first run reads the table into the buffer cache for the others
    timing.queries_warm = 1
    return timing


def benchmark_dashboards(workspace_slug: str, requests: int = 30, cold: int = 5, orders_baseline: int = 3,
                         echo=print) -> dict:
    """Time both pages and the baselines; print a report through ``echo``; return the Timings by name."""
    from django.conf import settings
    from django.core.cache import caches
    from django.urls import reverse

    from crm_site.models import Workspace

    requests, cold = max(1, min(requests, MAX_REQUESTS)), max(0, min(cold, MAX_COLD))
    workspace = Workspace.objects.get(slug=workspace_slug)
    client = owner_client(workspace)
    echo(f"Workspace {workspace.slug!r} (id {workspace.pk}); in-process Django test Client, DEBUG={settings.DEBUG}, "
         f"cache {type(caches['default']).__name__}; {requests} warm and {cold} cold requests per page")
    timings = {
        "sql": time_sql(STAGE_COUNTS_SQL, workspace.pk, requests, "SQL: stage counts (psycopg)"),
        "dashboard": time_page(client, reverse("dashboard", args=[workspace.slug]), 'data-metric="orders"',
                               requests, cold, workspace.pk, "Dashboard"),
        "lifecycle": time_page(client, reverse("lifecycle:index", args=[workspace.slug]), 'id="stage-counts"',
                               requests, cold, workspace.pk, "Lifecycle page"),
    }
    if orders_baseline:
        timings["orders_sql"] = time_sql(ORDER_TOTALS_SQL, workspace.pk, orders_baseline,
                                         "SQL: all orders COUNT+SUM (old)")
    for timing in timings.values():
        echo(timing.line())
    baseline = percentile(timings["sql"].warm_ms, .5)
    for name in ("dashboard", "lifecycle"):
        timing = timings[name]
        warm_p95 = percentile(timing.warm_ms, .95)
        cold_part = (f", cold p50 / SQL p50 {percentile(timing.cold_ms, .5) / baseline:.2f}"
                     if timing.cold_ms else "")
        verdict = "meets" if warm_p95 < TARGET_WARM_P95_MS else "MISSES"
        echo(f"Ratio {timing.label} / stage-count SQL: warm p50 / SQL p50 "
             f"{percentile(timing.warm_ms, .5) / baseline:.2f}{cold_part} "
             f"(warm p95 {warm_p95:.0f} ms {verdict} the target of {TARGET_WARM_P95_MS} ms)")
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default="bench")
    parser.add_argument("--requests", type=int, default=30, help=f"warm requests per page (at most {MAX_REQUESTS})")
    parser.add_argument("--cold", type=int, default=5, help=f"cold requests per page (at most {MAX_COLD})")
    parser.add_argument("--orders-baseline", type=int, default=3,
                        help="runs of the old all-orders aggregate, for reference (0: skip)")
    args = parser.parse_args()
    setup_django()
    benchmark_dashboards(args.workspace, args.requests, args.cold, args.orders_baseline)


if __name__ == "__main__":
    main()
