"""The audience API campaigns build on: members of dynamic and frozen segments, counts, rule errors."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from crm_site.tenancy import tenant_scope
from lifecycle.models import CustomerMetrics
from segments.audience import InvalidRules, compile_rules, count_members, segment_members, validate_rules
from segments.models import Segment, SegmentMember
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def metrics(customer, **values):
    with tenant_scope(customer.tenant_id):
        return CustomerMetrics.objects.create(customer=customer, tenant_id=customer.tenant_id, **values)


def group(*rules, op="and"):
    return {"op": op, "rules": list(rules)}


def cond(field, operator, value=None, **extra):
    return {"field": field, "operator": operator, "value": value, **extra}


def emails(queryset):
    return sorted(queryset.values_list("email", flat=True))


def test_dynamic_segment_members_are_the_customers_matching_its_rules(workspace):
    ann = CustomerFactory(tenant=workspace, email="ann@example.org")
    bob = CustomerFactory(tenant=workspace, email="bob@example.org")
    metrics(ann, stage="at_risk", revenue=Decimal("250"))
    metrics(bob, stage="active", revenue=Decimal("900"))
    with tenant_scope(workspace):
        segment = Segment.objects.create(name="Slipping big spenders", rules=group(
            cond("stage", "is", "at_risk"), cond("revenue", "gt", 100)))
        assert emails(segment_members(segment)) == ["ann@example.org"]
        assert count_members(segment) == 1


def test_frozen_segment_members_are_its_snapshot(workspace):
    ann = CustomerFactory(tenant=workspace, email="ann@example.org")
    CustomerFactory(tenant=workspace, email="bob@example.org")
    with tenant_scope(workspace):
        segment = Segment.objects.create(name="Fair visitors", kind=Segment.Kind.FROZEN, frozen_at=timezone.now())
        SegmentMember.objects.create(segment=segment, customer=ann, added_at=timezone.now())
        assert emails(segment_members(segment)) == ["ann@example.org"]
        assert count_members(segment) == 1


def test_erased_customers_are_never_members(workspace):
    CustomerFactory(tenant=workspace, email="gone@example.org", erased_at=timezone.now())
    with tenant_scope(workspace):
        segment = Segment.objects.create(name="Everyone", rules=group(cond("email", "contains", "@")))
        assert count_members(segment) == 0


def test_compile_rules_returns_a_q_campaigns_can_narrow(workspace):
    CustomerFactory(tenant=workspace, email="ann@example.org", email_opt_in=True)
    CustomerFactory(tenant=workspace, email="bob@example.org")
    with tenant_scope(workspace):
        from customers.models import Customer

        q = compile_rules(group(cond("email", "ends_with", "example.org")))
        assert emails(Customer.objects.filter(q).filter(email_opt_in=True)) == ["ann@example.org"]


def test_invalid_rules_are_reported_with_the_path_of_the_condition(workspace):
    rules = group(cond("stage", "is", "at_risk"), group(cond("shoe_size", "gt", 42), op="or"))
    with tenant_scope(workspace):
        errors = validate_rules(rules)
        assert [(error.path, error.message) for error in errors] == [((1, 0), "Unknown field “shoe_size”.")]
        with pytest.raises(InvalidRules) as raised:
            compile_rules(rules)
    assert raised.value.errors == errors


def test_in_the_last_days_counts_from_the_given_clock(workspace):
    now = timezone.now()
    ann = CustomerFactory(tenant=workspace, email="ann@example.org")
    metrics(ann, last_order_at=now - dt.timedelta(days=10))
    with tenant_scope(workspace):
        segment = Segment.objects.create(name="Recent", rules=group(cond("last_order_at", "in_last_days", 30)))
        assert count_members(segment, now=now) == 1
        assert count_members(segment, now=now + dt.timedelta(days=25)) == 0
