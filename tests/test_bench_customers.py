"""The customer benchmarks (bench/import.py, bench/pages.py) still run, on tiny data, and print their ratios."""

import importlib
import re

import pytest
from django.db import connection

from bench.generate import generate
from crm_site.models import Workspace
from crm_site.tenancy import tenant_scope
from customers.models import Customer, Order

import_bench = importlib.import_module("bench.import")  # "import" is a keyword: no plain import statement
pages_bench = importlib.import_module("bench.pages")

pytestmark = pytest.mark.postgres


@pytest.mark.django_db
def test_import_benchmark_imports_the_file_and_prints_its_speed_beside_the_raw_copy():
    printed = []
    result = import_bench.benchmark_import(orders=400, customers=60, workspace_slug="smoke-import", rounds=1,
                                           keep=True, echo=printed.append)
    output = "\n".join(printed)
    assert re.search(r"Raw COPY into the orders tables: +\d+\.\d+ s +[\d,]+ rows/s", output), output
    assert re.search(r"Import \(the whole pipeline\): +\d+\.\d+ s +[\d,]+ rows/s +\(400 orders, [\d,]+ lines\)", output)
    assert re.search(r"Ratio import / raw COPY speed: \d+\.\d\d \((meets|MISSES) the target of at least 1/3\)", output)
    assert result.created == 400 and result.order_lines == result.rows > 400
    # Every load went into its own workspace: the raw load and the import each hold the whole file.
    for slug in ("smoke-import-raw-1", "smoke-import-1"):
        with tenant_scope(Workspace.objects.get(slug=slug)):
            assert Order.objects.count() == 400
            assert Customer.objects.count() == 60


@pytest.mark.django_db
def test_import_benchmark_deletes_its_workspaces_unless_asked_to_keep_them():
    import_bench.benchmark_import(orders=50, customers=10, workspace_slug="smoke-gone", echo=None)
    assert not Workspace.objects.filter(slug__startswith="smoke-gone").exists()


@pytest.mark.django_db(transaction=True)  # the web server is another process: it sees committed rows only
def test_pages_benchmark_requests_the_list_from_a_real_server_and_prints_page_and_sql_times():
    generate(customers=300, orders=2500, seed=3, workspace_slug="smoke-pages", analyze=False, echo=None)
    printed = []
    timings = pages_bench.benchmark_pages(
        workspace_slug="smoke-pages", requests=3, deep_pages=2, echo=printed.append,
        urls=[("first page", {}), ("search: e-mail", {"q": "customer7@example.com"}), ("sort: name", {"sort": "name"})],
    )
    output = "\n".join(printed)
    assert "Customer list of workspace 'smoke-pages' (300 customers), 3 requests per URL" in output
    assert re.search(r"search: e-mail +\d+\.\d +\d+\.\d +\d+\.\d +\d+\.\d +\d+\.\d +\d+ +1 customer match", output), output
    assert re.search(r"median ratio page/SQL: \d+\.\d", output)
    assert [timing.label for timing in timings] == ["first page", "search: e-mail", "sort: name", "page 3 (newest first)",
                                                    "page 3 by name", "page 3 by spend"]
    assert all(len(timing.page_ms) == len(timing.sql_ms) == 3 for timing in timings)
    # The deep pages really are further down: their URLs carry the keyset token of page 2's last row.
    assert all("after=" in timing.url for timing in timings[3:])


@pytest.mark.django_db
def test_pages_benchmark_warns_when_the_planner_statistics_miss_a_bulk_load():
    generate(customers=1200, orders=6000, seed=5, workspace_slug="smoke-stats", analyze=False, echo=None)
    workspace = Workspace.objects.get(slug="smoke-stats")
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'customers_customer'")
        if cursor.fetchone()[0] >= 600:
            pytest.skip("customers_customer was analyzed with rows in it earlier in this test database")
    assert any("customers_customer" in warning and "1,200" in warning
               for warning in pages_bench.stale_statistics(workspace))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE customers_customer")
    assert not [warning for warning in pages_bench.stale_statistics(workspace) if "customers_customer" in warning]
