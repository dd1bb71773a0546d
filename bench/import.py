#!/usr/bin/env python
"""Benchmark the CSV import of orders with lines against a raw ``COPY`` of the same file, in the same run.

    .venv/bin/python bench/import.py --orders 1000000 --customers 100000

What is measured
    The file: one row per order line, as shops export them (order id, customer id, placed at, order total,
    currency, channel, status, SKU, quantity, unit price; about 1.7 lines per order), written once to a
    temporary folder. Every load goes into a workspace of its own holding the same customers (the
    C000000001… external ids the file names) and the demo catalogue, and no orders; the workspaces are
    deleted at the end, so the ``bench`` workspace of bench/generate.py is never touched.

    The import: the real pipeline of customers/importing.py, without the Celery hop (the task's body runs
    in this process, in the workspace and outside a transaction, as the worker runs it): ``store_upload``
    (the copy into private storage, encoding and delimiter detection, line count), the mapping
    ``guess_mapping`` proposes, then ``run_import`` in "import the good rows" mode: every cell parsed and
    validated in Python, the rows streamed with ``COPY`` into a staging table, the checks over the whole file
    in SQL (lines naming another customer than their order, unknown customers), and one transaction that
    upserts the orders by external id (``INSERT … ON CONFLICT``) with their totals, writes their lines,
    queues the lifecycle refresh of their customers (into a throw-away broker folder) and commits under
    row-level security. Rows per second count the file's data rows (order lines).

    The raw COPY into the same tables (the baseline of the ratio): PostgreSQL's own
    ``COPY … FROM STDIN (FORMAT csv, HEADER)`` of the same file's bytes, streamed from this process over the
    same connection to the same database, into a temporary table of the file's columns typed as in the
    orders tables, then the two statements without which the rows are not in the orders table at all:
    ``INSERT INTO customers_order … SELECT DISTINCT ON (order id)`` joined to the customers by external id,
    and ``INSERT INTO customers_orderline … SELECT`` joined to the new orders; one transaction, committed,
    with the same ``work_mem`` as the import's. PostgreSQL refuses ``COPY FROM`` straight into
    ``customers_order`` (row-level security), and the file could not go there anyway: it names customers by
    external id and repeats each order on each of its lines. The raw load does *not* detect the encoding,
    validate with messages by line and column, normalise dates or amounts written in other conventions,
    check that an order's lines agree, handle orders already there (upsert, replace their lines), report bad
    rows or queue anything.

    For context it also prints the bare ``COPY`` into the plain temporary table, which writes no index, no
    foreign key and no row-level security check: the import's speed as a fraction of that is printed too.

Each round does the bare COPY, the raw load and the import (``--rounds``, default 2); the fastest of each kind
is compared, so a moment of load from others on the shared machine favours neither side. The ratio is
(raw load time) / (import time), the import's speed as a fraction of the raw COPY's into the same tables; the
target is at least 1/3. docs/benchmarks.md holds the results.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HEADER = ["Order ID", "Customer ID", "Placed At", "Total", "Currency", "Channel", "Status", "SKU", "Quantity",
          "Unit Price"]
RAW_COLUMNS = [("order_id", "text"), ("customer_id", "text"), ("placed_at", "timestamptz"),
               ("total", "numeric(12,2)"), ("currency", "text"), ("channel", "text"), ("status", "text"),
               ("sku", "text"), ("quantity", "integer"), ("unit_price", "numeric(12,2)")]
TARGET_RATIO = 1 / 3


@dataclass
class ImportBenchmark:
    """The figures of one run (seconds; rows are the file's data rows). Each kind of load ran once per round;
    the fastest of each is compared, so a moment of load on the shared machine favours neither side."""

    orders: int
    rows: int
    file_bytes: int
    raw_load_seconds: list[float] = field(default_factory=list)  # COPY + INSERT into the orders tables
    copy_only_seconds: list[float] = field(default_factory=list)  # COPY into a plain table of the file's columns
    import_phases: list[dict[str, float]] = field(default_factory=list)  # one per round
    created: int = 0
    order_lines: int = 0

    @property
    def raw_seconds(self) -> float:
        return min(self.raw_load_seconds)

    @property
    def copy_seconds(self) -> float:
        return min(self.copy_only_seconds)

    @property
    def import_seconds(self) -> float:
        return min(sum(phases.values()) for phases in self.import_phases)

    @property
    def ratio(self) -> float:
        """The import's speed as a fraction of the raw COPY's into the same tables."""
        return self.raw_seconds / self.import_seconds


def write_orders_csv(path: Path, *, orders: int, customers: int, seed: int, as_of: dt.date) -> int:
    """Write a CSV of ``orders`` orders (one row per line) of the customers C000000001…; return its data rows.

    Customer ids are those bench/generate.py gives; SKUs and prices come from the demo catalogue.
    """
    from crm_site import demo_data

    rng = np.random.default_rng([seed, 3])
    catalogue = demo_data.COFFEE_CATALOGUE
    end = int(dt.datetime.combine(as_of, dt.time(), dt.UTC).timestamp())
    rows = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(HEADER)
        for first in range(0, orders, 200_000):
            count = min(200_000, orders - first)
            customer = rng.integers(1, customers + 1, size=count)
            placed = np.sort(end - rng.integers(60, 3 * 365 * 86_400, size=count))
            baskets = demo_data.fill_baskets(rng, rng.uniform(0.5, 2.0, size=count), catalogue)
            channel = demo_data.pick_weighted(rng, demo_data.ORDER_CHANNELS, count)
            fate = rng.random(count)
            status = np.select([fate < 0.01, fate < 0.025], [1, 2], 0)
            order_ids = [f"O{first + n + 1:010d}" for n in range(count)]
            customer_ids = [f"C{number:09d}" for number in customer.tolist()]
            moments = [dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
                       for second in placed.tolist()]
            totals = [f"{cents / 100:.2f}" for cents in baskets.order_total_cents.tolist()]
            channels = [demo_data.ORDER_CHANNELS[index][0] for index in channel.tolist()]
            statuses = [("placed", "cancelled", "refunded")[index] for index in status.tolist()]
            skus = [item.sku for item in catalogue]
            writer.writerows(
                (order_ids[o], customer_ids[o], moments[o], totals[o], "EUR", channels[o], statuses[o], skus[p],
                 q, f"{cents / 100:.2f}")
                for o, p, q, cents in zip(baskets.line_order.tolist(), baskets.product.tolist(),
                                          baskets.quantity.tolist(), baskets.unit_cents.tolist())
            )
            rows += len(baskets.line_order)
    return rows


def raw_copy(path: Path, workspace=None) -> float:
    """COPY the file into a fresh table of its columns and commit; return the seconds.

    With a ``workspace``, also move the rows into its orders and order lines with two INSERT … SELECT in the
    same transaction (the raw load into the same tables; see the module docstring).
    """
    from django.db import connection

    from crm_site.tenancy import tenant_scope
    from customers.importing import IMPORT_WORK_MEM

    started = time.perf_counter()
    with tenant_scope(workspace) if workspace else transaction_only(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL work_mem = '{IMPORT_WORK_MEM}'")  # as the import's checks and merge have
        cursor.execute(f"CREATE TEMPORARY TABLE bench_raw_orders ({', '.join(f'{n} {t}' for n, t in RAW_COLUMNS)}) "
                       "ON COMMIT DROP")
        with path.open("rb") as source, cursor.copy("COPY bench_raw_orders FROM STDIN (FORMAT csv, HEADER true)") as copy:
            while block := source.read(1 << 20):
                copy.write(block)
        if workspace is not None:
            tenant = {"tenant": workspace.pk}
            cursor.execute(
                "INSERT INTO customers_order (tenant_id, customer_id, external_id, placed_at, total, refunded_amount, "
                "currency, channel, status, created_at) SELECT DISTINCT ON (r.order_id) %(tenant)s, c.id, r.order_id, "
                "r.placed_at, r.total, 0, r.currency, r.channel, r.status, now() FROM bench_raw_orders r "
                "JOIN customers_customer c ON c.tenant_id = %(tenant)s AND c.external_id = r.customer_id "
                "ORDER BY r.order_id", tenant)
            cursor.execute(
                "INSERT INTO customers_orderline (tenant_id, order_id, product_id, sku, quantity, unit_price, line_total, "
                "returned_quantity) SELECT %(tenant)s, o.id, p.id, r.sku, r.quantity, r.unit_price, "
                "r.unit_price * r.quantity, 0 FROM bench_raw_orders r "
                "JOIN customers_order o ON o.tenant_id = %(tenant)s AND o.external_id = r.order_id "
                "LEFT JOIN customers_product p ON p.tenant_id = %(tenant)s AND p.sku = r.sku", tenant)
    seconds = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_raw_orders")  # gone at commit, unless inside a test's transaction
    return seconds


def transaction_only():
    from django.db import transaction

    return transaction.atomic()


PHASE_MARKS = (("Checking", "validate and stage"), ("Writing…", "checks"), ("Writing the error report", "merge"))


_task = None


def _worker_context_task():
    """Return a task that runs an import as the Celery task does: in the workspace, outside a transaction.

    It is called in this process, not queued (the Celery hop is not measured). Made once: Celery keeps the
    first task registered under a name.
    """
    global _task
    if _task is None:
        from crm_site.jobs import tenant_task
        from customers import importing

        def run_bench_import(run, progress):
            return importing.run_import(run, progress)

        _task = tenant_task(atomic=False)(run_bench_import)
    return _task


def import_file(path: Path, workspace) -> tuple[dict[str, float], object]:
    """Run the real import of the orders file into ``workspace``; return the seconds per phase and the run.

    The phases are told apart by the pipeline's own progress messages.
    """
    from django.core.files import File

    from crm_site.tenancy import tenant_scope
    from customers import importing
    from customers.models import ImportRun

    phases: dict[str, float] = {}
    started = time.perf_counter()
    with tenant_scope(workspace), path.open("rb") as source:
        run = importing.store_upload(File(source, name="orders-export.csv"), ImportRun.Kind.ORDERS)
        if problems := importing.validate_mapping(ImportRun.Kind.ORDERS, run.mapping, {}):
            raise RuntimeError(f"the proposed mapping {run.mapping} cannot be imported: {problems}")
        run.mode, run.options, run.status = ImportRun.Mode.SKIP, {"day_first": True}, ImportRun.Status.QUEUED
        run.save(update_fields=["mode", "options", "status"])
    phases["upload"] = time.perf_counter() - started

    marks = [("start", time.perf_counter())]

    def progress(rows: int, message: str) -> None:
        marks.append((message, time.perf_counter()))

    outcome = _worker_context_task()(workspace.pk, run, progress)
    marks.append(("end", time.perf_counter()))
    phase, since = "validate and stage", marks[0][1]
    for message, moment in marks:
        for prefix, ended in PHASE_MARKS:
            if message.startswith(prefix) and phase == ended:
                phases[phase] = moment - since
                phase, since = {"validate and stage": "checks", "checks": "merge", "merge": "error report"}[phase], moment
    phases[phase] = marks[-1][1] - since
    return phases, (run, outcome)


@contextmanager
def private_broker(folder: Path):
    """Send the tasks the import queues (the lifecycle refresh of its customers) to a throw-away folder.

    Queueing them is part of the import and is timed; running them is not, and no worker of the machine
    should pick up the refresh of a benchmark workspace that is deleted a minute later.
    """
    from kombu import pools

    from crm_site.celery import app

    def forget_connections():
        pools.reset()
        app._pool = None
        app.amqp._producer_pool = None

    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    saved = {key: app.conf.get(key) for key in ("broker_url", "task_always_eager", "broker_transport_options")}
    app.conf.update(broker_url="filesystem://", task_always_eager=False, broker_transport_options={
        "data_folder_in": str(folder / "queue"), "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"), "control_folder": str(folder / "control"),
    })
    forget_connections()
    try:
        yield
    finally:
        app.conf.update(saved)
        forget_connections()


def prepare_workspace(slug: str, customers: int):
    """(Re)build the benchmark's own workspace: the demo catalogue and customers C000000001…, no orders."""
    from django.db import connection

    from bench.generate import insert_from
    from crm_site import demo_data
    from crm_site.models import Workspace
    from crm_site.tenancy import tenant_scope
    from customers.models import Customer, Product

    if (existing := Workspace.objects.filter(slug=slug).first()) is not None:
        demo_data.delete_workspace(existing)
    workspace = Workspace.objects.create(name=f"Benchmark ({slug})", slug=slug)
    with tenant_scope(workspace), connection.cursor() as cursor:
        Product.objects.bulk_create(Product(sku=item.sku, name=item.name, category=item.category, price=item.price,
                                            tenant=workspace) for item in demo_data.COFFEE_CATALOGUE)
        insert_from(cursor, Customer, "generate_series(1, %(customers)s) AS s(number)", {
            "tenant_id": "%(tenant)s", "external_id": "'C' || lpad(s.number::text, 9, '0')",
            "email": "'import' || s.number || '@example.com'", "first_seen_at": "now() - interval '4 years'",
        }, {"tenant": workspace.pk, "customers": customers})
        cursor.execute("ANALYZE customers_customer")
    return workspace


def benchmark_import(*, orders: int, customers: int, seed: int = 42, workspace_slug: str = "bench-import",
                     rounds: int = 2, keep: bool = False, echo=print) -> ImportBenchmark:
    """Write the orders file, then ``rounds`` times: COPY it alone, load it raw, import it; print and return the figures.

    Each load goes into a workspace of its own with the same customers, so none finds another's orders.
    """
    from django.conf import settings

    from crm_site import demo_data

    if not settings.IS_POSTGRES:
        raise SystemExit("bench/import.py compares with PostgreSQL COPY: set DATABASE_URL=postgres://… (README.md)")
    echo = echo or (lambda *args: None)
    folder = Path(tempfile.mkdtemp(prefix="rapport-bench-import-"))
    media_root = settings.MEDIA_ROOT
    settings.MEDIA_ROOT = folder / "media"
    slugs = [slug for n in range(1, rounds + 1) for slug in (f"{workspace_slug}-raw-{n}", f"{workspace_slug}-{n}")]
    try:
        workspaces = [prepare_workspace(slug, customers) for slug in slugs]
        echo(f"Workspaces {', '.join(slugs)}: {customers:,} customers each, no orders")
        path = folder / "orders-export.csv"
        started = time.perf_counter()
        rows = write_orders_csv(path, orders=orders, customers=customers, seed=seed, as_of=dt.date(2026, 12, 1))
        result = ImportBenchmark(orders=orders, rows=rows, file_bytes=path.stat().st_size)
        echo(f"File: {orders:,} orders in {rows:,} rows (order lines), {result.file_bytes / 1e6:,.1f} MB, "
             f"written in {time.perf_counter() - started:.1f} s")
        for n in range(rounds):
            raw_workspace, import_workspace = workspaces[2 * n], workspaces[2 * n + 1]
            result.copy_only_seconds.append(raw_copy(path))
            echo(f"  round {n + 1}: COPY into a plain table         {result.copy_only_seconds[-1]:8.2f} s")
            result.raw_load_seconds.append(raw_copy(path, raw_workspace))
            echo(f"  round {n + 1}: raw COPY into the orders tables {result.raw_load_seconds[-1]:8.2f} s")
            with private_broker(folder / "broker"):
                phases, (run, outcome) = import_file(path, import_workspace)
            result.import_phases.append(phases)
            result.created, result.order_lines = outcome.created, outcome.details.get("order_lines", 0)
            if run.status != "imported" or result.created != orders or result.order_lines != rows:
                raise SystemExit(f"the import did not load the file: {run.status}, {result.created:,} orders "
                                 f"created, {result.order_lines:,} lines, errors {run.errors[:3]} {run.fatal_error}")
            echo(f"  round {n + 1}: import                          {sum(phases.values()):8.2f} s  ("
                 + ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in phases.items()) + ")")
        _report(result, echo)
    finally:
        settings.MEDIA_ROOT = media_root
        shutil.rmtree(folder, ignore_errors=True)
        if not keep:  # after the report: deleting millions of rows takes minutes
            from crm_site.models import Workspace

            for workspace in Workspace.objects.filter(slug__in=slugs):
                demo_data.delete_workspace(workspace)
    return result


def _report(result: ImportBenchmark, echo) -> None:
    def line(label, seconds):
        return f"{label:<38}{seconds:8.2f} s {result.rows / seconds:>11,.0f} rows/s"

    echo(line("Raw COPY into the orders tables:", result.raw_seconds))
    echo(line("Import (the whole pipeline):", result.import_seconds)
         + f"  ({result.created:,} orders, {result.order_lines:,} lines)")
    echo(line("COPY alone, into a plain table:", result.copy_seconds)
         + f"  (import at {result.copy_seconds / result.import_seconds:.3f} of it)")
    verdict = "meets" if result.ratio >= TARGET_RATIO else "MISSES"
    echo(f"Ratio import / raw COPY speed: {result.ratio:.2f} ({verdict} the target of at least 1/3)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workspace", default="bench-import", help="Slug of the benchmark's own workspace.")
    parser.add_argument("--rounds", type=int, default=2, help="Raw loads and imports, alternating (fastest kept).")
    parser.add_argument("--keep", action="store_true", help="Keep the benchmark's workspaces afterwards.")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm_site.settings")
    import django

    django.setup()
    result = benchmark_import(orders=args.orders, customers=args.customers, seed=args.seed,
                              workspace_slug=args.workspace, rounds=max(1, args.rounds), keep=args.keep)
    return 0 if result.ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
