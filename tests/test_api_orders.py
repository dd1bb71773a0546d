"""Orders with lines through the API: idempotent by external id, lines replaced, products created."""

import datetime as dt
from decimal import Decimal

import pytest

from crm_site.tenancy import tenant_scope
from customers.models import Customer, Interaction, Order, OrderLine, Product
from tests.api_helpers import api, api_key  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

ORDER = {
    "external_id": "O-1",
    "customer_external_id": "C-1",
    "placed_at": "2024-05-31T14:05:00+02:00",
    "total": "49.90",
    "channel": "web",
    "lines": [
        {"sku": "BEANS-1KG", "name": "Beans 1 kg", "category": "Coffee", "quantity": 2, "unit_price": "19.95"},
        {"sku": "MUG", "unit_price": 10},
    ],
}


@pytest.fixture
def customer(api):
    assert api.post("customers", {"external_id": "C-1", "email": "ann@example.org",
                                  "first_seen_at": "2025-01-01T00:00:00Z"}).status_code == 201


def test_order_upsert_creates_order_lines_products_and_timeline(api, customer, workspace):
    response = api.post("orders", ORDER)
    assert response.status_code == 201
    order = response.json()["order"]
    assert order["total"] == "49.90"
    assert order["currency"] == "EUR"  # the workspace's
    assert [(line["sku"], line["quantity"], line["line_total"]) for line in order["lines"]] == [
        ("BEANS-1KG", 2, "39.90"), ("MUG", 1, "10.00")]
    with tenant_scope(workspace):
        assert dict(Product.objects.values_list("sku", "name")) == {"BEANS-1KG": "Beans 1 kg", "MUG": "MUG"}
        assert Interaction.objects.get(kind="purchase").summary == "Order O-1: 49.90 EUR"
        # An order older than the customer's first sighting moves it back.
        first_seen = Customer.objects.get().first_seen_at
        assert first_seen == dt.datetime(2024, 5, 31, 12, 5, tzinfo=dt.UTC)


def test_replaying_an_order_changes_nothing_and_an_update_replaces_lines(api, customer, workspace):
    api.post("orders", ORDER)
    again = api.post("orders", ORDER)
    assert (again.status_code, again.json()["status"]) == (200, "unchanged")
    refunded = {**ORDER, "refunded_amount": 10, "status": "partially_refunded",
                "lines": [{"sku": "BEANS-1KG", "quantity": 2, "unit_price": "19.95", "returned_quantity": 0},
                          {"sku": "MUG", "unit_price": 10, "returned_quantity": 1}]}
    updated = api.post("orders", refunded)
    assert updated.json()["status"] == "updated"
    with tenant_scope(workspace):
        order = Order.objects.get()
        assert (order.refunded_amount, order.status) == (Decimal("10.00"), "partially_refunded")
        assert list(OrderLine.objects.order_by("sku").values_list("sku", "returned_quantity")) == [
            ("BEANS-1KG", 0), ("MUG", 1)]
        assert Interaction.objects.filter(kind="purchase").count() == 1


def test_order_errors_are_specific(api, customer, workspace):
    bad = {**ORDER, "total": "abc", "placed_at": "31/05/2024", "currency": "EURO",
           "lines": [{"sku": "", "unit_price": -1, "quantity": 1.5}]}
    response = api.post("orders", bad)
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"total", "placed_at", "currency", "lines.0.sku", "lines.0.unit_price", "lines.0.quantity"}
    response = api.post("orders", {**ORDER, "customer_external_id": "C-404"})
    assert response.status_code == 400
    assert "upsert the customer first" in response.json()["error"]["fields"]["customer_external_id"][0]
    response = api.post("orders", {**ORDER, "refunded_amount": "60.00"})
    assert response.json()["error"]["fields"] == {"refunded_amount": ["is larger than the order total"]}
    with tenant_scope(workspace):
        assert not Order.objects.exists()


def test_order_batch_with_one_bad_record_writes_nothing(api, customer, workspace):
    orders = [{**ORDER, "external_id": f"O-{i}"} for i in range(30)]
    orders[7] = {**orders[7], "customer_external_id": "C-404"}
    response = api.post("orders/batch", {"orders": orders})
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["orders.7.customer_external_id"]
    with tenant_scope(workspace):
        assert not Order.objects.exists()
    orders[7]["customer_external_id"] = "C-1"
    response = api.post("orders/batch", {"orders": orders})
    assert response.json()["created"] == 30
    with tenant_scope(workspace):
        assert OrderLine.objects.count() == 60


def test_order_batch_takes_a_fixed_number_of_queries(api, customer, django_assert_max_num_queries):
    orders = [{**ORDER, "external_id": f"O-{i}"} for i in range(300)]
    with django_assert_max_num_queries(25):
        assert api.post("orders/batch", {"orders": orders}).json()["created"] == 300
    with django_assert_max_num_queries(25):
        assert api.post("orders/batch", {"orders": orders}).json()["unchanged"] == 300


def test_get_order(api, customer):
    api.post("orders", ORDER)
    body = api.get("orders/O-1").json()
    assert body["customer_external_id"] == "C-1"
    assert len(body["lines"]) == 2
    assert api.get("orders/O-2").status_code == 404


@pytest.mark.parametrize("total", ["1e400", 1e300, "99999999999", "12345678901234567890.5"])
def test_absurd_amounts_are_field_errors(api, customer, total):
    response = api.post("orders", {**ORDER, "total": total})
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["total"] == ["is too large (at most 9999999999.99)"]
