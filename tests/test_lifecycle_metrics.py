"""Per-customer order aggregates as the refresh computes them, against a plain pandas evaluation of the rules.

On PostgreSQL the orders arrive in parts (page ranges read on several connections, in whatever order they
finish), and each part is added up as it arrives: the result must not depend on how the orders were split or
in which order the parts came. Purchase days are calendar days in the workspace's zone.
"""

import datetime as dt
import itertools
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_site.tenancy import tenant_scope
from customers.models import Order
from lifecycle.metrics import _ORDER_RECORD, FRAME_COLUMNS, PG_EPOCH_MICROSECONDS, OrderTotals
from tests.factories import CustomerFactory, OrderFactory

AS_OF = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
YEAR_AGO = AS_OF - dt.timedelta(days=365)
ZONE = "America/Los_Angeles"
MICROSECONDS_PER_HOUR = 3_600_000_000


def customers_frame(ids):
    return pd.DataFrame({
        "customer_id": np.array(sorted(ids), dtype=np.int64),
        "time_zone": pd.array([ZONE] * len(ids), dtype="string"),
        "signed_up_at": pd.DatetimeIndex([AS_OF - dt.timedelta(days=900)] * len(ids)).tz_convert("UTC"),
    })


def order_records(orders):
    """Records as the packed read delivers them: customer id, placed_at in PostgreSQL microseconds, net cents."""
    records = np.zeros(len(orders), dtype=_ORDER_RECORD.newbyteorder("="))
    for row, (customer_id, hours_before, cents) in enumerate(orders):
        placed_at = AS_OF - dt.timedelta(hours=hours_before)
        unix = (placed_at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
        records[row] = (customer_id, unix - PG_EPOCH_MICROSECONDS, cents)
    return records


def expected_frame(ids, orders):
    """The aggregates by their definitions, one customer at a time."""
    placed = pd.DataFrame(orders, columns=["customer_id", "hours_before", "cents"])
    placed["at"] = [AS_OF - dt.timedelta(hours=int(hours)) for hours in placed["hours_before"]]
    placed["day"] = [moment.astimezone(pd.Timestamp(0).tz_localize(ZONE).tzinfo).date() for moment in placed["at"]]
    rows = []
    for customer_id in sorted(ids):
        mine = placed[placed["customer_id"] == customer_id]
        days = sorted(set(mine["day"]))
        gaps = [(later - earlier).days for earlier, later in itertools.pairwise(days)]
        recent = mine[mine["at"] > YEAR_AGO]
        rows.append({
            "customer_id": customer_id,
            "first_order_at": mine["at"].min() if len(mine) else pd.NaT,
            "last_order_at": mine["at"].max() if len(mine) else pd.NaT,
            "order_count": len(mine),
            "purchase_days": len(days),
            "revenue": mine["cents"].sum() / 100,
            "trailing_revenue_12m": recent["cents"].sum() / 100,
            "orders_12m": len(recent),
            "repeat_revenue": mine.loc[mine["day"] != (days[0] if days else None), "cents"].sum() / 100,
            "span_days": (days[-1] - days[0]).days if days else 0,
            "usual_gap_days": float(np.median(gaps)) if gaps else np.nan,
        })
    return pd.DataFrame(rows)


def totals_of(ids, parts):
    totals = OrderTotals(customers_frame(ids), YEAR_AGO, ZONE)
    for part in parts:
        totals.add(part)
    return totals.frame()


def assert_matches_definitions(frame, ids, orders):
    expected = expected_frame(ids, orders)
    columns = [column for column in FRAME_COLUMNS if column not in ("time_zone", "signed_up_at")]
    got = frame[columns].reset_index(drop=True)
    for column in ("first_order_at", "last_order_at"):
        got[column] = got[column].astype("datetime64[us, UTC]")
        expected[column] = pd.to_datetime(expected[column], utc=True).astype("datetime64[us, UTC]")
    pd.testing.assert_frame_equal(got, expected[columns], check_dtype=False, check_exact=True)


order = st.tuples(st.sampled_from([11, 12, 13, 14, 99]),  # 99 is not a customer of the workspace
                  st.integers(min_value=0, max_value=24 * 800),  # up to 800 days before AS_OF, by the hour
                  st.integers(min_value=0, max_value=50_000))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(orders=st.lists(order, max_size=40), cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=5),
       seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_the_aggregates_follow_their_definitions_however_the_orders_arrive_in_parts(orders, cuts, seed):
    ids = [11, 12, 13, 14, 15]  # 15 never orders
    records = order_records(orders)
    parts = np.split(records, sorted(min(cut, len(records)) for cut in cuts))
    np.random.default_rng(seed).shuffle(parts)

    in_parts = totals_of(ids, parts)

    assert_matches_definitions(in_parts, ids, [o for o in orders if o[0] in ids])
    pd.testing.assert_frame_equal(in_parts, totals_of(ids, [records]), check_exact=True)


def test_two_orders_on_the_first_day_in_different_parts_both_count_as_first_day_revenue():
    # 31 December 2024 at 9:00 and at 23:00 in Los Angeles (already 1 January in UTC), then 30 days on at 9:00.
    first_day = [(11, 59 * 24 + 19, 1000), (11, 59 * 24 + 5, 2500)]
    later = [(11, 29 * 24 + 19, 700)]
    frame = totals_of([11], [order_records(later + first_day[:1]), order_records(first_day[1:])])
    row = frame.iloc[0]
    assert (row.order_count, row.purchase_days, row.repeat_revenue, row.usual_gap_days) == (3, 2, 7.0, 30.0)


@pytest.mark.django_db
def test_an_order_keeps_its_net_amount_in_exact_cents_through_a_refund(workspace):
    with tenant_scope(workspace):
        person = CustomerFactory(tenant=workspace)
        placed = OrderFactory(tenant=workspace, customer=person, total=Decimal("1234567.89"),
                              refunded_amount=Decimal("0.29"))
        small = OrderFactory(tenant=workspace, customer=person, total=Decimal("0.07"))
        assert Order.objects.get(pk=placed.pk).net_cents == 123456760
        assert Order.objects.get(pk=small.pk).net_cents == 7

        placed.refunded_amount = Decimal("1234567.89")
        placed.status = Order.Status.REFUNDED
        placed.save()
        assert Order.objects.get(pk=placed.pk).net_cents == 0
