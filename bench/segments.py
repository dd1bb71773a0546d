#!/usr/bin/env python
"""Time segment counts compiled by segments/ against hand-written SQL for the same question.

    .venv/bin/python bench/segments.py --workspace bench       # after bench/generate.py and bench/lifecycle.py

Each segment is a rule tree (what a marketer builds) and the SQL an engineer would write by hand for the
same question. Both run ``--repeats`` times, interleaved, inside the workspace's tenant scope (row-level
security applies to both); the script checks they count the same customers, and prints p50/p95 of each
and the ratio of the medians. The clock ("in the last N days") is fixed once per run.

Segments on purchases need order lines. bench/generate.py loads them with ``--lines``; for a workspace
loaded without, ``--add-lines`` gives every order one or two lines of pseudo-random catalogue products in
one set-based INSERT per chunk of orders (line totals then do not add up to order totals, which no count
here reads).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_RATIO = 2.0
TARGET_P95_MS = 500.0
ORDERS_PER_LINE_CHUNK = 1_000_000

# The suppression key of an address, as customers.models.suppression_hash computes it.
_SUPPRESSED = """EXISTS (SELECT 1 FROM customers_suppression s
                 WHERE s.tenant_id = %(tenant)s AND s.channel = 'email'
                   AND s.value_hash = encode(sha256(convert_to(%(email_key_prefix)s || lower(trim(c.email)), 'UTF8')), 'hex'))"""


@dataclass
class SegmentCase:
    """One question, as a rule tree and as hand-written SQL (a COUNT with %(name)s parameters)."""

    name: str
    rules: dict
    sql: str


def segment_cases(category: str = "Coffee beans", rare_category: str = "Workshops") -> list[SegmentCase]:
    """Return the benchmarked segments: the five-condition one first, then a few different shapes."""
    return [
        SegmentCase(
            "at risk, spent > 200, ordered in 180 days, may be e-mailed, bought the category in 365 days",
            {"op": "and", "rules": [
                {"field": "stage", "operator": "is", "value": "at_risk"},
                {"field": "revenue", "operator": "gt", "value": 200},
                {"field": "last_order_at", "operator": "in_last_days", "value": 180},
                {"field": "email_consent", "operator": "is", "value": True},
                {"field": "bought_category", "operator": "in_last_days", "value": 365, "key": category},
            ]},
            f"""
SELECT COUNT(*) FROM customers_customer c JOIN lifecycle_customermetrics m ON m.customer_id = c.id
WHERE c.tenant_id = %(tenant)s AND m.tenant_id = %(tenant)s AND c.erased_at IS NULL
  AND m.stage = 'at_risk' AND m.revenue > 200 AND m.last_order_at >= %(days_180)s
  AND c.email_opt_in AND c.email <> '' AND NOT {_SUPPRESSED}
  AND EXISTS (SELECT 1 FROM customers_order o JOIN customers_orderline l ON l.order_id = o.id
              JOIN customers_product p ON p.id = l.product_id
              WHERE o.tenant_id = %(tenant)s AND o.customer_id = c.id AND o.status <> 'cancelled'
                AND o.placed_at >= %(days_365)s AND upper(p.category) = upper(%(category)s))""",
        ),
        SegmentCase(
            "heavy users who may be e-mailed",
            {"op": "and", "rules": [
                {"field": "is_heavy_user", "operator": "is", "value": True},
                {"field": "email_consent", "operator": "is", "value": True},
            ]},
            f"""
SELECT COUNT(*) FROM customers_customer c JOIN lifecycle_customermetrics m ON m.customer_id = c.id
WHERE c.tenant_id = %(tenant)s AND m.tenant_id = %(tenant)s AND c.erased_at IS NULL AND m.is_heavy_user
  AND c.email_opt_in AND c.email <> '' AND NOT {_SUPPRESSED}""",
        ),
        SegmentCase(
            "lapsed, or at risk with P(alive) below 0.2",
            {"op": "or", "rules": [
                {"field": "stage", "operator": "is", "value": "lapsed"},
                {"op": "and", "rules": [
                    {"field": "stage", "operator": "is", "value": "at_risk"},
                    {"field": "p_alive", "operator": "lt", "value": 0.2},
                ]},
            ]},
            """
SELECT COUNT(*) FROM customers_customer c JOIN lifecycle_customermetrics m ON m.customer_id = c.id
WHERE c.tenant_id = %(tenant)s AND m.tenant_id = %(tenant)s AND c.erased_at IS NULL
  AND (m.stage = 'lapsed' OR (m.stage = 'at_risk' AND m.p_alive < 0.2))""",
        ),
        SegmentCase(
            "active, at least 5 orders, never bought from the rare category",
            {"op": "and", "rules": [
                {"field": "stage", "operator": "is", "value": "active"},
                {"field": "order_count", "operator": "gte", "value": 5},
                {"field": "bought_category", "operator": "never", "value": None, "key": rare_category},
            ]},
            """
SELECT COUNT(*) FROM customers_customer c JOIN lifecycle_customermetrics m ON m.customer_id = c.id
WHERE c.tenant_id = %(tenant)s AND m.tenant_id = %(tenant)s AND c.erased_at IS NULL
  AND m.stage = 'active' AND m.order_count >= 5
  AND NOT EXISTS (SELECT 1 FROM customers_order o JOIN customers_orderline l ON l.order_id = o.id
                  JOIN customers_product p ON p.id = l.product_id
                  WHERE o.tenant_id = %(tenant)s AND o.customer_id = c.id AND o.status <> 'cancelled'
                    AND upper(p.category) = upper(%(rare_category)s))""",
        ),
    ]


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (not PostgreSQL, no such workspace, no metrics or lines)."""


@dataclass
class SegmentTiming:
    """Timings (seconds) of one segment, compiled and hand-written, and the count both gave."""

    name: str
    count: int
    compiled: list[float] = field(default_factory=list)
    hand_written: list[float] = field(default_factory=list)

    @staticmethod
    def percentile(values: list[float], share: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]

    @property
    def ratio(self) -> float:
        return statistics.median(self.compiled) / max(statistics.median(self.hand_written), 1e-9)


def add_lines(workspace, echo=print) -> int:
    """Give every order of the workspace without lines one or two lines of catalogue products; return how many."""
    from django.db import connection

    from crm_site.tenancy import tenant_scope
    from customers.models import Order, Product

    with tenant_scope(workspace):
        product_ids = list(Product.objects.order_by("pk").values_list("pk", flat=True))
        bounds = Order.objects.order_by("pk").values_list("pk", flat=True)
        first, last = bounds.first(), bounds.last()
    if not product_ids or first is None:
        raise BenchError("The workspace needs products and orders before lines can be added.")
    added = 0
    started = time.monotonic()
    for low in range(first, last + 1, ORDERS_PER_LINE_CHUNK):
        with tenant_scope(workspace), connection.cursor() as cursor:
            # Knuth's multiplicative hash of the order id picks the products, so a rerun adds the same lines.
            cursor.execute("""
INSERT INTO customers_orderline (tenant_id, order_id, product_id, sku, quantity, unit_price, line_total,
                                 returned_quantity)
SELECT o.tenant_id, o.id, p.id, p.sku, 1, p.price, p.price, 0
FROM customers_order o
CROSS JOIN LATERAL generate_series(1, 1 + (o.id %% 2)::int) AS line(number)
JOIN customers_product p
  ON p.id = (%(products)s::bigint[])[1 + ((o.id * 2654435761 + line.number * 40503) %% %(count)s)::int]
WHERE o.tenant_id = %(tenant)s AND o.id >= %(low)s AND o.id < %(high)s
  AND NOT EXISTS (SELECT 1 FROM customers_orderline l WHERE l.order_id = o.id)""",
                           {"tenant": workspace.pk, "products": product_ids, "count": len(product_ids),
                            "low": low, "high": low + ORDERS_PER_LINE_CHUNK})
            added += cursor.rowcount
        echo(f"  order lines: {added:,} added ({time.monotonic() - started:.0f} s)")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE customers_orderline")
    return added


def run(workspace_slug: str = "bench", *, repeats: int = 20, category: str = "Coffee beans",
        rare_category: str = "Workshops", add_missing_lines: bool = False, echo=print) -> list[SegmentTiming]:
    """Time every benchmarked segment, compiled and by hand, ``repeats`` times each; print and return the timings.

    Raises BenchError off PostgreSQL, for a workspace without metrics, or when the two SQLs count differently.
    """
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from crm_site.models import Workspace
    from crm_site.tenancy import tenant_scope
    from customers.models import Customer, OrderLine
    from lifecycle.models import CustomerMetrics
    from segments.audience import count_customers, customers_matching

    if not settings.IS_POSTGRES:
        raise BenchError("bench/segments.py measures PostgreSQL: set DATABASE_URL (see README.md).")
    workspace = Workspace.objects.filter(slug=workspace_slug).first()
    if workspace is None:
        raise BenchError(f"No workspace '{workspace_slug}': load one with bench/generate.py first.")
    with tenant_scope(workspace):
        customers = Customer.objects.count()
        with_metrics = CustomerMetrics.objects.count()
        has_lines = OrderLine.objects.exists()
    if not with_metrics:
        raise BenchError(f"Workspace '{workspace_slug}' has no lifecycle metrics: run bench/lifecycle.py first.")
    if not has_lines:
        if not add_missing_lines:
            raise BenchError(f"Workspace '{workspace_slug}' has no order lines: pass --add-lines "
                             "(or load it with bench/generate.py --lines).")
        add_lines(workspace, echo=echo)

    now = timezone.now()
    params = {"tenant": workspace.pk, "category": category, "rare_category": rare_category, "days_180": now - dt.timedelta(days=180),
              "days_365": now - dt.timedelta(days=365), "email_key_prefix": f"{settings.SECRET_KEY}:email:"}
    echo(f"Segment counts in workspace '{workspace_slug}': {customers:,} customers, {with_metrics:,} with metrics; "
         f"{repeats} runs each, compiled and hand-written interleaved")
    results = []
    for case in segment_cases(category, rare_category):
        timing = None
        for _ in range(repeats):
            with tenant_scope(workspace):
                started = time.monotonic()
                compiled_count = count_customers(customers_matching(case.rules, now=now))
                compiled_seconds = time.monotonic() - started
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL jit = off")  # as count_customers counts: the same settings for both
                    started = time.monotonic()
                    cursor.execute(case.sql, params)
                    hand_count = cursor.fetchone()[0]
                    hand_seconds = time.monotonic() - started
            if compiled_count != hand_count:
                raise BenchError(f"“{case.name}”: the compiled rules count {compiled_count:,} customers, "
                                 f"the hand-written SQL {hand_count:,}.")
            timing = timing or SegmentTiming(case.name, compiled_count)
            timing.compiled.append(compiled_seconds)
            timing.hand_written.append(hand_seconds)
        results.append(timing)
        p50, p95 = (SegmentTiming.percentile(timing.compiled, share) * 1000 for share in (0.5, 0.95))
        h50, h95 = (SegmentTiming.percentile(timing.hand_written, share) * 1000 for share in (0.5, 0.95))
        verdict = "within" if timing.ratio <= TARGET_RATIO and p95 <= TARGET_P95_MS else "OVER"
        echo(f"  {timing.name}: {timing.count:,} customers")
        echo(f"      compiled      p50 {p50:8.1f} ms   p95 {p95:8.1f} ms")
        echo(f"      hand-written  p50 {h50:8.1f} ms   p95 {h95:8.1f} ms")
        echo(f"      ratio {timing.ratio:.2f}x ({verdict} the {TARGET_RATIO:g}x and p95 {TARGET_P95_MS:g} ms targets)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default="bench", help="Slug of the workspace (from bench/generate.py).")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--category", default="Coffee beans", help="The product category of the purchase rules.")
    parser.add_argument("--rare-category", default="Workshops", help="The category of the 'never bought' rule.")
    parser.add_argument("--add-lines", action="store_true",
                        help="Give the orders lines first if the workspace was loaded without them.")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm_site.settings")
    import django

    django.setup()
    try:
        results = run(args.workspace, repeats=args.repeats, category=args.category,
                      rare_category=args.rare_category, add_missing_lines=args.add_lines)
    except BenchError as error:
        print(f"segments.py: {error}", file=sys.stderr)
        return 2
    within = all(timing.ratio <= TARGET_RATIO
                 and SegmentTiming.percentile(timing.compiled, 0.95) * 1000 <= TARGET_P95_MS for timing in results)
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
