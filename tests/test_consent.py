"""The consent ledger: append-only events decide the current state; suppressions keep addresses quiet."""

import datetime as dt

import pytest
from django.utils import timezone

from crm_site.tenancy import tenant_scope
from customers import consent
from customers.models import ConsentEvent, Customer, Interaction, Suppression
from tests.factories import CustomerFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def _flags(customer_id):
    return Customer.objects.values_list("email_opt_in", "sms_opt_in").get(pk=customer_id)


def test_grant_opts_the_customer_in_and_writes_the_timeline(workspace):
    customer = CustomerFactory(tenant=workspace, email="ann@example.org")
    with tenant_scope(workspace):
        event = consent.record_consent(customer, "email", "grant", "form", wording_version="v2")
        assert customer.email_opt_in is True
        assert _flags(customer.pk) == (True, False)
        interaction = Interaction.objects.get(customer=customer)
        assert interaction.kind == "consent"
        assert interaction.summary == "E-mail consent granted via form"
        assert interaction.details["event_id"] == event.pk


def test_the_latest_event_decides_not_the_latest_recorded(workspace):
    customer = CustomerFactory(tenant=workspace)
    now = timezone.now()
    with tenant_scope(workspace):
        consent.record_consent(customer, "email", "grant", "api", occurred_at=now)
        # A late-arriving older withdrawal does not override the newer grant.
        consent.record_consent(customer, "email", "withdraw", "import", occurred_at=now - dt.timedelta(days=3))
        state = consent.current_consent(customer)[("email", "marketing")]
        assert state.granted and state.method == "api"
        assert _flags(customer.pk) == (True, False)
        assert consent.current_consent(customer)[("sms", "marketing")].granted is False


def test_ledger_rows_cannot_be_changed(workspace):
    customer = CustomerFactory(tenant=workspace)
    with tenant_scope(workspace):
        event = consent.record_consent(customer, "email", "grant", "form")
        event.action = "withdraw"
        with pytest.raises(ValueError, match="append-only"):
            event.save()


def test_sms_consent_needs_a_phone_number(workspace):
    customer = CustomerFactory(tenant=workspace, phone="")
    with tenant_scope(workspace):
        consent.record_consent(customer, "sms", "grant", "form")
        assert customer.sms_opt_in is False
        assert consent.has_consent(customer, "sms") is False
        Customer.objects.filter(pk=customer.pk).update(phone="+4930123456")
        customer.refresh_from_db()
        assert consent.recompute_derived_consent([customer.pk]) == 1
        assert _flags(customer.pk) == (False, True)
        assert consent.has_consent(customer, "sms") is True


def test_unsubscribe_withdraws_and_suppresses(workspace):
    customer = CustomerFactory(tenant=workspace, email="Ann@Example.org")
    with tenant_scope(workspace):
        consent.record_consent(customer, "email", "grant", "form")
        consent.unsubscribe(customer, "email", method="one_click")
        assert customer.email_opt_in is False
        assert consent.is_suppressed("email", " ann@example.ORG ")
        assert Suppression.objects.get().reason == "unsubscribed"
        assert consent.has_consent(customer, "email") is False


def test_a_plain_grant_never_lifts_a_suppression(workspace):
    customer = CustomerFactory(tenant=workspace, email="bob@example.org")
    with tenant_scope(workspace):
        consent.unsubscribe(customer, "email")
        consent.record_consent(customer, "email", "grant", "import")
        # Recorded in the ledger (what the source said), but the customer stays opted out.
        assert consent.current_consent(customer)[("email", "marketing")].granted is True
        assert customer.email_opt_in is False
        assert consent.has_consent(customer, "email") is False


def test_confirmed_double_opt_in_lifts_an_unsubscribe_but_not_a_bounce(workspace):
    unsubscribed = CustomerFactory(tenant=workspace, email="u@example.org")
    bounced = CustomerFactory(tenant=workspace, email="b@example.org")
    with tenant_scope(workspace):
        consent.unsubscribe(unsubscribed, "email")
        consent.suppress("email", "b@example.org", "bounced")
        for customer in (unsubscribed, bounced):
            consent.record_consent(customer, "email", "grant", "double_opt_in", confirmed_at=timezone.now())
        assert unsubscribed.email_opt_in is True
        assert bounced.email_opt_in is False
        assert not consent.is_suppressed("email", "u@example.org")
        assert consent.is_suppressed("email", "b@example.org")
        assert consent.lift_suppression("email", "b@example.org") is False
        assert consent.lift_suppression("email", "b@example.org", by_admin=True) is True
        assert _flags(bounced.pk) == (True, False)


def test_suppressing_upgrades_to_the_stronger_reason_and_opts_out_at_once(workspace):
    customer = CustomerFactory(tenant=workspace, email="c@example.org")
    with tenant_scope(workspace):
        consent.record_consent(customer, "email", "grant", "form")
        consent.suppress("email", "c@example.org", "unsubscribed")
        consent.suppress("email", "C@example.org", "complained")
        consent.suppress("email", "c@example.org", "unsubscribed")
        assert list(Suppression.objects.values_list("reason", flat=True)) == ["complained"]
        assert _flags(customer.pk) == (False, False)


def test_phone_suppression_ignores_formatting(workspace):
    with tenant_scope(workspace):
        consent.suppress("sms", "+49 (30) 123-456", "manual")
        assert consent.is_suppressed("sms", "+4930123456")
        assert consent.is_suppressed("sms", "004930123456")


def test_set_based_recompute_updates_only_changed_rows(workspace, django_assert_max_num_queries):
    customers = [CustomerFactory(tenant=workspace) for _ in range(5)]
    with tenant_scope(workspace):
        # Events written in bulk (as an import does) leave the derived flags stale until recomputed.
        ConsentEvent.objects.bulk_create(
            [ConsentEvent(tenant=workspace, customer=c, channel="email", action="grant", method="import") for c in customers[:3]]
        )
        consent.suppress("email", customers[2].email, "bounced")
        with django_assert_max_num_queries(1):
            assert consent.recompute_derived_consent() == 2
        assert consent.recompute_derived_consent() == 0
        opted_in = set(Customer.objects.filter(email_opt_in=True).values_list("pk", flat=True))
        assert opted_in == {customers[0].pk, customers[1].pk}


def test_recompute_stays_in_the_workspace(workspace, other_workspace):
    mine = CustomerFactory(tenant=workspace)
    theirs = CustomerFactory(tenant=other_workspace)
    with tenant_scope(other_workspace):
        ConsentEvent.objects.create(customer=theirs, channel="email", action="grant", method="import")
    with tenant_scope(workspace):
        ConsentEvent.objects.create(customer=mine, channel="email", action="grant", method="import")
        assert consent.recompute_derived_consent() == 1
    with tenant_scope(other_workspace):
        assert _flags(theirs.pk) == (False, False)


def test_suppression_in_one_workspace_does_not_silence_another(workspace, other_workspace):
    with tenant_scope(workspace):
        consent.suppress("email", "shared@example.org", "unsubscribed")
    with tenant_scope(other_workspace):
        assert not consent.is_suppressed("email", "shared@example.org")


def test_unknown_channel_or_action_is_refused(workspace):
    customer = CustomerFactory(tenant=workspace)
    with tenant_scope(workspace):
        with pytest.raises(consent.ConsentError):
            consent.record_consent(customer, "fax", "grant", "form")
        with pytest.raises(consent.ConsentError):
            consent.record_consent(customer, "email", "maybe", "form")


def test_a_pause_stops_sending_without_touching_consent(workspace):
    customer = CustomerFactory(tenant=workspace)
    other = CustomerFactory(tenant=workspace)
    with tenant_scope(workspace):
        for person in (customer, other):
            consent.record_consent(person, "email", "grant", "form")
        consent.pause_messages(customer, timezone.now() + dt.timedelta(weeks=4))
        assert consent.has_consent(customer, "email") is False
        assert customer.email_opt_in is True
        assert list(consent.reachable_customers("email")) == [other]
        assert consent.is_paused(customer, at=timezone.now() + dt.timedelta(weeks=5)) is False
        assert consent.resume_messages(customer) is True
        assert consent.has_consent(customer, "email") is True
        assert set(consent.reachable_customers("email")) == {customer, other}


def test_bulk_append_writes_events_timeline_and_flags_in_a_few_queries(workspace, django_assert_max_num_queries):
    customers = [CustomerFactory(tenant=workspace) for _ in range(20)]
    with tenant_scope(workspace):
        consent.suppress("email", customers[0].email, "erased")
        events = [ConsentEvent(customer=c, channel="email", action="grant", method="import") for c in customers]
        with django_assert_max_num_queries(3):
            consent.append_consent_events(events)
        assert Customer.objects.filter(email_opt_in=True).count() == 19
        assert Interaction.objects.filter(kind="consent").count() == 20
        assert consent.latest_actions([customers[1].pk]) == {(customers[1].pk, "email"): "grant"}
