"""The page benchmark (bench/dashboards.py) still runs, on tiny data, and prints its ratios."""

import datetime as dt
import importlib
import re
from decimal import Decimal

import pytest
from django.utils import timezone

from lifecycle.runs import refresh_workspace
from tests.factories import CustomerFactory, OrderFactory

dashboards_bench = importlib.import_module("bench.dashboards")

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_dashboards_benchmark_times_both_pages_beside_the_stage_count_sql(workspace):
    for number in range(6):
        person = CustomerFactory(tenant=workspace, first_seen_at=timezone.now() - dt.timedelta(days=400))
        for days_ago in (300 - number, 40 + number, 5 + number)[: 1 + number % 3]:
            OrderFactory(tenant=workspace, customer=person, total=Decimal("20.00"),
                         placed_at=timezone.now() - dt.timedelta(days=days_ago))
    refresh_workspace(workspace)
    printed = []

    timings = dashboards_bench.benchmark_dashboards(workspace.slug, requests=3, cold=2, orders_baseline=1,
                                                    echo=printed.append)

    output = "\n".join(printed)
    for page in ("Dashboard", "Lifecycle page"):
        assert re.search(rf"^{page} +warm p50 +\d+\.\d ms +p95 +\d+\.\d ms \(\d+ queries\) +cold p50", output, re.M)
        assert re.search(rf"^Ratio {page} / stage-count SQL: warm p50 / SQL p50 \d+\.\d\d, cold p50 / SQL p50 "
                         rf"\d+\.\d\d \(warm p95 \d+ ms (meets|MISSES) the target of 500 ms\)$", output, re.M), output
    assert re.search(r"^SQL: stage counts \(psycopg\) +warm p50", output, re.M)
    assert len(timings["dashboard"].warm_ms) == 3 and len(timings["lifecycle"].cold_ms) == 2
    # A warm view asks the database less than a cold one: the numbers come from the cache.
    assert timings["lifecycle"].queries_warm < timings["lifecycle"].queries_cold
