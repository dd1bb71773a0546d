#!/usr/bin/env python
"""Load a workspace with large synthetic data on PostgreSQL: N customers, M orders (and their lines).

    .venv/bin/python bench/generate.py --customers 1000000 --orders 10000000 --seed 42 --workspace bench

The histories are those of the demo (crm_site.demo_data: own purchase rhythms, one-time, lapsing and new
buyers, a Pareto-like spend), computed with numpy in chunks of customers. Each chunk is streamed with a binary
``COPY`` into a temporary staging table and moved into the real table with one ``INSERT … SELECT`` inside the
workspace's tenant scope: PostgreSQL refuses ``COPY FROM`` into a table under row-level security, and the
INSERT lets the policy check every row. Ids come from the tables' own sequences (a reserved block), so orders
and lines reference their parents without a lookup. The same seed, sizes and ``--as-of`` day give the same rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CUSTOMERS_PER_CHUNK = 100_000
ORDER_CHANNELS = ("web", "store", "phone", "marketplace")
ORDER_STATUSES = ("placed", "cancelled", "refunded", "partially_refunded")
PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


class GenerateError(RuntimeError):
    """The data could not be generated as asked (wrong database, workspace not empty, impossible sizes)."""


@dataclass
class GenerateResult:
    """What was loaded, and how long each phase took (seconds)."""

    workspace_id: int
    customers: int = 0
    orders: int = 0
    order_lines: int = 0
    consent_events: int = 0
    revenue_cents: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.timings.values())


# --- Binary COPY -------------------------------------------------------------------------------------

_PG_TYPES = {"bigint": ">i8", "integer": ">i4", "smallint": ">i2", "boolean": "u1", "double precision": ">f8"}


def binary_copy_payload(columns: list[tuple[str, str]], values: dict[str, np.ndarray]) -> bytes:
    """Return a PostgreSQL binary COPY stream of fixed-width columns, built by numpy without a Python loop."""
    rows = len(next(iter(values.values())))
    layout = [("field_count", ">i2")]
    for name, pg_type in columns:
        layout += [(f"{name}__length", ">i4"), (name, _PG_TYPES[pg_type])]
    tuples = np.empty(rows, dtype=np.dtype(layout))
    tuples["field_count"] = len(columns)
    for name, pg_type in columns:
        tuples[f"{name}__length"] = np.dtype(_PG_TYPES[pg_type]).itemsize
        tuples[name] = values[name]
    header = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    return header + tuples.tobytes() + (-1).to_bytes(2, "big", signed=True)


def copy_into_staging(cursor, staging: str, columns: list[tuple[str, str]], values: dict[str, np.ndarray]) -> None:
    """Create the temporary table ``staging`` and fill it with one binary COPY."""
    cursor.execute(f"DROP TABLE IF EXISTS {staging}")
    cursor.execute(
        f"CREATE TEMPORARY TABLE {staging} ({', '.join(f'{name} {pg_type}' for name, pg_type in columns)}) "
        "ON COMMIT DROP"
    )
    payload = binary_copy_payload(columns, values)
    column_list = ", ".join(name for name, _ in columns)
    with cursor.copy(f"COPY {staging} ({column_list}) FROM STDIN (FORMAT BINARY)") as copy:
        step = 8 << 20
        for start in range(0, len(payload), step):
            copy.write(payload[start:start + step])


def insert_from(cursor, model, source: str, expressions: dict[str, str], params: dict | None = None) -> int:
    """INSERT INTO the model's table SELECT the given column expressions FROM ``source``; return the row count.

    Columns without an expression get the model field's default (``now()`` for auto_now fields, NULL when
    nullable), so fields added later by other apps do not break the loader.
    """
    from django.db import connection

    params = dict(params or {})
    columns, selects = [], []
    for model_field in model._meta.concrete_fields:
        column = model_field.column
        if getattr(model_field, "generated", False):
            continue  # GeneratedField: the database computes it
        if column in expressions:
            expression = expressions[column]
        elif model_field.primary_key:
            continue  # the table's identity default numbers the row
        elif getattr(model_field, "auto_now", False) or getattr(model_field, "auto_now_add", False):
            expression = "now()"
        elif model_field.null:
            continue
        else:
            default = model_field.get_default()
            if default is None:
                raise GenerateError(f"{model.__name__}.{model_field.name} needs a value: add it to the loader.")
            params[f"default_{column}"] = model_field.get_db_prep_save(default, connection)
            expression = f"%(default_{column})s"
        columns.append(connection.ops.quote_name(column))
        selects.append(expression)
    cursor.execute(
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({', '.join(columns)}) "
        f"SELECT {', '.join(selects)} FROM {source}",
        params,
    )
    return cursor.rowcount


def reserve_ids(cursor, model, count: int) -> int:
    """Reserve ``count`` consecutive ids from the table's own sequence and return the first one."""
    from django.db import connection

    table = connection.ops.quote_name(model._meta.db_table)
    # The lock keeps concurrent inserts from drawing ids between nextval and setval.
    cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [model._meta.db_table])
    sequence = cursor.fetchone()[0]
    cursor.execute("SELECT nextval(%s)", [sequence])
    first = cursor.fetchone()[0]
    if count > 1:
        cursor.execute("SELECT setval(%s, %s)", [sequence, first + count - 1])
    return first


# --- Generation ----------------------------------------------------------------------------------------


def _chunk_rng(seed: int, kind: str, chunk: int) -> np.random.Generator:
    # One stream per chunk, so a chunk's rows do not depend on how much randomness earlier chunks used.
    return np.random.default_rng([seed, {"customers": 1, "orders": 2}[kind], chunk])


def _timed(result: GenerateResult, phase: str, started: float, rows: int | None = None, echo=print) -> None:
    elapsed = time.monotonic() - started
    result.timings[phase] = result.timings.get(phase, 0.0) + elapsed
    if echo and rows is not None:
        echo(f"  {phase:<15} {rows:>12,} rows in {elapsed:7.1f} s ({rows / max(elapsed, 1e-9):>10,.0f} rows/s)")


def generate(*, customers: int, orders: int, seed: int = 42, workspace_slug: str = "bench", lines: bool = False,
             as_of: dt.date | None = None, replace: bool = False, analyze: bool = True,
             chunk_customers: int = CUSTOMERS_PER_CHUNK, echo=print) -> GenerateResult:
    """Load ``customers`` customers and exactly ``orders`` orders into the workspace ``workspace_slug``.

    Returns a GenerateResult with the row counts, the revenue in cents and the timing of each phase. Raises
    GenerateError off PostgreSQL, when the workspace already holds customers (unless ``replace``), or when the
    sizes are impossible.
    """
    from django.conf import settings
    from django.db import connection

    from crm_site import demo_data
    from crm_site.models import Workspace
    from crm_site.tenancy import tenant_scope
    from customers.models import ConsentEvent, Customer, Order, OrderLine, Product

    if not settings.IS_POSTGRES:
        raise GenerateError(
            "bench/generate.py bulk-loads with PostgreSQL COPY and runs on PostgreSQL only: "
            "set DATABASE_URL=postgres://rapport@127.0.0.1:5432/rapport_bench (see README.md)."
        )
    if customers < 1 or orders < 0:
        raise GenerateError("--customers must be positive and --orders not negative.")
    echo = echo or (lambda *args: None)
    as_of_moment = dt.datetime.combine(as_of or dt.date.today(), dt.time(), dt.UTC)

    started = time.monotonic()
    workspace = Workspace.objects.filter(slug=workspace_slug).first()
    if workspace is not None:
        with tenant_scope(workspace):
            present = Customer.objects.count()
        if present and not replace:
            raise GenerateError(
                f"Workspace '{workspace_slug}' already holds {present:,} customers: pass --replace to rebuild it, "
                "or choose another --workspace."
            )
        # Also clears what an interrupted run left (products, a part of the customers).
        demo_data.delete_workspace(workspace)
        workspace = None
    if workspace is None:
        workspace = Workspace.objects.create(name=f"Benchmark ({workspace_slug})", slug=workspace_slug)
    result = GenerateResult(workspace_id=workspace.pk)
    _timed(result, "prepare", started, echo=None)

    started = time.monotonic()
    rng = np.random.default_rng(seed)
    plan = demo_data.plan_customers(rng, customers, as_of_moment)
    try:
        demo_data.allocate_orders(rng, plan, orders)
    except ValueError as error:
        raise GenerateError(str(error)) from None
    email_opt_in = rng.random(customers) < 0.6
    has_phone = rng.random(customers) < 0.55
    sms_opt_in = has_phone & (rng.random(customers) < 0.45)
    first_name_index = rng.integers(len(demo_data.FIRST_NAMES), size=customers)
    last_name_index = rng.integers(len(demo_data.LAST_NAMES), size=customers)
    zone_index = demo_data.pick_weighted(rng, demo_data.TIME_ZONES, customers)
    catalogue = demo_data.COFFEE_CATALOGUE
    with tenant_scope(workspace):
        products = Product.objects.bulk_create(
            Product(sku=item.sku, name=item.name, category=item.category, price=item.price, tenant=workspace)
            for item in catalogue
        )
        with connection.cursor() as cursor:
            first_customer_id = reserve_ids(cursor, Customer, customers)
            first_order_id = reserve_ids(cursor, Order, max(orders, 1))
    _timed(result, "plan", started, echo=None)
    echo(f"Loading workspace '{workspace_slug}' (id {workspace.pk}): {customers:,} customers, {orders:,} orders"
         f"{' with lines' if lines else ''}, seed {seed}, as of {as_of_moment:%Y-%m-%d}")

    customer_expressions = {
        "id": "s.id",
        "tenant_id": "%(tenant)s",
        "external_id": "'C' || lpad(s.number::text, 9, '0')",
        "email": "'customer' || s.number || '@example.com'",
        "phone": "CASE WHEN s.has_phone THEN '+49151' || lpad(mod(s.number, 100000000)::text, 8, '0') ELSE '' END",
        "first_name": "(%(first_names)s::text[])[s.first_name + 1]",
        "last_name": "(%(last_names)s::text[])[s.last_name + 1]",
        "time_zone": "(%(zones)s::text[])[s.zone + 1]",
        "locale": "(%(locales)s::text[])[s.zone + 1]",
        "attributes": "'{}'::jsonb",
        "email_opt_in": "s.email_opt_in",
        "sms_opt_in": "s.sms_opt_in",
        "first_seen_at": "to_timestamp(s.first_seen)",
        "created_at": "to_timestamp(s.first_seen)",
    }
    customer_params = {
        "tenant": workspace.pk,
        "first_names": list(demo_data.FIRST_NAMES),
        "last_names": list(demo_data.LAST_NAMES),
        "zones": [zone for zone, _, _ in demo_data.TIME_ZONES],
        "locales": [locale for _, locale, _ in demo_data.TIME_ZONES],
    }
    customer_columns = [
        ("id", "bigint"), ("number", "bigint"), ("first_seen", "bigint"), ("email_opt_in", "boolean"),
        ("sms_opt_in", "boolean"), ("has_phone", "boolean"), ("first_name", "integer"), ("last_name", "integer"),
        ("zone", "integer"),
    ]
    order_expressions = {
        "id": "s.id",
        "tenant_id": "%(tenant)s",
        "customer_id": "s.customer_id",
        "external_id": "'O' || lpad(s.number::text, 10, '0')",
        "placed_at": "to_timestamp(s.placed)",
        "created_at": "to_timestamp(s.placed)",
        "total": "s.total_cents::numeric / 100",
        "refunded_amount": "s.refunded_cents::numeric / 100",
        "currency": "'EUR'",
        "channel": "(%(channels)s::text[])[s.channel + 1]",
        "status": "(%(statuses)s::text[])[s.status + 1]",
    }
    order_columns = [
        ("id", "bigint"), ("customer_id", "bigint"), ("number", "bigint"), ("placed", "bigint"),
        ("total_cents", "bigint"), ("refunded_cents", "bigint"), ("channel", "smallint"), ("status", "smallint"),
    ]
    line_expressions = {
        "tenant_id": "%(tenant)s",
        "order_id": "s.order_id",
        "product_id": "(%(product_ids)s::bigint[])[s.product + 1]",
        "sku": "(%(skus)s::text[])[s.product + 1]",
        "quantity": "s.quantity",
        "unit_price": "s.unit_cents::numeric / 100",
        "line_total": "(s.unit_cents * s.quantity)::numeric / 100",
        "returned_quantity": "s.returned",
    }
    line_columns = [("order_id", "bigint"), ("product", "integer"), ("quantity", "integer"),
                    ("unit_cents", "bigint"), ("returned", "integer")]
    order_params = {"tenant": workspace.pk, "channels": list(ORDER_CHANNELS), "statuses": list(ORDER_STATUSES),
                    "product_ids": [product.pk for product in products], "skus": [item.sku for item in catalogue]}

    orders_before = 0
    for chunk, first in enumerate(range(0, customers, chunk_customers)):
        started = time.monotonic()
        last = min(first + chunk_customers, customers)
        numbers = np.arange(first, last)
        chunk_rng = _chunk_rng(seed, "orders", chunk)
        order_customer, placed = demo_data.schedule_orders(chunk_rng, plan, first, last)
        baskets = demo_data.fill_baskets(chunk_rng, plan.basket_scale[order_customer], catalogue)
        first_order = np.full(last - first, np.iinfo(np.int64).max)
        np.minimum.at(first_order, order_customer - first, placed)
        first_seen = np.minimum(plan.first_seen[first:last], first_order)
        _timed(result, "simulate", started, echo=None)

        # One transaction per table and chunk, so each timing includes the commit (and its foreign key checks).
        started = time.monotonic()
        with tenant_scope(workspace), connection.cursor() as cursor:
            copy_into_staging(cursor, "staging_customers", customer_columns, {
                "id": first_customer_id + numbers, "number": numbers + 1, "first_seen": first_seen,
                "email_opt_in": email_opt_in[first:last], "sms_opt_in": sms_opt_in[first:last],
                "has_phone": has_phone[first:last], "first_name": first_name_index[first:last],
                "last_name": last_name_index[first:last], "zone": zone_index[first:last],
            })
            loaded = insert_from(cursor, Customer, "staging_customers s", customer_expressions, customer_params)
            cursor.execute("DROP TABLE staging_customers")
            result.customers += loaded
        _timed(result, "customers", started, loaded, echo)

        started = time.monotonic()
        with tenant_scope(workspace), connection.cursor() as cursor:
            count = len(order_customer)
            order_numbers = orders_before + np.arange(count)
            fate = chunk_rng.random(count)
            status = np.select([fate < 0.01, fate < 0.025, fate < 0.045], [1, 2, 3], 0)
            refunded = np.select(
                [status == 2, status == 3],
                [baskets.order_total_cents, (baskets.order_total_cents * chunk_rng.uniform(0.2, 0.6, count))],
                0,
            ).astype(np.int64)
            channel = demo_data.pick_weighted(chunk_rng, demo_data.ORDER_CHANNELS, count)
            copy_into_staging(cursor, "staging_orders", order_columns, {
                "id": first_order_id + order_numbers, "customer_id": first_customer_id + order_customer,
                "number": order_numbers + 1, "placed": placed, "total_cents": baskets.order_total_cents,
                "refunded_cents": refunded, "channel": channel, "status": status,
            })
            loaded = insert_from(cursor, Order, "staging_orders s", order_expressions, order_params)
            cursor.execute("DROP TABLE staging_orders")
            result.orders += loaded
            result.revenue_cents += int(baskets.order_total_cents.sum())
        _timed(result, "orders", started, loaded, echo)

        if lines:
            started = time.monotonic()
            with tenant_scope(workspace), connection.cursor() as cursor:
                line_status = status[baskets.line_order]
                copy_into_staging(cursor, "staging_lines", line_columns, {
                    "order_id": first_order_id + orders_before + baskets.line_order, "product": baskets.product,
                    "quantity": baskets.quantity, "unit_cents": baskets.unit_cents,
                    "returned": np.where(line_status == 2, baskets.quantity, 0),
                })
                loaded = insert_from(cursor, OrderLine, "staging_lines s", line_expressions, order_params)
                cursor.execute("DROP TABLE staging_lines")
                result.order_lines += loaded
            _timed(result, "order lines", started, loaded, echo)
        orders_before += count

    started = time.monotonic()
    with tenant_scope(workspace), connection.cursor() as cursor:
        # The ledger behind the opt-in flags: one grant per opted-in channel, at sign-up.
        for channel, flag in (("email", "email_opt_in"), ("sms", "sms_opt_in")):
            result.consent_events += _insert_consent(cursor, ConsentEvent, workspace.pk, channel, flag)
    _timed(result, "consent", started, result.consent_events, echo)

    if analyze:
        started = time.monotonic()
        with connection.cursor() as cursor:
            for model in (Customer, Order, OrderLine, ConsentEvent):
                cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
        _timed(result, "analyze", started, echo=None)
        echo(f"  {'analyze':<15} {'':>12}      in {result.timings['analyze']:7.1f} s")
    rows = {"customers": result.customers, "orders": result.orders, "order lines": result.order_lines,
            "consent": result.consent_events}
    echo("Time per phase:")
    for phase, seconds in result.timings.items():
        rate = f" ({rows[phase] / max(seconds, 1e-9):,.0f} rows/s)" if rows.get(phase) else ""
        echo(f"  {phase:<15} {seconds:8.1f} s{rate}")
    echo(f"Loaded in {result.total_seconds:.1f} s: {result.customers:,} customers, {result.orders:,} orders, "
         f"{result.order_lines:,} order lines, {result.consent_events:,} consent events, "
         f"revenue {result.revenue_cents / 100:,.2f} EUR")
    return result


def _insert_consent(cursor, model, tenant_id: int, channel: str, flag: str) -> int:
    return insert_from(
        cursor, model, f"customers_customer c WHERE c.tenant_id = %(tenant)s AND c.{flag}",
        {"tenant_id": "%(tenant)s", "customer_id": "c.id", "channel": f"'{channel}'", "action": "'grant'",
         "occurred_at": "c.first_seen_at", "method": "'import'", "source": "'bench/generate.py'",
         "recorded_at": "c.first_seen_at"},
        {"tenant": tenant_id},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workspace", default="bench", help="Slug of the workspace to fill (created when missing).")
    parser.add_argument("--lines", action="store_true", help="Also load order lines (about 1.7 per order).")
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=None,
                        help="The day the histories end (YYYY-MM-DD; default today). Same day, same rows.")
    parser.add_argument("--replace", action="store_true", help="Delete the workspace's data first.")
    parser.add_argument("--no-analyze", dest="analyze", action="store_false")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm_site.settings")
    import django

    django.setup()
    try:
        generate(customers=args.customers, orders=args.orders, seed=args.seed, workspace_slug=args.workspace,
                 lines=args.lines, as_of=args.as_of, replace=args.replace, analyze=args.analyze)
    except GenerateError as error:
        print(f"generate.py: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
