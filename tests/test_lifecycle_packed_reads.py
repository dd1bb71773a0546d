"""The lifecycle refresh's reads on PostgreSQL with committed data, as the nightly refresh sees it: orders read as
page ranges on two connections sharing one snapshot give the same metrics as one statement, and a second
refresh (its stored rows read on their own connection meanwhile) writes only the customer who changed.

These tests commit (``transaction=True``): the other connections cannot see a test's open transaction, and
the refresh then reads everything on its own connection, as the other lifecycle tests exercise.
"""

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest
from django.db import connection, transaction
from django.utils import timezone

from crm_site.tenancy import tenant_scope
from customers.models import Customer, Order
from lifecycle import packed_reads, runs
from lifecycle.metrics import load_customer_orders
from lifecycle.models import CustomerMetrics, LifecycleEvent
from lifecycle.runs import refresh_workspace, workspace_policy

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="page ranges and snapshots are PostgreSQL's"),
]
DAY = dt.timedelta(days=1)


def history(workspace, external_id, *days_ago, total="40.00", zone=""):
    now = timezone.now()
    with tenant_scope(workspace):
        person = Customer.objects.create(external_id=external_id, email=f"{external_id.lower()}@example.org",
                                         time_zone=zone, first_seen_at=now - 900 * DAY)
        Order.objects.bulk_create([
            Order(tenant=workspace, customer=person, external_id=f"{external_id}-{days}", placed_at=now - days * DAY,
                  total=Decimal(total)) for days in days_ago])
    return person


@pytest.fixture
def reads_in_snapshot(monkeypatch):
    """Count the statements run on other connections inside an exported snapshot."""
    statements = []
    original = packed_reads._read_in_snapshot

    def counted(connection_params, snapshot, batch, params, *events, **deliver):
        statements.extend(batch)
        return original(connection_params, snapshot, batch, params, *events, **deliver)

    monkeypatch.setattr(packed_reads, "_read_in_snapshot", counted)
    return statements


def frame_read_with(workspace, now, *settings):
    with tenant_scope(workspace), connection.cursor() as cursor:
        for setting in settings:
            cursor.execute(f"SET LOCAL {setting}")
        return load_customer_orders(workspace.pk, now, workspace.time_zone)


def test_orders_read_in_page_ranges_on_two_connections_match_one_statement(workspace, monkeypatch,
                                                                             reads_in_snapshot):
    monkeypatch.setattr(packed_reads, "PAGES_PER_STATEMENT", 1)  # every heap page its own statement
    people = [history(workspace, f"C{number}", *range(10 + number, 400, 30 + number), zone=zone)
              for number, zone in enumerate(["", "America/Los_Angeles", "Asia/Tokyo"] * 20)]
    history(workspace, "PROSPECT")
    now = timezone.now()

    in_ranges = frame_read_with(workspace, now, "enable_indexscan = off", "enable_bitmapscan = off")
    assert len(reads_in_snapshot) > 2  # several page ranges, on other connections
    reads_in_snapshot.clear()
    one_statement = frame_read_with(workspace, now, "enable_seqscan = off")
    assert reads_in_snapshot == []

    pd.testing.assert_frame_equal(in_ranges, one_statement, check_exact=True)
    first = in_ranges.set_index("customer_id").loc[people[0].pk]
    assert (first.order_count, first.purchase_days, first.usual_gap_days) == (13, 13, 30.0)
    with tenant_scope(workspace):
        assert in_ranges["order_count"].sum() == Order.objects.count()


def test_a_reader_connection_that_fails_fails_the_read_instead_of_hanging_it(workspace, monkeypatch):
    monkeypatch.setattr(packed_reads, "PAGES_PER_STATEMENT", 1)
    for number in range(20):
        history(workspace, f"C{number}", *range(10 + number, 400, 30 + number))
    original = packed_reads._fetch_packed
    fetched = []

    def lost_after_one(cursor, statement, params):
        if "ctid" in statement and fetched:
            raise RuntimeError("server closed the connection unexpectedly")
        fetched.append(statement)
        return original(cursor, statement, params)

    monkeypatch.setattr(packed_reads, "_fetch_packed", lost_after_one)
    with pytest.raises(RuntimeError, match="closed the connection"):
        frame_read_with(workspace, timezone.now(), "enable_indexscan = off", "enable_bitmapscan = off")


def test_a_second_refresh_writes_only_the_customer_whose_orders_changed(workspace, reads_in_snapshot):
    regular = history(workspace, "REGULAR", 150, 120, 90, 60, 30)
    steady = [history(workspace, f"STEADY{number}", 200 + number, 100 + number) for number in range(5)]
    first = refresh_workspace(workspace)
    assert first.rows_written == 6
    with tenant_scope(workspace):
        Order.objects.create(tenant=workspace, customer=regular, external_id="REGULAR-today",
                             placed_at=timezone.now() - dt.timedelta(hours=1), total=Decimal("40.00"))

    second = refresh_workspace(workspace)

    assert any("lifecycle_customermetrics" in statement for statement in reads_in_snapshot)  # read meanwhile
    assert second.rows_written == 1
    with tenant_scope(workspace):
        assert CustomerMetrics.objects.get(customer=regular).order_count == 6
        assert CustomerMetrics.objects.filter(customer__in=steady, order_count=2).count() == 5
        assert set(LifecycleEvent.objects.filter(occurred_at__gt=first.run.finished_at)
                   .values_list("customer_id", flat=True)) <= {regular.pk}


def test_a_refresh_inside_a_callers_transaction_reads_on_its_own_connection(workspace, reads_in_snapshot):
    # A savepoint cannot export its snapshot: the refresh then reads everything on this connection.
    person = history(workspace, "NESTED", 90, 60, 30)
    with tenant_scope(workspace):
        workspace_policy()  # created beforehand, so the refresh itself writes nothing before it reads
    with transaction.atomic():
        result = refresh_workspace(workspace)
    assert (result.rows_written, reads_in_snapshot) == (1, [])
    with tenant_scope(workspace):
        assert CustomerMetrics.objects.get(customer=person).order_count == 3


def test_the_comparison_with_the_stored_rows_marks_exactly_the_rows_that_differ_or_are_missing(workspace,
                                                                                             monkeypatch):
    regulars = [history(workspace, f"R{number}", *range(20 + number, 400, 45)) for number in range(4)]
    prospect = history(workspace, "PROSPECT")  # no orders: P(alive) and the scores are NULL, and stay equal
    refresh_workspace(workspace)
    classified = []
    original = runs.write_back
    monkeypatch.setattr(runs, "write_back", lambda tenant_id, frame, **options: (
        classified.append(frame), original(tenant_id, frame, **options))[1])
    refresh_workspace(workspace)
    frame = classified[0]
    with tenant_scope(workspace):
        stored = packed_reads.read_packed(runs._STORED_QUERY, {"tenant": workspace.pk}, runs._STORED_RECORD,
                                          table="lifecycle_customermetrics")

        def changed(frame, stored):
            marks = runs.differs_from_stored(workspace.pk, frame, stored)
            return set(frame["customer_id"][marks])

        assert changed(frame, stored) == set()
        assert changed(frame.sample(frac=1, random_state=7), stored) == set()  # in any row order
        drifted = stored.copy()
        drifted["usual_gap_days"][drifted["customer_id"] == regulars[1].pk] += 0.5
        drifted["is_heavy_user"][drifted["customer_id"] == regulars[2].pk] ^= True
        # A prediction counts as changed only beyond its tolerance (predicted CLV, packed in cents: 10 %).
        for person, factor in ((regulars[0], 105), (regulars[3], 150)):
            clv = drifted["predicted_clv_12m"][drifted["customer_id"] == person.pk]
            assert clv > 10_00
            drifted["predicted_clv_12m"][drifted["customer_id"] == person.pk] = clv * factor // 100
        assert changed(frame, drifted) == {regulars[1].pk, regulars[2].pk, regulars[3].pk}
        missing = stored[stored["customer_id"] != prospect.pk]
        assert changed(frame.sample(frac=1, random_state=3), missing) == {prospect.pk}
