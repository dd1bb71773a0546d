"""The customer list with lifecycle filters shows exactly the customers a plain reading of the data gives, in the
order of the chosen sort, page after page (keyset "Next" links), whichever plan the database picks for it."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from crm_site.tenancy import tenant_scope
from customers import listing
from customers.models import Customer
from lifecycle.models import CustomerMetrics
from tests.test_customer_pages import link, list_url, names_in

pytestmark = pytest.mark.django_db

NOW = timezone.now().replace(microsecond=0)
STAGES = ["active", "at_risk", "lapsed", "onboarding", "prospect"]
SORTS = ["-first_seen", "first_seen", "name", "-name", "-spend", "spend", "-last_order", "last_order"]
FILTERS = {
    "stage at risk": ({"stage": "at_risk"}, lambda c, m: m is not None and m.stage == "at_risk"),
    "spend 20 to 40": ({"spend_min": "20", "spend_max": "40"},
                       lambda c, m: m is not None and Decimal("20") <= m.revenue <= Decimal("40")),
    "lapsed, spend from 10": ({"stage": "lapsed", "spend_min": "10"},
                              lambda c, m: m is not None and m.stage == "lapsed" and m.revenue >= 10),
    "last order 3 to 9 days ago, e-mail opted in": (
        {"last_order_min": (NOW - dt.timedelta(days=9)).date().isoformat(),
         "last_order_max": (NOW - dt.timedelta(days=3)).date().isoformat(), "email_consent": "yes"},
        lambda c, m: c.email_opt_in and m is not None and m.last_order_at is not None
        and (NOW - dt.timedelta(days=9)).date() <= timezone.localdate(m.last_order_at) <= (NOW - dt.timedelta(days=3)).date()),
}


@pytest.fixture
def population(workspace):
    """60 customers with many ties (first seen, names, spend, last order); 50 with metrics (with the copy of first
    seen a lifecycle refresh writes), 10 without."""
    with tenant_scope(workspace):
        customers = Customer.objects.bulk_create([
            Customer(tenant=workspace, first_name=f"F{n:02d}", last_name=["smith", "jones", "brown"][n % 3],
                     email_opt_in=n % 2 == 0, first_seen_at=NOW - dt.timedelta(days=n % 7))
            for n in range(60)
        ])
        metrics = CustomerMetrics.objects.bulk_create([
            CustomerMetrics(tenant=workspace, customer=customer, first_seen_at=customer.first_seen_at,
                            stage=STAGES[n % 5 if n % 3 else 1],
                            revenue=Decimal(n % 6 * 10),
                            last_order_at=None if n % 8 == 0 else NOW - dt.timedelta(days=n % 11, hours=6))
            for n, customer in enumerate(customers[:50])
        ])
    return [(customer, next((row for row in metrics if row.customer_id == customer.pk), None))
            for customer in customers]


def expected_order(population, matches, sort):
    """The names in the sort's order, read from the Python objects (NULLs and missing metrics last, by id)."""
    rows = [(customer, metrics) for customer, metrics in population if matches(customer, metrics)]
    descending = sort.startswith("-")
    key_name = sort.lstrip("-")
    if key_name in ("first_seen", "name"):
        keys = {"first_seen": lambda c, m: (c.first_seen_at, c.pk),
                "name": lambda c, m: (c.last_name.lower(), c.first_name.lower(), c.pk)}[key_name]
        ordered = sorted(rows, key=lambda row: keys(*row), reverse=descending)
    else:
        field = {"spend": "revenue", "last_order": "last_order_at"}[key_name]
        with_value = [row for row in rows if row[1] is not None and getattr(row[1], field) is not None]
        without = [row for row in rows if row not in with_value]
        ordered = (sorted(with_value, key=lambda row: (getattr(row[1], field), row[0].pk), reverse=descending)
                   + sorted(without, key=lambda row: row[0].pk, reverse=descending))
    return [str(customer) for customer, _ in ordered]


@pytest.mark.parametrize("window", [listing.WALK_WINDOW, 5], ids=["whole walk", "walk window of 5 rows"])
@pytest.mark.parametrize("cap", [listing.EXACT_COUNT_CAP, 3], ids=["exact count", "count past the cap"])
@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("filter_name", list(FILTERS))
def test_filtered_list_pages_match_a_plain_evaluation_in_every_sort(
    marketer_client, population, monkeypatch, django_assert_max_num_queries, filter_name, sort, cap, window
):
    params, matches = FILTERS[filter_name]
    monkeypatch.setattr(listing, "PAGE_SIZE", 4)
    monkeypatch.setattr(listing, "EXACT_COUNT_CAP", cap)
    # A small window makes the walks by first seen of the spend and last-order filters stop short and sort the
    # rest of the matches, as a rare match among the newest of a million customers does.
    monkeypatch.setattr(listing, "WALK_WINDOW", window)
    expected = expected_order(population, matches, sort)
    assert len(expected) >= 5, "the filter should span more than one page"

    marketer_client.get(list_url())  # warm the session

    def pages_along(url, rel):
        """The names of each page from ``url`` following the ``rel`` link to its end, and that end's URL."""
        pages = []
        while True:
            # The request's own queries, the count (and estimate) and the page's walks: plain, at most two
            # queries; with a walk window, its end, the walk within it, the sort memory and the sort of the rest
            # (twice for a "Previous" that ends on the first page). Never one per row.
            with django_assert_max_num_queries(18):
                response = marketer_client.get(url)
            page = names_in(response)
            assert 0 < len(page) <= 4
            pages.append(page)
            assert sum(map(len, pages)) <= len(expected), "the pages repeat customers"
            href = link(response, rel)
            if href is None:
                return pages, url
            url = list_url() + href

    forward, last_url = pages_along(list_url(sort=sort, **params), "next")
    assert [name for page in forward for name in page] == expected
    # "Previous" from the last page shows the same pages again, in reverse, back to the first.
    backward, _ = pages_along(last_url, "prev")
    assert backward == list(reversed(forward))
