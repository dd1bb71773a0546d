"""The demo data of `make run`: realistic shop histories, consent that matches its ledger, and a re-runnable seed."""

import datetime as dt
from decimal import Decimal

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db.models import Count, F, Max, Min, OuterRef, Subquery, Sum

from crm_site.demo_data import TEA_CATALOGUE, revenue_share_of_top, seed_workspace
from crm_site.models import Membership, Role, Workspace
from crm_site.tenancy import tenant_scope
from customers.models import ConsentEvent, Customer, Interaction, Order, OrderLine, Product, Suppression
from lifecycle.models import CustomerMetrics

AS_OF = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def seeded(workspace):
    summary = seed_workspace(workspace, customers=400, seed=11, as_of=AS_OF)
    return workspace, summary


def _days_ago(moment):
    return (AS_OF - moment).days


@pytest.mark.django_db
def test_seeded_workspace_holds_customers_products_orders_and_lines(seeded):
    workspace, summary = seeded
    with tenant_scope(workspace):
        assert Customer.objects.count() == summary.customers == 400
        assert Order.objects.count() == summary.orders > 2 * 400
        assert OrderLine.objects.count() == summary.order_lines >= summary.orders
        categories = set(Product.objects.values_list("category", flat=True))
        assert {"Coffee beans", "Equipment", "Subscriptions", "Accessories"} <= categories
        # Every order's total is the sum of its lines.
        totals = Order.objects.annotate(lines_total=Sum("lines__line_total")).values_list("total", "lines_total")
        # Compared in cents: SQLite sums decimals as floating point.
        assert all(round(total * 100) == round(lines_total * 100) for total, lines_total in totals)
        placed = Order.objects.aggregate(first=Min("placed_at"), last=Max("placed_at"))
        assert 650 <= _days_ago(placed["first"]) <= 731
        assert placed["last"] <= AS_OF
        assert not Order.objects.filter(placed_at__lt=F("customer__first_seen_at")).exists()


@pytest.mark.django_db
def test_histories_mix_prospects_one_time_repeat_new_and_lapsing_buyers(seeded):
    workspace, _ = seeded
    with tenant_scope(workspace):
        per_customer = Customer.objects.annotate(
            orders_placed=Count("orders"), first_order=Min("orders__placed_at"), last_order=Max("orders__placed_at")
        )
        prospects = per_customer.filter(orders_placed=0).count()
        one_time = per_customer.filter(orders_placed=1).count()
        repeat = per_customer.filter(orders_placed__gte=3).count()
        new_this_month = per_customer.filter(first_order__gte=AS_OF - dt.timedelta(days=30)).count()
        quiet_for_half_a_year = per_customer.filter(
            orders_placed__gte=2, last_order__lt=AS_OF - dt.timedelta(days=180)
        ).count()
    assert 0.03 * 400 < prospects < 0.15 * 400
    assert one_time > 0.2 * 400
    assert repeat > 0.3 * 400
    assert new_this_month > 5
    assert quiet_for_half_a_year > 20


@pytest.mark.django_db
def test_revenue_is_concentrated_in_the_top_fifth_of_buyers(seeded):
    workspace, summary = seeded
    with tenant_scope(workspace):
        revenue = np.array(
            [float(v) for v in Customer.objects.annotate(r=Sum("orders__total")).filter(r__gt=0).values_list("r", flat=True)]
        )
        assert round(Order.objects.aggregate(s=Sum("total"))["s"], 2) == summary.revenue
    share = revenue_share_of_top(revenue)
    assert 0.6 <= share <= 0.9
    assert share == pytest.approx(summary.top_fifth_revenue_share)


@pytest.mark.django_db
def test_opt_in_flags_follow_the_latest_consent_event_of_each_channel(seeded):
    workspace, _ = seeded
    with tenant_scope(workspace):
        for channel, flag in (("email", "email_opt_in"), ("sms", "sms_opt_in")):
            latest = ConsentEvent.objects.filter(customer=OuterRef("pk"), channel=channel).order_by("-occurred_at", "-id")
            customers = Customer.objects.annotate(latest_action=Subquery(latest.values("action")[:1]))
            assert not customers.filter(**{flag: True}).exclude(latest_action="grant").exists()
            assert not customers.filter(**{flag: False}, latest_action="grant").exists()
        total = Customer.objects.count()
        email_share = Customer.objects.filter(email_opt_in=True).count() / total
        sms_share = Customer.objects.filter(sms_opt_in=True).count() / total
        withdrawals = ConsentEvent.objects.filter(action=ConsentEvent.Action.WITHDRAW).count()
        confirmed = ConsentEvent.objects.filter(method="double_opt_in", confirmed_at__isnull=False).count()
        reasons = set(Suppression.objects.values_list("reason", flat=True))
        no_email_without_opt_in = not Customer.objects.filter(email="", email_opt_in=True).exists()
    assert 0.5 < email_share < 0.7
    assert 0.15 < sms_share < 0.35
    assert withdrawals > 0 and confirmed > 0
    assert {"unsubscribed", "bounced"} <= reasons
    assert no_email_without_opt_in


@pytest.mark.django_db
def test_timeline_has_a_purchase_for_every_order_and_a_line_for_every_consent_change(seeded):
    workspace, summary = seeded
    with tenant_scope(workspace):
        assert Interaction.objects.filter(kind=Interaction.Kind.PURCHASE).count() == summary.orders
        assert Interaction.objects.filter(kind=Interaction.Kind.CONSENT).count() == summary.consent_events
        assert Interaction.objects.filter(kind=Interaction.Kind.NOTE).exists()


@pytest.mark.django_db
def test_same_seed_gives_the_same_data_in_another_workspace(seeded, other_workspace):
    workspace, summary = seeded
    again = seed_workspace(other_workspace, customers=400, seed=11, as_of=AS_OF)
    assert (again.orders, again.order_lines, again.revenue, again.consent_events) == (
        summary.orders, summary.order_lines, summary.revenue, summary.consent_events
    )
    different = seed_workspace(Workspace.objects.create(name="Third", slug="third"), customers=400, seed=12, as_of=AS_OF)
    assert different.revenue != summary.revenue


@pytest.mark.django_db
def test_other_catalogues_seed_their_own_products(workspace):
    seed_workspace(workspace, customers=50, seed=3, as_of=AS_OF, catalogue=TEA_CATALOGUE)
    with tenant_scope(workspace):
        assert Product.objects.count() == len(TEA_CATALOGUE)
        assert Product.objects.filter(category="Green tea").exists()


# --- The command -------------------------------------------------------------------------------------


def _counts(slug):
    with tenant_scope(Workspace.objects.get(slug=slug)):
        return Customer.objects.count(), Order.objects.count(), round(Order.objects.aggregate(s=Sum("total"))["s"], 2)


@pytest.mark.django_db
def test_seed_demo_creates_two_workspaces_and_the_demo_users(client):
    call_command("seed_demo", customers=160, verbosity=0)
    assert set(Workspace.objects.values_list("slug", "name")) == {
        ("demo", "Demo Coffee Roasters"), ("tea", "Northwind Tea House")
    }
    demo = get_user_model().objects.get(username="demo")
    assert demo.is_superuser and demo.is_staff and demo.check_password("rapport-demo")
    assert set(Membership.objects.filter(user=demo).values_list("workspace__slug", "role")) == {
        ("demo", Role.OWNER), ("tea", Role.OWNER)
    }
    assert Membership.objects.get(user__username="viewer").role == Role.VIEWER
    customers, _, _ = _counts("demo")
    small, _, _ = _counts("tea")
    assert customers == 160 and 10 <= small < customers
    # The demo opens with lifecycle stages already computed, at-risk and lapsed customers among them.
    with tenant_scope(Workspace.objects.get(slug="demo")):
        stages = set(CustomerMetrics.objects.values_list("stage", flat=True))
    assert {"active", "at_risk", "lapsed", "prospect"} <= stages

    # Signing in as demo shows the seeded numbers on the dashboard.
    assert client.login(username="demo", password="rapport-demo")
    page = client.get("/w/demo/")
    assert page.status_code == 200
    assert '<div class="fs-3" data-metric="customers">160</div>' in page.content.decode()


@pytest.mark.django_db
def test_seed_demo_twice_does_not_duplicate_and_reset_rebuilds_the_same_data():
    call_command("seed_demo", customers=120, verbosity=0)
    first = _counts("demo")
    call_command("seed_demo", customers=120, verbosity=0)
    assert _counts("demo") == first
    assert get_user_model().objects.filter(username__in=["demo", "viewer"]).count() == 2
    assert Membership.objects.filter(user__username="demo").count() == 2

    old_id = Workspace.objects.get(slug="demo").pk
    call_command("seed_demo", customers=120, reset=True, verbosity=0)
    rebuilt = Workspace.objects.get(slug="demo")
    assert rebuilt.pk != old_id
    assert _counts("demo") == first
    assert isinstance(first[2], Decimal)
    # Nothing of the old workspace is left behind.
    with tenant_scope(old_id):
        assert Customer.objects.count() == 0


@pytest.mark.django_db
def test_seed_demo_rejects_a_silly_customer_count():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="at least 10"):
        call_command("seed_demo", customers=3, verbosity=0)
