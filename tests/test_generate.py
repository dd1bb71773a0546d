"""bench/generate.py: exact sizes, the same rows for the same seed, every row inside its workspace."""

import datetime as dt

import pytest
from django.db import connection, transaction
from django.db.models import Count, F, Sum

from bench.generate import GenerateError, binary_copy_payload, generate
from crm_site.models import Workspace
from crm_site.tenancy import platform_scope, tenant_scope
from customers.models import ConsentEvent, Customer, Order, OrderLine

AS_OF = dt.date(2026, 3, 1)


def _load(slug, seed=7, **options):
    sizes = {"customers": 1500, "orders": 12_000} | options
    return generate(seed=seed, workspace_slug=slug, as_of=AS_OF, analyze=False, chunk_customers=600,
                    echo=None, **sizes)


def _fingerprint(workspace):
    with tenant_scope(workspace):
        orders = Order.objects.aggregate(n=Count("id"), revenue=Sum("total"), refunded=Sum("refunded_amount"))
        return {
            "customers": Customer.objects.count(),
            "email_opt_in": Customer.objects.filter(email_opt_in=True).count(),
            "orders": orders["n"], "revenue": orders["revenue"], "refunded": orders["refunded"],
            "lines": OrderLine.objects.aggregate(n=Count("id"), quantity=Sum("quantity")),
            "busiest": list(Order.objects.values("customer__external_id").annotate(n=Count("id"))
                            .order_by("-n", "customer__external_id")[:5].values_list("customer__external_id", "n")),
            "first_order": Order.objects.order_by("placed_at").values_list("external_id", "placed_at").first(),
        }


@pytest.mark.postgres
@pytest.mark.django_db
def test_generates_exactly_the_requested_customers_orders_and_lines():
    result = _load("bench", lines=True)
    workspace = Workspace.objects.get(slug="bench")
    with tenant_scope(workspace):
        assert Customer.objects.count() == result.customers == 1500
        assert Order.objects.count() == result.orders == 12_000
        assert OrderLine.objects.count() == result.order_lines > 12_000
        assert Order.objects.aggregate(s=Sum("total"))["s"] * 100 == result.revenue_cents
        # Order totals are the sums of their lines, and every order belongs to a loaded customer.
        with_lines = Order.objects.annotate(lines_total=Sum("lines__line_total"))
        assert not with_lines.exclude(total=F("lines_total")).exists()
        assert Order.objects.values("customer").distinct().count() > 1000
        # The ledger explains every opt-in flag.
        assert ConsentEvent.objects.count() == result.consent_events == (
            Customer.objects.filter(email_opt_in=True).count() + Customer.objects.filter(sms_opt_in=True).count()
        )
        last_order = Order.objects.order_by("-placed_at").values_list("placed_at", flat=True).first()
        assert last_order < dt.datetime.combine(AS_OF, dt.time(), dt.UTC)
    assert set(result.timings) >= {"customers", "orders", "order lines"}


@pytest.mark.postgres
@pytest.mark.django_db
def test_rows_belong_to_the_workspace_and_row_level_security_hides_them_elsewhere(workspace):
    _load("bench", customers=300, orders=2000, lines=True)
    bench = Workspace.objects.get(slug="bench")
    with platform_scope():
        assert set(Customer.objects.values_list("tenant_id", flat=True)) == {bench.pk}
        assert set(Order.objects.values_list("tenant_id", flat=True)) == {bench.pk}
        assert set(OrderLine.objects.values_list("tenant_id", flat=True)) == {bench.pk}
    with tenant_scope(workspace), connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM customers_order")
        assert cursor.fetchone()[0] == 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM customers_customer")  # no tenant set: RLS shows nothing
        assert cursor.fetchone()[0] == 0


@pytest.mark.postgres
@pytest.mark.django_db
def test_same_seed_gives_the_same_data_and_another_seed_does_not():
    _load("first", lines=True)
    _load("second", lines=True)
    _load("third", seed=8, lines=True)
    first, second, third = (_fingerprint(Workspace.objects.get(slug=slug)) for slug in ("first", "second", "third"))
    assert first == second
    assert third["orders"] == first["orders"]  # the sizes are exact whatever the seed
    assert third["revenue"] != first["revenue"]


@pytest.mark.postgres
@pytest.mark.django_db
def test_revenue_is_concentrated_like_a_real_shop():
    _load("bench", customers=2000, orders=20_000)
    with tenant_scope(Workspace.objects.get(slug="bench")):
        revenue = Customer.objects.annotate(r=Sum("orders__total")).filter(r__gt=0).values_list("r", flat=True)
        per_customer = sorted((float(r) for r in revenue), reverse=True)
    top_fifth = sum(per_customer[: len(per_customer) // 5]) / sum(per_customer)
    assert 0.6 < top_fifth < 0.9


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_workspace_with_customers_is_only_replaced_when_asked():
    _load("bench", customers=100, orders=600)
    with pytest.raises(GenerateError, match="already holds 100 customers"):
        _load("bench", customers=100, orders=600)
    _load("bench", customers=120, orders=700, replace=True)
    with tenant_scope(Workspace.objects.get(slug="bench")):
        assert (Customer.objects.count(), Order.objects.count()) == (120, 700)
    assert Workspace.objects.filter(slug="bench").count() == 1


@pytest.mark.postgres
@pytest.mark.django_db
def test_impossible_sizes_are_refused_with_a_reason():
    with pytest.raises(GenerateError, match="too few"):
        _load("bench", customers=1000, orders=10)


@pytest.mark.django_db
def test_refuses_to_run_off_postgresql(settings):
    settings.IS_POSTGRES = False
    with pytest.raises(GenerateError, match="PostgreSQL only"):
        _load("bench")


def test_binary_copy_payload_has_the_postgresql_header_rows_and_trailer():
    import numpy as np

    payload = binary_copy_payload(
        [("id", "bigint"), ("flag", "boolean")], {"id": np.array([1, 2]), "flag": np.array([True, False])}
    )
    assert payload.startswith(b"PGCOPY\n\xff\r\n\x00")
    assert payload.endswith(b"\xff\xff")
    # Per row: field count (2) + 2 × length (4) + 8-byte id + 1-byte flag.
    assert len(payload) == 19 + 2 * (2 + 4 + 8 + 4 + 1) + 2

