"""Compiled segments select exactly whom an independent pandas evaluation of the same rules selects.

Random rule trees (hypothesis) over generated customers, metrics, orders, interactions, suppressions and
other segments: the set of ids from the one SQL query equals the set from pandas. The pandas side is
written from the semantics in segments.fields' docstring, not from the compiler.
"""

import datetime as dt
import random
import re
from decimal import Decimal

import pandas as pd
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given, settings, strategies as st

from crm_site.tenancy import tenant_scope
from customers.models import Customer, Interaction, Order, OrderLine, Product, Suppression, suppression_hash
from lifecycle.models import CustomerMetrics
from segments.audience import customers_matching
from segments.fields import RFM_SEGMENT_CHOICES, STAGE_CHOICES
from segments.models import Segment, SegmentMember

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
NAMES = ["Ann", "anna", "Bob", "BOBBY", "Cid", "dora", "Eve", ""]
DOMAINS = ["example.org", "Shop.com", "mail.net"]
ZONES = ["", "Europe/Berlin", "America/New_York"]
LOCALES = ["", "de", "en", "en-GB"]
SKUS = ["SKU-1", "SKU-2", "SKU-3", "LOOSE-1"]
CATEGORIES = ["Coffee", "Tea", "coffee beans"]
AMOUNTS = [0, 10, 49.9, 50, 99.99, 100, 250.5, 1000]
DAYS = [1, 7, 30, 90, 200, 400]
DATES = ["2025-05-01", "2025-12-31", "2026-03-01", "2026-06-14"]
TEXTS = ["ann", "ANN", "bob", "example", ".org", "shop", "Europe", "de", "en", "C00", "gold", "x"]


def _when(rng, days=420, none_share=0.2):
    if rng.random() < none_share:
        return None
    return NOW - dt.timedelta(days=rng.choice(DAYS) + rng.choice([-1, 0, 0, 1]) * rng.random(), minutes=rng.randint(0, 600))


def _attributes(rng):
    attributes = {}
    if rng.random() < 0.7:
        attributes["plan"] = rng.choice(["gold", "Gold", "silver", "", 3, True, None])
    if rng.random() < 0.7:
        attributes["age"] = rng.choice([18, 30, 42, 42.0, 64.5, "42", None, False])
    if rng.random() < 0.7:
        attributes["vip"] = rng.choice([True, False, "yes", 1])
    if rng.random() < 0.7:
        attributes["birthday"] = rng.choice(["1990-05-01", "2026-06-01", "2025-12-31T10:00:00", "soon", 19900501])
    return attributes


@pytest.fixture
def world(workspace, other_workspace):
    """Generate a workspace's data and return it as pandas frames plus the segments rules may refer to."""
    rng = random.Random(20260615)
    with tenant_scope(workspace):
        products = Product.objects.bulk_create(
            [Product(tenant=workspace, sku=sku, name=sku, category=category) for sku, category in zip(SKUS, CATEGORIES)]
        )
        customers = []
        for index in range(160):
            first = rng.choice(NAMES)
            customers.append(Customer(
                tenant=workspace, external_id=f"C{index:04d}" if rng.random() < 0.9 else "",
                email=f"{first.lower() or 'x'}{index}@{rng.choice(DOMAINS)}" if rng.random() < 0.9 else "",
                phone=f"+4930{index:06d}" if rng.random() < 0.5 else "",
                first_name=first, last_name=rng.choice(NAMES), time_zone=rng.choice(ZONES), locale=rng.choice(LOCALES),
                attributes=_attributes(rng), email_opt_in=rng.random() < 0.6, sms_opt_in=rng.random() < 0.3,
                first_seen_at=_when(rng, none_share=0), erased_at=NOW if rng.random() < 0.04 else None,
            ))
        customers[0].email, customers[0].erased_at = "Ann0@Example.org", None  # a known address for exact tests
        customers = Customer.objects.bulk_create(customers)
        metric_rows = []
        for customer in customers:
            if rng.random() < 0.15:
                continue  # no metrics row yet
            metric_rows.append(CustomerMetrics(
                tenant=workspace, customer=customer, stage=rng.choice(STAGE_CHOICES)[0],
                is_heavy_user=rng.random() < 0.2, is_reward_due=rng.random() < 0.2, is_reinforce_due=rng.random() < 0.2,
                revenue=Decimal(str(rng.choice(AMOUNTS))), order_count=rng.randint(0, 6),
                average_order_value=Decimal(str(rng.choice(AMOUNTS))),
                last_order_at=_when(rng), first_order_at=_when(rng),
                recency_score=rng.choice([None, 1, 2, 3, 4, 5]), frequency_score=rng.choice([None, 1, 3, 5]),
                monetary_score=rng.choice([None, 1, 2, 4, 5]),
                rfm_segment=rng.choice([code for code, _ in RFM_SEGMENT_CHOICES[:4]] + [""]),
                p_alive=rng.choice([None, 0.05, 0.3, 0.5, 0.9]),
                predicted_clv_12m=rng.choice([None, Decimal("0"), Decimal("99.99"), Decimal("250.50")]),
            ))
        CustomerMetrics.objects.bulk_create(metric_rows)
        orders, lines = [], []
        for customer in customers:
            for _ in range(rng.choice([0, 0, 1, 2, 3])):
                order = Order(tenant=workspace, customer=customer, external_id=f"O{len(orders)}",
                              placed_at=_when(rng, none_share=0), total=Decimal("10"),
                              status=rng.choice(["placed", "placed", "refunded", "cancelled"]))
                orders.append(order)
                for _ in range(rng.choice([1, 2])):
                    product = rng.choice(products + [None])
                    sku = product.sku if product and rng.random() < 0.7 else rng.choice(SKUS if not product else ["", "X"])
                    lines.append(OrderLine(tenant=workspace, order=order, product=product, sku=sku,
                                           unit_price=Decimal("5"), line_total=Decimal("5")))
        Order.objects.bulk_create(orders)
        OrderLine.objects.bulk_create(lines)
        Interaction.objects.bulk_create([
            Interaction(tenant=workspace, customer=rng.choice(customers), summary="event",
                        kind=rng.choice(["open", "click", "reply", "message"]), occurred_at=_when(rng, none_share=0))
            for _ in range(260)
        ])
        suppressed_emails = [c.email for c in customers if c.email and rng.random() < 0.15]
        suppressed_phones = [c.phone for c in customers if c.phone and rng.random() < 0.15]
        Suppression.objects.bulk_create(
            [Suppression(tenant=workspace, channel="email", value_hash=suppression_hash("email", email), reason="bounced")
             for email in suppressed_emails]
            + [Suppression(tenant=workspace, channel="sms", value_hash=suppression_hash("sms", phone), reason="manual")
               for phone in suppressed_phones]
        )
        frozen = Segment.objects.create(name="Fair list", kind=Segment.Kind.FROZEN, frozen_at=NOW)
        frozen_ids = [c.pk for c in customers if rng.random() < 0.3]
        SegmentMember.objects.bulk_create(
            [SegmentMember(tenant=workspace, segment=frozen, customer_id=pk, added_at=NOW) for pk in frozen_ids]
        )
        dynamic_rules = {"op": "or", "rules": [
            {"field": "stage", "operator": "in", "value": ["at_risk", "lapsed"]},
            {"field": "revenue", "operator": "gte", "value": 250.5},
        ]}
        dynamic = Segment.objects.create(name="Worth a call", rules=dynamic_rules)
    # The same e-mail in another workspace must not leak in through any subquery.
    from tests.factories import CustomerFactory

    CustomerFactory(tenant=other_workspace, email="ann0@example.org")

    customer_frame = pd.DataFrame([{
        "id": c.pk, "email": c.email, "first_name": c.first_name, "last_name": c.last_name, "phone": c.phone,
        "external_id": c.external_id, "time_zone": c.time_zone, "locale": c.locale, "attributes": c.attributes,
        "email_opt_in": c.email_opt_in, "sms_opt_in": c.sms_opt_in, "first_seen_at": c.first_seen_at,
        "erased": c.erased_at is not None,
    } for c in customers]).set_index("id")
    metric_frame = pd.DataFrame([{
        "id": m.customer_id, **{name: getattr(m, name) for name in (
            "stage", "is_heavy_user", "is_reward_due", "is_reinforce_due", "revenue", "order_count",
            "average_order_value", "last_order_at", "first_order_at", "recency_score", "frequency_score",
            "monetary_score", "rfm_segment", "p_alive", "predicted_clv_12m")},
    } for m in metric_rows]).set_index("id")
    frame = customer_frame.join(metric_frame, how="left")
    frame["has_metrics"] = frame.index.isin(metric_frame.index)
    product_by_id = {p.pk: p for p in products}
    order_by_id = {o.pk: o for o in orders}
    line_frame = pd.DataFrame([{
        "customer": order_by_id[line.order_id].customer_id, "placed_at": order_by_id[line.order_id].placed_at,
        "cancelled": order_by_id[line.order_id].status == "cancelled", "sku": line.sku,
        "product_sku": product_by_id[line.product_id].sku if line.product_id else None,
        "category": product_by_id[line.product_id].category if line.product_id else None,
    } for line in lines])
    with tenant_scope(workspace):
        interaction_frame = pd.DataFrame(list(Interaction.objects.values("customer_id", "kind", "occurred_at")))
    return {
        "workspace": workspace, "frame": frame, "lines": line_frame, "interactions": interaction_frame,
        "suppressed": {"email": {suppression_hash("email", e) for e in suppressed_emails},
                       "sms": {suppression_hash("sms", p) for p in suppressed_phones}},
        "segments": {frozen.pk: ("frozen", set(frozen_ids)), dynamic.pk: ("dynamic", dynamic_rules)},
        "frozen": frozen, "dynamic": dynamic,
    }


# --- The oracle: the same rules evaluated over pandas frames ----------------------------------------


def _json_kind(value, present):
    if not present:
        return None
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object"


def _lower(series):
    return series.fillna("").astype(str).str.lower()


def _text_positive(series, operator, value, known):
    text = _lower(series)
    if operator == "eq":
        return known & (text == value.lower())
    if operator == "contains":
        return known & text.str.contains(value.lower(), regex=False)
    if operator == "starts_with":
        return known & text.str.startswith(value.lower())
    if operator == "ends_with":
        return known & text.str.endswith(value.lower())
    if operator == "in":
        return known & text.isin([item.lower() for item in value])
    if operator == "is_empty":
        return ~known | (text == "")
    raise AssertionError(operator)


def _compare(series, operator, value, known):
    def each(test):
        return pd.Series([bool(k) and test(v) for v, k in zip(series, known)], index=series.index)

    if operator == "eq":
        return each(lambda v: float(v) == float(value))
    if operator == "gt":
        return each(lambda v: float(v) > float(value))
    if operator == "gte":
        return each(lambda v: float(v) >= float(value))
    if operator == "lt":
        return each(lambda v: float(v) < float(value))
    if operator == "lte":
        return each(lambda v: float(v) <= float(value))
    if operator == "between":
        return each(lambda v: float(value[0]) <= float(v) <= float(value[1]))
    if operator == "is_empty":
        return ~known
    raise AssertionError(operator)


def _date_positive(series, operator, value, known):
    def each(test):
        return pd.Series([bool(k) and test(v) for v, k in zip(series, known)], index=series.index)

    if operator == "in_last_days":
        return each(lambda v: v >= NOW - dt.timedelta(days=value))
    if operator == "more_than_days_ago":
        return each(lambda v: v < NOW - dt.timedelta(days=value))
    day_start = dt.datetime.fromisoformat(value if isinstance(value, str) else "2000-01-01").replace(tzinfo=dt.UTC)
    if operator == "before":
        return each(lambda v: v < day_start)
    if operator == "after":
        return each(lambda v: v >= day_start + dt.timedelta(days=1))
    if operator == "is_empty":
        return ~known
    raise AssertionError(operator)


NEGATIVE = {"neq": "eq", "not_contains": "contains", "not_in": "in", "is_not_empty": "is_empty", "is_not": "is",
            "not_in_last_days": "in_last_days", "never": "ever"}
PROFILE = {"email", "first_name", "last_name", "phone", "external_id", "time_zone", "locale"}
METRIC_NUMBERS = {"revenue", "order_count", "average_order_value", "recency_score", "frequency_score",
                  "monetary_score", "predicted_clv_12m", "p_alive"}
METRIC_FLAGS = {"is_heavy_user", "is_reward_due", "is_reinforce_due"}


def evaluate(world, node):
    """Return a boolean Series over customer ids: who matches ``node``."""
    frame = world["frame"]
    if "rules" in node:
        parts = [evaluate(world, child) for child in node["rules"]]
        result = parts[0]
        for part in parts[1:]:
            result = (result | part) if node["op"] == "or" else (result & part)
        return result
    field, operator, value, key = node["field"], node["operator"], node.get("value"), node.get("key")
    if operator in NEGATIVE and field not in ("segment",):
        return ~evaluate(world, {**node, "operator": NEGATIVE[operator]})
    everyone = pd.Series(True, index=frame.index)
    if field in PROFILE:
        return _text_positive(frame[field], operator, value, everyone)
    if field == "first_seen_at":
        return _date_positive(frame[field], operator, value, everyone)
    if field in METRIC_NUMBERS:
        return _compare(frame[field], operator, value, frame["has_metrics"] & frame[field].notna())
    if field in ("last_order_at", "first_order_at"):
        return _date_positive(frame[field], operator, value, frame["has_metrics"] & frame[field].notna())
    if field in METRIC_FLAGS:
        yes = frame["has_metrics"] & (frame[field] == True)  # noqa: E712 (NaN-safe)
        return yes if value else ~yes
    if field in ("stage", "rfm_segment"):
        known = frame["has_metrics"]
        column = frame[field].where(known, None)
        if operator == "is":
            return known & (column == value)
        return known & column.isin(value)
    if field.startswith("attribute_"):
        attributes = list(frame["attributes"])
        kinds = pd.Series([_json_kind(a.get(key), key in a) for a in attributes], index=frame.index, dtype=object)
        values = pd.Series([a.get(key) for a in attributes], index=frame.index, dtype=object)
        if field == "attribute_bool":
            yes = kinds == "true"
            return yes if value else ~yes
        if field == "attribute_text":
            return _text_positive(values.where(kinds == "string", None), operator, value, kinds == "string")
        if field == "attribute_number":
            return _compare(values, operator, value, kinds == "number")
        dates = [v[:10] if isinstance(v, str) and re.match(r"^\d{4}-\d{2}-\d{2}", v) else None for v in values]
        is_date = pd.Series([d is not None for d in dates], index=frame.index)
        if operator == "is_empty":
            return ~is_date
        if operator in ("in_last_days", "more_than_days_ago"):
            bound = (NOW - dt.timedelta(days=value)).date().isoformat()
            test = (lambda d: d >= bound) if operator == "in_last_days" else (lambda d: d < bound)
        else:
            test = (lambda d: d < value) if operator == "before" else (lambda d: d > value)
        return pd.Series([d is not None and test(d) for d in dates], index=frame.index)
    if field in ("bought_product", "bought_category"):
        lines = world["lines"]
        lines = lines[~lines["cancelled"]]
        if field == "bought_product":
            lines = lines[(lines["sku"] == key) | (lines["product_sku"] == key)]
        else:
            lines = lines[lines["category"].fillna("").str.lower() == key.lower()]
        if operator == "in_last_days":
            lines = lines[lines["placed_at"] >= NOW - dt.timedelta(days=value)]
        return pd.Series(frame.index.isin(lines["customer"]), index=frame.index)
    if field in ("opened", "clicked", "replied"):
        kind = {"opened": "open", "clicked": "click", "replied": "reply"}[field]
        events = world["interactions"]
        events = events[events["kind"] == kind]
        if operator == "in_last_days":
            events = events[events["occurred_at"] >= NOW - dt.timedelta(days=value)]
        return pd.Series(frame.index.isin(events["customer_id"]), index=frame.index)
    if field in ("email_consent", "sms_consent", "email_suppressed", "sms_suppressed"):
        channel, address = ("email", "email") if field.startswith("email") else ("sms", "phone")
        on_list = frame[address].map(lambda a: suppression_hash(channel, a) in world["suppressed"][channel])
        if field.endswith("suppressed"):
            return on_list if value else ~on_list
        reachable = frame[f"{channel}_opt_in"] & (frame[address] != "") & ~on_list
        return reachable if value else ~reachable
    if field == "segment":
        kind, definition = world["segments"][value]
        member = (pd.Series(frame.index.isin(definition), index=frame.index) if kind == "frozen"
                  else evaluate(world, definition))
        return ~member if operator == "not_in" else member
    raise AssertionError(f"no oracle for {field}")


def oracle_ids(world, rules):
    matched = evaluate(world, rules) & ~world["frame"]["erased"]
    return set(matched[matched].index)


def sql_ids(world, rules):
    with tenant_scope(world["workspace"]):
        return set(customers_matching(rules, now=NOW).values_list("pk", flat=True))


# --- Random rule trees -------------------------------------------------------------------------------

text_operator = st.sampled_from(["eq", "neq", "contains", "not_contains", "starts_with", "ends_with", "in", "not_in",
                                 "is_empty", "is_not_empty"])
number_operator = st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte", "between", "is_empty", "is_not_empty"])
date_operator = st.sampled_from(["in_last_days", "more_than_days_ago", "before", "after", "is_empty", "is_not_empty"])
event_operator = st.sampled_from(["in_last_days", "not_in_last_days", "ever", "never"])


@st.composite
def text_condition(draw, field, key=None):
    operator = draw(text_operator)
    value = None
    if operator in ("in", "not_in"):
        value = draw(st.lists(st.sampled_from(TEXTS + ["ann0@example.org", "Europe/Berlin", "de", "gold"]),
                              min_size=1, max_size=3, unique=True))
    elif operator not in ("is_empty", "is_not_empty"):
        value = draw(st.sampled_from(TEXTS))
    return {"field": field, "operator": operator, "value": value, **({"key": key} if key else {})}


@st.composite
def number_condition(draw, field, values, key=None):
    operator = draw(number_operator)
    value = None
    if operator == "between":
        low, high = sorted(draw(st.lists(st.sampled_from(values), min_size=2, max_size=2)))
        value = [low, high]
    elif operator not in ("is_empty", "is_not_empty"):
        value = draw(st.sampled_from(values))
    return {"field": field, "operator": operator, "value": value, **({"key": key} if key else {})}


@st.composite
def date_condition(draw, field, key=None, nullable=True):
    operator = draw(date_operator if nullable else date_operator.filter(lambda op: "empty" not in op))
    value = None
    if operator in ("in_last_days", "more_than_days_ago"):
        value = draw(st.sampled_from(DAYS))
    elif operator in ("before", "after"):
        value = draw(st.sampled_from(DATES + ["1990-05-01", "2026-06-01"]))
    return {"field": field, "operator": operator, "value": value, **({"key": key} if key else {})}


@st.composite
def event_condition(draw, field, key=None):
    operator = draw(event_operator)
    value = draw(st.sampled_from(DAYS)) if operator in ("in_last_days", "not_in_last_days") else None
    return {"field": field, "operator": operator, "value": value, **({"key": key} if key else {})}


def bool_condition(field, key=None):
    return st.booleans().map(lambda yes: {"field": field, "operator": "is", "value": yes, **({"key": key} if key else {})})


@st.composite
def choice_condition(draw, field, choices):
    operator = draw(st.sampled_from(["is", "is_not", "in", "not_in"]))
    if operator in ("is", "is_not"):
        value = draw(st.sampled_from(choices))
    else:
        value = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3, unique=True))
    return {"field": field, "operator": operator, "value": value}


def condition_strategy(segment_ids):
    stage_codes = [code for code, _ in STAGE_CHOICES]
    rfm_codes = [code for code, _ in RFM_SEGMENT_CHOICES[:5]]
    return st.one_of(
        *[text_condition(name) for name in ("email", "first_name", "last_name", "phone", "external_id", "time_zone",
                                            "locale")],
        date_condition("first_seen_at", nullable=False),
        text_condition("attribute_text", key="plan"),
        number_condition("attribute_number", [0, 18, 30, 42, 64.5, 100], key="age"),
        bool_condition("attribute_bool", key="vip"),
        date_condition("attribute_date", key="birthday"),
        number_condition("revenue", AMOUNTS),
        number_condition("order_count", [0, 1, 2, 5]),
        number_condition("average_order_value", AMOUNTS),
        date_condition("last_order_at"),
        date_condition("first_order_at"),
        st.sampled_from(SKUS + ["X"]).flatmap(lambda sku: event_condition("bought_product", key=sku)),
        st.sampled_from(CATEGORIES + ["COFFEE"]).flatmap(lambda category: event_condition("bought_category", key=category)),
        choice_condition("stage", stage_codes),
        *[bool_condition(flag) for flag in ("is_heavy_user", "is_reward_due", "is_reinforce_due")],
        *[number_condition(score, [0, 1, 2, 3, 4, 5]) for score in ("recency_score", "frequency_score", "monetary_score")],
        choice_condition("rfm_segment", rfm_codes),
        number_condition("predicted_clv_12m", [0, 99.99, 100, 250.5]),
        number_condition("p_alive", [0, 0.05, 0.3, 0.31, 0.9, 1]),
        *[bool_condition(flag) for flag in ("email_consent", "sms_consent", "email_suppressed", "sms_suppressed")],
        *[event_condition(kind) for kind in ("opened", "clicked", "replied")],
        st.builds(lambda operator, segment_id: {"field": "segment", "operator": operator, "value": segment_id},
                  st.sampled_from(["in", "not_in"]), st.sampled_from(segment_ids)),
    )


def rule_trees(segment_ids):
    conditions = condition_strategy(segment_ids)
    groups = st.recursive(
        conditions,
        lambda children: st.builds(lambda op, rules: {"op": op, "rules": rules}, st.sampled_from(["and", "or"]),
                                   st.lists(children, min_size=1, max_size=3)),
        max_leaves=6,
    )
    return st.builds(lambda op, rules: {"op": op, "rules": rules}, st.sampled_from(["and", "or"]),
                     st.lists(groups, min_size=1, max_size=3))


# --- Tests -------------------------------------------------------------------------------------------


def test_random_rule_trees_select_the_same_customers_as_pandas(world):
    segment_ids = list(world["segments"])

    @settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(rule_trees(segment_ids))
    def check(rules):
        assert sql_ids(world, rules) == oracle_ids(world, rules), rules

    check()


@pytest.mark.parametrize("field_rules", [
    {"field": "email", "operator": "eq", "value": "ANN0@EXAMPLE.ORG"},
    {"field": "attribute_number", "key": "age", "operator": "gte", "value": 42},
    {"field": "attribute_text", "key": "plan", "operator": "neq", "value": "gold"},
    {"field": "attribute_date", "key": "birthday", "operator": "before", "value": "2000-01-01"},
    {"field": "attribute_bool", "key": "vip", "operator": "is", "value": False},
    {"field": "bought_category", "key": "coffee", "operator": "in_last_days", "value": 200},
    {"field": "stage", "operator": "is_not", "value": "active"},
    {"field": "email_consent", "operator": "is", "value": True},
    {"field": "replied", "operator": "never"},
])
def test_each_field_family_matches_pandas(world, field_rules):
    rules = {"op": "and", "rules": [field_rules]}
    expected = oracle_ids(world, rules)
    assert sql_ids(world, rules) == expected
    assert expected, "the generated data should exercise the condition"


def test_a_segment_is_one_query_however_many_conditions(world):
    rules = {"op": "and", "rules": [
        {"field": "stage", "operator": "in", "value": ["active", "at_risk"]},
        {"field": "bought_product", "key": "SKU-1", "operator": "ever"},
        {"field": "clicked", "operator": "in_last_days", "value": 400},
        {"field": "email_consent", "operator": "is", "value": True},
        {"op": "or", "rules": [
            {"field": "attribute_number", "key": "age", "operator": "gt", "value": 20},
            {"field": "segment", "operator": "in", "value": world["frozen"].pk},
            {"field": "segment", "operator": "not_in", "value": world["dynamic"].pk},
        ]},
    ]}
    with tenant_scope(world["workspace"]):
        members = customers_matching(rules, now=NOW)
        with CaptureQueriesContext(connection) as queries:
            count = members.count()
    assert len(queries) == 1
    assert count == len(oracle_ids(world, rules))


def test_every_rfm_segment_lifecycle_writes_can_be_chosen_in_a_rule(workspace):
    from lifecycle.metrics import rfm_segment
    from tests.factories import CustomerFactory

    grid = [(recency, frequency) for recency in range(1, 6) for frequency in range(1, 6)]
    written = set(rfm_segment(pd.Series([r for r, _ in grid]), pd.Series([f for _, f in grid])))
    assert written <= {code for code, _ in RFM_SEGMENT_CHOICES}
    promising, other = CustomerFactory(tenant=workspace), CustomerFactory(tenant=workspace)
    with tenant_scope(workspace):
        CustomerMetrics.objects.create(customer=promising, rfm_segment="potential_loyalists")
        CustomerMetrics.objects.create(customer=other, rfm_segment="champions")
        rules = {"op": "and", "rules": [{"field": "rfm_segment", "operator": "is", "value": "potential_loyalists"}]}
        assert list(customers_matching(rules, now=NOW).values_list("pk", flat=True)) == [promising.pk]
