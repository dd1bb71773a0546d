"""Data subject rights: a complete JSON export, and an erasure that keeps figures but never re-subscribes."""

import json
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from crm_site.models import Role
from crm_site.tenancy import tenant_scope
from customers import consent, gdpr, importing
from customers.models import ConsentEvent, Customer, ImportRun, Interaction, Order, Suppression
from tests.api_helpers import api, api_key  # noqa: F401 (fixtures)
from tests.factories import CustomerFactory, OrderFactory, OrderLineFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def ann(workspace):
    customer = CustomerFactory(tenant=workspace, external_id="C-1", email="ann@example.org", phone="+4930123456",
                               first_name="Ann", last_name="Lee", attributes={"shoe_size": 38})
    order = OrderFactory(tenant=workspace, customer=customer, external_id="O-1", total=Decimal("49.90"))
    OrderLineFactory(tenant=workspace, order=order, sku="BEANS", unit_price=Decimal("49.90"),
                     line_total=Decimal("49.90"))
    with tenant_scope(workspace):
        consent.record_consent(customer, "email", "grant", "double_opt_in", ip_address="203.0.113.9",
                               user_agent="Firefox", source="newsletter form", confirmed_at=timezone.now())
        consent.record_consent(customer, "sms", "grant", "checkout")
        Interaction.objects.create(customer=customer, kind="note", summary="Prefers decaf; lives in Berlin")
        Interaction.objects.create(customer=customer, kind="click", summary="Clicked 'Spring sale' for Ann",
                                   details={"campaign_id": 7, "url": "https://shop.example/?u=ann"})
    return customer


def test_export_contains_profile_orders_consent_timeline_and_suppressions(workspace, ann):
    with tenant_scope(workspace):
        consent.suppress("sms", ann.phone, "complained")
        document = gdpr.export_customer(ann)
    json.dumps(document)  # serialisable as is
    assert document["profile"]["email"] == "ann@example.org"
    assert document["profile"]["attributes"] == {"shoe_size": 38}
    assert document["orders"][0]["total"] == "49.90"
    assert document["orders"][0]["lines"][0]["sku"] == "BEANS"
    history = document["consent_history"]
    assert [(e["channel"], e["action"]) for e in history] == [("email", "grant"), ("sms", "grant")]
    assert history[0]["ip_address"] == "203.0.113.9"
    assert document["consent"]["email:marketing"]["granted"] is True
    assert {item["kind"] for item in document["timeline"]} == {"consent", "note", "click"}
    assert document["suppressions"] == [{"channel": "sms", "reason": "complained",
                                         "since": document["suppressions"][0]["since"]}]


def test_erase_removes_personal_data_and_keeps_the_figures(workspace, ann):
    with tenant_scope(workspace):
        gdpr.erase_customer(ann, requested_by="dpo@acme.example")
        customer = Customer.objects.get(pk=ann.pk)
        assert customer.erased_at is not None
        assert (customer.email, customer.phone, customer.first_name, customer.last_name, customer.external_id) == (
            "", "", "", "", "")
        assert customer.attributes == {}
        assert (customer.email_opt_in, customer.sms_opt_in) == (False, False)
        # Orders stay for revenue figures.
        order = Order.objects.get()
        assert (order.customer_id, order.total) == (ann.pk, Decimal("49.90"))
        # The ledger keeps what was decided and when, not who or where.
        events = list(ConsentEvent.objects.values_list("action", "ip_address", "user_agent", "source"))
        assert events == [("grant", None, "", ""), ("grant", None, "", "")]
        texts = " ".join(Interaction.objects.values_list("summary", flat=True))
        assert "Berlin" not in texts and "Ann" not in texts
        click = Interaction.objects.get(kind="click")
        assert click.details == {"campaign_id": 7}
        assert not Interaction.objects.filter(kind="note").exists()
        assert set(Suppression.objects.values_list("channel", "reason")) == {("email", "erased"), ("sms", "erased")}
        # The suppression is a keyed hash: the address itself is nowhere.
        assert "ann@example.org" not in json.dumps(list(Suppression.objects.values()), default=str)
        # Erasing again changes nothing.
        assert gdpr.erase_customer(customer).erased_at == customer.erased_at


def test_erased_address_pushed_again_through_the_api_stays_unsubscribed(api, workspace, ann):
    assert api.post("customers/C-1/erase").status_code == 200
    response = api.post("customers", {"external_id": "C-1", "email": "ANN@example.org", "phone": "+49 30 123456",
                                      "consent": {"email": "grant", "sms": "grant"}})
    assert response.status_code == 201  # a new, separate customer: the old one has no id any more
    body = response.json()["customer"]
    assert (body["email_opt_in"], body["sms_opt_in"]) == (False, False)
    assert api.get("customers/C-1").json()["suppressed"] == {"email": "erased", "sms": "erased"}
    with tenant_scope(workspace):
        assert consent.has_consent(Customer.objects.get(external_id="C-1"), "email") is False


def test_erased_address_imported_again_from_csv_with_consent_stays_unsubscribed(workspace, ann):
    with tenant_scope(workspace):
        gdpr.erase_customer(ann)

    def run_csv(kind, content):
        with tenant_scope(workspace):
            run = importing.store_upload(SimpleUploadedFile("again.csv", content.encode(), content_type="text/csv"),
                                         kind)
            run.mode = ImportRun.Mode.SKIP
            run.options = {"default_region": "DE", "day_first": True}
            run.save()
            importing.run_import(run)
            run.refresh_from_db()
        return run

    customers = run_csv(ImportRun.Kind.CUSTOMERS, "external_id,email\nC-1,ann@example.org\n")
    assert customers.created_count == 1, customers.errors
    grants = run_csv(ImportRun.Kind.CONSENT, "customer_id,channel,subscribed\nC-1,email,yes\n")
    assert grants.created_count == 1, grants.errors
    with tenant_scope(workspace):
        again = Customer.objects.get(external_id="C-1")
        assert again.email_opt_in is False
        assert consent.is_suppressed("email", "ann@example.org")


def test_export_through_the_api(api, ann):
    response = api.get("customers/C-1/export")
    assert response.status_code == 200
    assert response.json()["profile"]["last_name"] == "Lee"


# --- Staff pages ------------------------------------------------------------------------------------------


def test_marketer_downloads_the_export_from_the_customer_page(member_client, workspace, ann):
    client = member_client(Role.MARKETER)
    response = client.get(f"/w/acme/customers/{ann.pk}/data.json")
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    assert json.loads(response.content)["profile"]["email"] == "ann@example.org"
    viewer = member_client(Role.VIEWER)
    assert viewer.get(f"/w/acme/customers/{ann.pk}/data.json").status_code == 403


def test_admin_erases_after_typing_the_confirmation(member_client, workspace, ann):
    admin = member_client(Role.ADMIN)
    page = admin.get(f"/w/acme/customers/{ann.pk}/erase/")
    assert "cannot be undone" in page.content.decode()
    refused = admin.post(f"/w/acme/customers/{ann.pk}/erase/", {"confirm": "yes"})
    assert refused.status_code == 400
    assert "Type ERASE to confirm." in refused.content.decode()
    with tenant_scope(workspace):
        assert Customer.objects.get(pk=ann.pk).erased_at is None
    done = admin.post(f"/w/acme/customers/{ann.pk}/erase/", {"confirm": "erase"})
    assert done.status_code == 302
    with tenant_scope(workspace):
        assert Customer.objects.get(pk=ann.pk).erased_at is not None


def test_marketers_cannot_erase(member_client, workspace, ann):
    marketer = member_client(Role.MARKETER)
    assert marketer.post(f"/w/acme/customers/{ann.pk}/erase/", {"confirm": "ERASE"}).status_code == 403
    with tenant_scope(workspace):
        assert Customer.objects.get(pk=ann.pk).erased_at is None
