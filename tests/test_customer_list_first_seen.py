"""The customer list with a lifecycle filter sorts by the metrics row's copy of first seen. Whatever moves a
customer's first seen (an edit, the admin, an API batch, a CSV import) shows its true date at once and queues an
incremental refresh, after which the customer stands in their new place; and the pages walk the metrics indexes.
"""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from crm_site.tenancy import tenant_scope
from customers import listing
from customers.forms import CustomerListForm
from customers.models import Customer, Order
from lifecycle import tasks
from lifecycle.models import CustomerMetrics
from lifecycle.runs import refresh_workspace
from tests.api_helpers import api, api_key  # noqa: F401 (fixtures)
from tests.test_customer_pages import list_url, names_in
from tests.test_import_pipeline import run_csv

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)
NOW = timezone.now().replace(microsecond=0)
INCREMENTAL = tasks.refresh_customers_job.name
SPENT = {"spend_min": "1"}  # every customer below has spent: a lifecycle filter that matches them all


def shoppers(workspace, *first_seen_days_ago):
    """Customers C-0, C-1… first seen that many days ago, each with one order, refreshed (bulk: nothing queued)."""
    with tenant_scope(workspace):
        people = Customer.objects.bulk_create([
            Customer(tenant=workspace, external_id=f"C-{n}", first_name=f"Shopper{n}", last_name="Doe",
                     first_seen_at=NOW - days * DAY) for n, days in enumerate(first_seen_days_ago)])
        Order.objects.bulk_create([
            Order(tenant=workspace, customer=person, external_id=f"O-{person.external_id}",
                  total=Decimal("20.00"), placed_at=NOW - 10 * DAY) for person in people])
    refresh_workspace(workspace)
    return people


def first_seen_shown(response, person) -> str:
    """The "First seen" cell of the person's row, as the marketer reads it."""
    html = response.content.decode()
    row = re.search(rf'<tr>(?:(?!</tr>).)*customers/{person.pk}/(?:(?!</tr>).)*</tr>', html, re.S).group(0)
    return re.findall(r"\d{4}-\d{2}-\d{2}", row)[-1]


@pytest.mark.redis
def test_an_edited_first_seen_shows_at_once_and_moves_the_customer_after_the_queued_refresh(
    marketer_client, workspace, broker_queues, django_capture_on_commit_callbacks
):
    newest, middle, oldest = shoppers(workspace, 100, 200, 300)
    assert names_in(marketer_client.get(list_url(**SPENT))) == ["Shopper0 Doe", "Shopper1 Doe", "Shopper2 Doe"]

    signed_up = NOW - 50 * DAY  # the admin, or an edit, corrects the oldest one's sign-up date
    with tenant_scope(workspace), django_capture_on_commit_callbacks(execute=True):
        oldest.first_seen_at = signed_up
        oldest.save()
    assert broker_queues.tasks("lifecycle") == [(INCREMENTAL, [workspace.pk, [oldest.pk]])]

    before_refresh = marketer_client.get(list_url(**SPENT))
    assert first_seen_shown(before_refresh, oldest) == listing.format_date(signed_up)  # never a wrong date

    tasks.refresh_customers_job.apply(args=(workspace.pk, [oldest.pk])).get()
    assert names_in(marketer_client.get(list_url(**SPENT))) == ["Shopper2 Doe", "Shopper0 Doe", "Shopper1 Doe"]


@pytest.mark.redis
def test_a_save_that_leaves_first_seen_alone_queues_nothing(workspace, broker_queues,
                                                            django_capture_on_commit_callbacks):
    (person,) = shoppers(workspace, 100)
    with tenant_scope(workspace), django_capture_on_commit_callbacks(execute=True):
        person.first_name = "Renamed"
        person.save()
    assert broker_queues.tasks("lifecycle") == []


@pytest.mark.redis
def test_an_api_batch_that_moves_first_seen_queues_a_refresh_of_those_customers(
    api, workspace, broker_queues, django_capture_on_commit_callbacks
):
    moved, kept = shoppers(workspace, 100, 200)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("customers/batch", {"customers": [
            {"external_id": "C-0", "first_seen_at": (NOW - 400 * DAY).isoformat()},
            {"external_id": "C-1", "first_name": "Renamed"},
        ]})
    assert response.status_code == 200, response.content
    assert broker_queues.tasks("lifecycle") == [(INCREMENTAL, [workspace.pk, [moved.pk]])]


@pytest.mark.redis
def test_a_csv_import_that_moves_first_seen_back_queues_a_refresh_of_those_customers(
    workspace, broker_queues, django_capture_on_commit_callbacks
):
    moved, kept = shoppers(workspace, 100, 200)
    earlier, later = (NOW - 400 * DAY).date().isoformat(), (NOW - 10 * DAY).date().isoformat()
    with django_capture_on_commit_callbacks(execute=True):
        run = run_csv(workspace, "customers", f"id,first seen\nC-0,{earlier}\nC-1,{later}\n",
                      mapping={"id": "external_id", "first seen": "first_seen_at"})
    assert run.status == "imported", run.errors
    # The import only ever moves first seen back: the later date leaves C-1 as it was.
    assert broker_queues.tasks("lifecycle") == [(INCREMENTAL, [workspace.pk, [moved.pk]])]


@pytest.mark.postgres
def test_lifecycle_filters_sorted_by_first_seen_walk_the_metrics_indexes(workspace):
    shoppers(workspace, *range(0, 600, 2))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE customers_customer")
        cursor.execute("ANALYZE lifecycle_customermetrics")
    sort, descending = listing.find_sort("-first_seen")
    with tenant_scope(workspace), connection.cursor() as cursor:
        stage = CustomerMetrics.objects.values_list("stage", flat=True).first()
        cursor.execute("SET LOCAL enable_sort = off")  # a small table: show the walk the planner has
        for params in ({"stage": stage}, SPENT):
            values = CustomerListForm(params).values()
            walked = listing.walked_sort(sort, values)
            assert walked.fields[0] == "metrics__first_seen_at"
            segment = listing._segments(listing.filter_customers(Customer.objects.all(), values), walked)[0]
            plan = listing._keyed(segment, descending)[:50].explain()
            # (tenant, stage, first_seen_at, customer) or (tenant, first_seen_at, customer), walked backwards.
            assert re.search(r"Index Scan Backward using metrics_(stage_)?first_seen", plan), plan
            assert "Sort" not in plan and "customer_first_seen_order" not in plan, plan
