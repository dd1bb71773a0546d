"""Customers and consent through the API: idempotent upserts, field errors, workspaces kept apart."""

import pytest

from crm_site.tenancy import tenant_scope
from customers import consent
from customers.models import ConsentEvent, Customer, Interaction
from tests.api_helpers import api, api_key, other_api  # noqa: F401 (fixtures)
from tests.factories import CustomerFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def _customers(workspace):
    with tenant_scope(workspace):
        return list(Customer.objects.order_by("external_id").values("external_id", "email", "email_opt_in"))


def test_upsert_creates_then_reports_unchanged_then_updates(api, workspace):
    payload = {"external_id": "C-1", "email": " Ann@Example.ORG ", "phone": "+49 30 1234567",
               "first_name": "Ann", "attributes": {"tier": "gold"}}
    first = api.post("customers", payload)
    assert first.status_code == 201
    body = first.json()
    assert body["status"] == "created"
    assert body["customer"]["email"] == "ann@example.org"
    assert body["customer"]["phone"] == "+49301234567"

    again = api.post("customers", payload)
    assert again.status_code == 200
    assert again.json()["status"] == "unchanged"

    changed = api.post("customers", {"external_id": "C-1", "last_name": "Lee", "attributes": {"vip": True}})
    assert changed.json()["status"] == "updated"
    customer = changed.json()["customer"]
    # Absent fields keep their values; attributes are merged.
    assert (customer["first_name"], customer["last_name"]) == ("Ann", "Lee")
    assert customer["attributes"] == {"tier": "gold", "vip": True}
    assert len(_customers(workspace)) == 1


def test_field_errors_name_every_bad_field(api, workspace):
    response = api.post("customers", {"external_id": "", "email": "bob@", "phone": "12", "time_zone": "Mars/Base",
                                      "first_seen_at": "yesterday", "colour": "blue", "attributes": [1]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert set(error["fields"]) == {"external_id", "email", "phone", "time_zone", "first_seen_at", "colour",
                                    "attributes"}
    assert error["fields"]["colour"] == ["is not a known field"]
    assert "not a valid e-mail address" in error["fields"]["email"][0]
    assert _customers(workspace) == []


@pytest.mark.parametrize("body", [[], "text", 42, None, {"external_id": 7}, {"external_id": "x" * 101}])
def test_wrong_shapes_are_400_not_500(api, body):
    response = api.post("customers", body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_failed"


def test_consent_through_upsert_is_recorded_once(api, workspace):
    payload = {"external_id": "C-1", "email": "ann@example.org", "consent": {"email": "grant"}}
    assert api.post("customers", payload).json()["customer"]["email_opt_in"] is True
    assert api.post("customers", payload).json()["status"] == "unchanged"
    with tenant_scope(workspace):
        assert ConsentEvent.objects.count() == 1
        assert ConsentEvent.objects.get().method == "api"
    withdrawn = api.post("customers", {"external_id": "C-1", "consent": {"email": "withdraw"}})
    assert withdrawn.json()["status"] == "updated"
    assert withdrawn.json()["customer"]["email_opt_in"] is False


def test_email_of_another_customer_is_a_409_conflict(api, workspace):
    api.post("customers", {"external_id": "C-1", "email": "ann@example.org"})
    response = api.post("customers", {"external_id": "C-2", "email": "ANN@example.org"})
    assert response.status_code == 409
    assert "C-1" in response.json()["error"]["fields"]["email"][0]


def test_a_subscriber_without_id_is_adopted_by_the_shop_record(api, workspace):
    subscriber = CustomerFactory(tenant=workspace, external_id="", email="sub@example.org")
    response = api.post("customers", {"external_id": "C-9", "email": "sub@example.org", "first_name": "Sue"})
    assert response.status_code == 200
    assert response.json()["customer"]["id"] == subscriber.pk
    assert _customers(workspace) == [{"external_id": "C-9", "email": "sub@example.org", "email_opt_in": False}]


def test_batch_upsert_counts_and_is_all_or_nothing(api, workspace):
    batch = {"customers": [{"external_id": f"C-{i}", "email": f"c{i}@example.org"} for i in range(50)]}
    response = api.post("customers/batch", batch)
    assert response.status_code == 200
    assert response.json()["created"] == 50
    batch["customers"][3]["first_name"] = "Dee"
    batch["customers"].append({"external_id": "C-new"})
    response = api.post("customers/batch", batch)
    assert (response.json()["created"], response.json()["updated"], response.json()["unchanged"]) == (1, 1, 49)

    bad = {"customers": [{"external_id": "C-x1"}, {"external_id": "C-x2", "email": "nope"}, {"external_id": "C-x1"}]}
    response = api.post("customers/batch", bad)
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert "customers.1.email" in fields
    assert len(_customers(workspace)) == 51


def test_duplicate_ids_in_one_batch_are_rejected(api, workspace):
    response = api.post("customers/batch", {"customers": [{"external_id": "A"}, {"external_id": "A"}]})
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"customers.0.external_id", "customers.1.external_id"}
    assert _customers(workspace) == []


def test_batch_size_is_limited(api):
    response = api.post("customers/batch", {"customers": [{"external_id": str(i)} for i in range(1001)]})
    assert response.status_code == 400
    assert "more than 1000" in response.json()["error"]["fields"]["customers"][0]


def test_batch_of_many_customers_takes_a_fixed_number_of_queries(api, workspace, django_assert_max_num_queries):
    batch = {"customers": [{"external_id": f"C-{i}", "email": f"c{i}@example.org", "consent": {"email": "grant"}}
                           for i in range(200)]}
    with django_assert_max_num_queries(20):
        response = api.post("customers/batch", batch)
    assert response.json()["created"] == 200
    with tenant_scope(workspace):
        assert Customer.objects.filter(email_opt_in=True).count() == 200


def test_get_customer_shows_consent_and_suppression(api, workspace):
    api.post("customers", {"external_id": "C-1", "email": "ann@example.org", "consent": {"email": "grant"}})
    with tenant_scope(workspace):
        consent.suppress("email", "ann@example.org", "bounced")
    body = api.get("customers/C-1").json()
    assert body["email_opt_in"] is False
    assert body["suppressed"] == {"email": "bounced", "sms": None}
    email_state = next(s for s in body["consent"] if s["channel"] == "email")
    assert email_state["granted"] is True and email_state["method"] == "api"


def test_get_unknown_customer_is_404(api):
    response = api.get("customers/C-404")
    assert response.status_code == 404
    assert "C-404" in response.json()["error"]["message"]


def test_a_key_never_reaches_another_workspace(api, other_api, workspace, other_workspace):
    CustomerFactory(tenant=other_workspace, external_id="THEIRS", email="theirs@example.org")
    assert api.get("customers/THEIRS").status_code == 404
    assert api.get("customers/THEIRS/export").status_code == 404
    assert api.post("customers/THEIRS/erase").status_code == 404
    # Writing the same external id creates a separate customer in the key's own workspace.
    assert api.post("customers", {"external_id": "THEIRS", "email": "theirs@example.org"}).status_code == 201
    assert api.post("orders", {"external_id": "O-1", "customer_external_id": "THEIRS",
                               "placed_at": "2024-01-01T10:00:00Z", "total": 10}).status_code == 201
    with tenant_scope(other_workspace):
        assert Customer.objects.get().first_name != ""  # untouched
        from customers.models import Order

        assert Order.objects.count() == 0
    assert other_api.get("orders/O-1").status_code == 404


def test_consent_event_endpoint_is_idempotent_with_occurred_at(api, workspace):
    api.post("customers", {"external_id": "C-1", "phone": "+4930123456"})
    event = {"customer_external_id": "C-1", "channel": "sms", "action": "grant", "method": "checkout",
             "occurred_at": "2024-05-01T12:00:00+02:00", "ip_address": "203.0.113.7", "wording_version": "sms-v1"}
    first = api.post("consent-events", event)
    assert first.status_code == 201
    assert first.json()["customer"]["sms_opt_in"] is True
    second = api.post("consent-events", event)
    assert second.status_code == 200
    assert second.json()["status"] == "unchanged"
    with tenant_scope(workspace):
        stored = ConsentEvent.objects.get()
        assert (stored.ip_address, stored.wording_version, stored.method) == ("203.0.113.7", "sms-v1", "checkout")
        assert Interaction.objects.filter(kind="consent").count() == 1


def test_consent_event_errors(api):
    api.post("customers", {"external_id": "C-1"})
    response = api.post("consent-events", {"customer_external_id": "C-1", "channel": "fax", "action": "maybe",
                                           "ip_address": "999.1.1.1"})
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"channel", "action", "ip_address"}
    response = api.post("consent-events", {"customer_external_id": "C-404", "channel": "email", "action": "grant"})
    assert response.status_code == 400
    assert "C-404" in response.json()["error"]["fields"]["customer_external_id"][0]


def test_a_suppressed_address_pushed_with_consent_stays_opted_out(api, workspace):
    with tenant_scope(workspace):
        consent.suppress("email", "gone@example.org", "unsubscribed")
    response = api.post("customers", {"external_id": "C-1", "email": "gone@example.org", "consent": {"email": "grant"}})
    assert response.status_code == 201
    assert response.json()["customer"]["email_opt_in"] is False
    # Even an explicit grant event without a double opt-in confirmation leaves it suppressed.
    response = api.post("consent-events", {"customer_external_id": "C-1", "channel": "email", "action": "grant"})
    assert response.json()["customer"]["email_opt_in"] is False
    # A confirmed double opt-in is the customer asking again: it lifts an unsubscribe.
    response = api.post("consent-events", {"customer_external_id": "C-1", "channel": "email", "action": "grant",
                                           "method": "double_opt_in", "confirmed_at": "2024-06-01T10:00:00Z"})
    assert response.json()["customer"]["email_opt_in"] is True
