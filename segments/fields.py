"""The field registry: every field a segment rule can test, with its type, operators, value checks and SQL.

The builder UI (which operators and value widgets to offer) and the compiler (segments.rules) both read
this registry, so a field exists in exactly one place. A condition is
``{"field": name, "operator": op, "value": v}``, plus ``"key"`` for fields that need one (the name of a
custom attribute, a product SKU, a category).

Semantics shared by every field, which the pandas oracle in the tests re-implements independently:

* a negative operator (is not, does not contain, never, not in the last N days, is not a member) is the
  exact complement of its positive twin, so customers with no value (no metrics row yet, no such
  attribute) match the negative operator;
* a comparison (greater than, before, between…) is false when there is no value;
* for yes/no fields "no" is the complement of "yes";
* text comparisons ignore case;
* "in the last N days" means at or after ``now - N days``; "more than N days ago" before it;
  "before D" means before the start of day D and "after D" from the start of the day after D, both in
  the current time zone.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import models
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Substr
from django.utils import timezone

from customers.models import Interaction, Order, OrderLine, Suppression
from lifecycle.models import Stage

# --- Operators per type ----------------------------------------------------------------------------
# Each operator names the kind of value it takes, which picks both the validation and the builder widget:
#   none · text · text_list · number · number_pair · date · days · bool · choice · choices · segment

TEXT_OPERATORS = {
    "eq": ("is", "text"),
    "neq": ("is not", "text"),
    "contains": ("contains", "text"),
    "not_contains": ("does not contain", "text"),
    "starts_with": ("starts with", "text"),
    "ends_with": ("ends with", "text"),
    "in": ("is one of", "text_list"),
    "not_in": ("is none of", "text_list"),
    "is_empty": ("is empty", "none"),
    "is_not_empty": ("is not empty", "none"),
}
NUMBER_OPERATORS = {
    "eq": ("=", "number"),
    "neq": ("≠", "number"),
    "gt": (">", "number"),
    "gte": ("≥", "number"),
    "lt": ("<", "number"),
    "lte": ("≤", "number"),
    "between": ("is between", "number_pair"),
    "is_empty": ("is unknown", "none"),
    "is_not_empty": ("is known", "none"),
}
DATE_OPERATORS = {
    "in_last_days": ("in the last … days", "days"),
    "more_than_days_ago": ("more than … days ago", "days"),
    "before": ("before", "date"),
    "after": ("after", "date"),
    "is_empty": ("is unknown", "none"),
    "is_not_empty": ("is known", "none"),
}
BOOL_OPERATORS = {"is": ("is", "bool")}
CHOICE_OPERATORS = {
    "is": ("is", "choice"),
    "is_not": ("is not", "choice"),
    "in": ("is one of", "choices"),
    "not_in": ("is none of", "choices"),
}
EVENT_OPERATORS = {
    "in_last_days": ("in the last … days", "days"),
    "not_in_last_days": ("not in the last … days", "days"),
    "ever": ("ever", "none"),
    "never": ("never", "none"),
}
SEGMENT_OPERATORS = {
    "in": ("is a member of", "segment"),
    "not_in": ("is not a member of", "segment"),
}

# Operators that are the complement of another: compiled as NOT(positive twin).
NEGATIONS = {
    "neq": "eq",
    "not_contains": "contains",
    "not_in": "in",
    "is_not_empty": "is_empty",
    "is_not": "is",
    "not_in_last_days": "in_last_days",
    "never": "ever",
}

MAX_TEXT_LENGTH = 200
MAX_LIST_ITEMS = 100
MAX_DAYS = 36500
ATTRIBUTE_KEY = re.compile(r"^[\w .:\-]{1,64}$")
ISO_DATE_PREFIX = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"


class RuleValueError(ValueError):
    """A condition's value (or key) is not acceptable; the message is shown next to the condition."""


@dataclass(frozen=True)
class Condition:
    """A condition whose field, operator, key and value have been checked and normalised."""

    field: "Field"
    operator: str
    value: Any = None
    key: str = ""


@dataclass(frozen=True)
class Field:
    """One thing a rule can test: its label and group in the builder, type, operators and SQL."""

    name: str
    label: str
    group: str
    type: str
    operators: dict[str, tuple[str, str]]
    compile: Callable[[Condition, Any], Q]
    choices: tuple[tuple[str, str], ...] = ()
    key_label: str = ""
    key_placeholder: str = ""
    min_value: float | None = None
    max_value: float | None = None
    integer: bool = False  # whole numbers only (an integer column would silently truncate 2.5 to 2)
    help_text: str = ""

    @property
    def needs_key(self) -> bool:
        return bool(self.key_label)

    def operator_label(self, operator: str) -> str:
        return self.operators[operator][0]

    def value_kind(self, operator: str) -> str:
        """Return the kind of value ``operator`` takes for this field (which widget the builder shows)."""
        return self.operators[operator][1]

    @property
    def default_operator(self) -> str:
        return next(iter(self.operators))

    def clean_key(self, key: Any) -> str:
        """Return the normalised key of a keyed field, or raise RuleValueError."""
        if not self.needs_key:
            return ""
        key = str(key or "").strip()
        if not key:
            raise RuleValueError(f"Enter the {self.key_label.lower()}.")
        if not ATTRIBUTE_KEY.match(key) or key.isdigit():
            raise RuleValueError(
                f"{self.key_label} may use letters, digits, spaces and . _ : - (up to 64), and not only digits."
            )
        return key

    def clean_value(self, operator: str, value: Any) -> Any:
        """Return ``value`` normalised for ``operator`` (numbers as numbers, dates as ISO text), or raise RuleValueError."""
        kind = self.value_kind(operator)
        return VALUE_CLEANERS[kind](self, value)


# --- Value cleaning ---------------------------------------------------------------------------------


def _clean_none(field: Field, value: Any) -> None:
    return None


def _clean_text(field: Field, value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise RuleValueError("Enter a text value.")
    text = str(value).strip()
    if not text:
        raise RuleValueError("Enter a value.")
    if len(text) > MAX_TEXT_LENGTH:
        raise RuleValueError(f"Keep the value under {MAX_TEXT_LENGTH} characters.")
    return text


def _as_list(value: Any) -> list:
    if isinstance(value, str):
        return [part for part in (item.strip() for item in value.split(",")) if part]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [] if value is None else [value]


def _clean_text_list(field: Field, value: Any) -> list[str]:
    items = []
    for item in _as_list(value):
        text = _clean_text(field, item)
        if text not in items:
            items.append(text)
    if not items:
        raise RuleValueError("Enter at least one value (separate several with commas).")
    if len(items) > MAX_LIST_ITEMS:
        raise RuleValueError(f"At most {MAX_LIST_ITEMS} values.")
    return items


def _clean_number(field: Field, value: Any) -> int | float:
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)) or str(value).strip() == "":
        raise RuleValueError("Enter a number.")
    try:
        number = Decimal(str(value).strip().replace(",", "")) if isinstance(value, str) else Decimal(str(value))
    except InvalidOperation:
        raise RuleValueError(f"“{value}” is not a number.") from None
    if not number.is_finite():
        raise RuleValueError("Enter a finite number.")
    if field.min_value is not None and number < Decimal(str(field.min_value)):
        raise RuleValueError(f"{field.label} is never below {field.min_value:g}.")
    if field.max_value is not None and number > Decimal(str(field.max_value)):
        raise RuleValueError(f"{field.label} is never above {field.max_value:g}.")
    if abs(number) >= Decimal("1e12"):
        raise RuleValueError("That number is too large.")
    if field.integer and number != number.to_integral_value():
        raise RuleValueError(f"{field.label} is a whole number.")
    return int(number) if number == number.to_integral_value() else float(number)


def _clean_number_pair(field: Field, value: Any) -> list:
    items = _as_list(value)
    if len(items) != 2 or any(item in (None, "") for item in items):
        raise RuleValueError("Enter both a lower and an upper bound.")
    low, high = (_clean_number(field, item) for item in items)
    if low > high:
        raise RuleValueError("The lower bound is above the upper bound.")
    return [low, high]


def _clean_days(field: Field, value: Any) -> int:
    if isinstance(value, bool) or value in (None, ""):
        raise RuleValueError("Enter a number of days.")
    try:
        days = Decimal(str(value).strip())
    except InvalidOperation:
        raise RuleValueError(f"“{value}” is not a number of days.") from None
    if not days.is_finite() or days != days.to_integral_value() or days < 1 or days > MAX_DAYS:
        raise RuleValueError(f"Enter a whole number of days between 1 and {MAX_DAYS}.")
    return int(days)


def _clean_date(field: Field, value: Any) -> str:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()[:10]
    try:
        return dt.date.fromisoformat(str(value or "").strip()).isoformat()
    except ValueError:
        raise RuleValueError("Enter a date as YYYY-MM-DD.") from None


def _clean_bool(field: Field, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise RuleValueError("Choose yes or no.")


def _clean_choice(field: Field, value: Any) -> str:
    allowed = [code for code, _ in field.choices]
    text = "" if value is None or isinstance(value, (dict, list)) else str(value).strip()
    if text not in allowed:
        raise RuleValueError(f"Choose one of: {', '.join(label for _, label in field.choices)}.")
    return text


def _clean_choices(field: Field, value: Any) -> list[str]:
    items = []
    for item in _as_list(value):
        choice = _clean_choice(field, item)
        if choice not in items:
            items.append(choice)
    if not items:
        raise RuleValueError("Choose at least one.")
    return items


def _clean_segment(field: Field, value: Any) -> int:
    if isinstance(value, bool):
        raise RuleValueError("Choose a segment.")
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise RuleValueError("Choose a segment.") from None


VALUE_CLEANERS: dict[str, Callable[[Field, Any], Any]] = {
    "none": _clean_none,
    "text": _clean_text,
    "text_list": _clean_text_list,
    "number": _clean_number,
    "number_pair": _clean_number_pair,
    "date": _clean_date,
    "days": _clean_days,
    "bool": _clean_bool,
    "choice": _clean_choice,
    "choices": _clean_choices,
    "segment": _clean_segment,
}


# --- SQL building blocks ----------------------------------------------------------------------------


def start_of_day(iso_date: str) -> dt.datetime:
    """Return the aware datetime at which the ISO date begins in the current time zone."""
    day = dt.date.fromisoformat(iso_date)
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min), timezone.get_current_timezone())


def days_ago(context, days: int) -> dt.datetime:
    """Return the instant ``days`` days before the compile context's ``now``."""
    return context.now - dt.timedelta(days=days)


def definitely(q: Q) -> Q:
    """Return a Q that is false (never NULL) where ``q`` is unknown, so NOT(...) of it is a true complement.

    Django adds IS NOT NULL guards when it negates plain column lookups, but not for lookups over
    expressions (JSON attributes), where SQL's three-valued logic would otherwise drop rows from both
    a condition and its negation.
    """
    return Q(Case(When(q, then=Value(True)), default=Value(False), output_field=models.BooleanField()))


def _column_positive(path: str, operator: str, value: Any, context, text: bool) -> Q:
    """The positive (non-negated) condition on a column reachable from Customer by ``path``."""
    if operator == "eq":
        return Q(**{f"{path}__iexact" if text else path: value})
    if operator == "contains":
        return Q(**{f"{path}__icontains": value})
    if operator == "starts_with":
        return Q(**{f"{path}__istartswith": value})
    if operator == "ends_with":
        return Q(**{f"{path}__iendswith": value})
    if operator == "in":
        if not text:
            return Q(**{f"{path}__in": value})
        combined = Q()
        for item in value:
            combined |= Q(**{f"{path}__iexact": item})
        return combined
    if operator == "is":
        return Q(**{path: value})
    if operator in ("gt", "gte", "lt", "lte"):
        return Q(**{f"{path}__{operator}": value})
    if operator == "between":
        return Q(**{f"{path}__gte": value[0], f"{path}__lte": value[1]})
    if operator == "is_empty":
        unknown = Q(**{f"{path}__isnull": True})
        return unknown | Q(**{path: ""}) if text else unknown
    if operator == "in_last_days":
        return Q(**{f"{path}__gte": days_ago(context, value)})
    if operator == "more_than_days_ago":
        return Q(**{f"{path}__lt": days_ago(context, value)})
    if operator == "before":
        return Q(**{f"{path}__lt": start_of_day(value)})
    if operator == "after":
        return Q(**{f"{path}__gte": start_of_day(value) + dt.timedelta(days=1)})
    raise ValueError(f"operator {operator!r} has no column form")  # the registry never offers it


def _with_related_tenant(positive: Q, path: str) -> Q:
    """``positive`` on a related row (``metrics__…``), also naming that row's workspace.

    Row-level security already keeps other workspaces' rows out, but only a condition in the query lets the
    planner use the ``(tenant_id, …)`` indexes of the related table. Only for positive lookups: a customer
    without the related row matches none of them anyway (negations keep their IS NULL half, unchanged).
    """
    from crm_site.tenancy import current_tenant_id

    relation, _, rest = path.partition("__")
    tenant_id = current_tenant_id()
    if not rest or tenant_id is None or is_empty_lookup(positive):
        return positive
    return positive & Q(**{f"{relation}__tenant_id": tenant_id})


def is_empty_lookup(condition: Q) -> bool:
    """Whether ``condition`` tests for a missing value (``__isnull=True``), which a missing related row satisfies."""
    return any(isinstance(child, tuple) and child[0].endswith("__isnull") and child[1] for child in condition.children)


def _complement(positive: Q, path: str) -> Q:
    """NOT ``positive`` for a lookup that is false on NULL, true where the column is NULL.

    Django adds the IS NULL half itself only when it already knows the join is outer; inside an OR it
    promotes the metrics join later and emits a bare NOT (…), which SQL's NULL logic turns into "no".
    """
    return ~positive | Q(**{f"{path}__isnull": True})


def column(path: str, *, text: bool = False) -> Callable[[Condition, Any], Q]:
    """Compile function for a field stored in a column (``email``, ``metrics__revenue``…); ``text`` ignores case."""

    def compile_column(condition: Condition, context) -> Q:
        operator, value = condition.operator, condition.value
        if operator == "is" and value is False and condition.field.type == "bool":
            # "is no" is the complement of "is yes": a customer with no metrics row yet is no heavy user.
            return _complement(Q(**{path: True}), path)
        if operator == "is_not_empty":
            return ~_column_positive(path, "is_empty", value, context, text)
        if operator in NEGATIONS:
            return _complement(_column_positive(path, NEGATIONS[operator], value, context, text), path)
        return _with_related_tenant(_column_positive(path, operator, value, context, text), path)

    return compile_column


class JsonScalarKind(models.Func):
    """The kind of ``attributes[key]``: 'string', 'number', 'true', 'false', 'null', 'object', 'array' or NULL."""

    output_field = models.CharField()

    def __init__(self, column_name: str, key: str):
        self.key = key
        super().__init__(F(column_name))

    def as_sql(self, compiler, connection, **extra_context):
        column_sql, params = compiler.compile(self.source_expressions[0])
        if connection.vendor == "postgresql":
            element = f"({column_sql} -> %s)"
            element_params = (*params, self.key)
            sql = f"CASE jsonb_typeof({element}) WHEN 'boolean' THEN ({element})::text ELSE jsonb_typeof({element}) END"
            return sql, element_params * 3
        path = connection.ops.compile_json_path([self.key])
        sql = (
            f"CASE json_type({column_sql}, %s) WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number' "
            f"WHEN 'text' THEN 'string' ELSE json_type({column_sql}, %s) END"
        )
        return sql, (*params, path, *params, path)


class JsonNumber(models.Func):
    """``attributes[key]`` as a number; only evaluated where the value is a JSON number (see guard)."""

    output_field = models.FloatField()

    def as_postgresql(self, compiler, connection, **extra_context):
        # numeric, not double precision: any JSON number fits, so the cast cannot fail.
        return self.as_sql(compiler, connection, template="(%(expressions)s)::numeric", **extra_context)

    def as_sql(self, compiler, connection, template=None, **extra_context):
        return super().as_sql(compiler, connection, template=template or "CAST(%(expressions)s AS REAL)", **extra_context)


def attribute(kind: str) -> Callable[[Condition, Any], Q]:
    """Compile function for a typed custom attribute (``Customer.attributes[key]``)."""

    def compile_attribute(condition: Condition, context) -> Q:
        key, operator, value = condition.key, condition.operator, condition.value
        json_kind = JsonScalarKind("attributes", key)
        text = KeyTextTransform(key, "attributes")

        def positive(operator: str) -> Q:
            if kind == "bool":
                return definitely(Q(models.lookups.Exact(json_kind, "true")))
            # "Empty" means no value of the attribute's type: missing, null, another type, or "" for text.
            if kind == "text":
                typed = Case(When(Q(models.lookups.Exact(json_kind, "string")), then=text), output_field=models.TextField())
                if operator == "is_empty":
                    return ~definitely(~Q(models.lookups.Exact(typed, "")))
                return definitely(_expression_positive(typed, operator, value, text_mode=True))
            if kind == "number":
                typed = Case(When(Q(models.lookups.Exact(json_kind, "number")), then=JsonNumber(text)),
                             output_field=models.FloatField())
                if operator == "is_empty":
                    return ~definitely(Q(models.lookups.Exact(json_kind, "number")))
                return definitely(_expression_positive(typed, operator, value))
            # Dates: ISO text compared as text (ISO dates sort like dates), only where it looks like one.
            looks_like_date = Q(models.lookups.Exact(json_kind, "string")) & Q(models.lookups.Regex(text, ISO_DATE_PREFIX))
            if operator == "is_empty":
                return ~definitely(looks_like_date)
            typed = Case(When(looks_like_date, then=Substr(text, 1, 10)), output_field=models.TextField())
            if operator == "in_last_days":
                return definitely(Q(models.lookups.GreaterThanOrEqual(typed, days_ago(context, value).date().isoformat())))
            if operator == "more_than_days_ago":
                return definitely(Q(models.lookups.LessThan(typed, days_ago(context, value).date().isoformat())))
            if operator == "before":
                return definitely(Q(models.lookups.LessThan(typed, value)))
            if operator == "after":
                return definitely(Q(models.lookups.GreaterThan(typed, value)))
            raise ValueError(f"operator {operator!r} has no attribute form")

        if kind == "bool":
            # Like every yes/no field, "no" is the complement of "yes" (missing and non-boolean values are "no").
            return positive("is") if value else ~positive("is")
        if operator in NEGATIONS:
            return ~positive(NEGATIONS[operator])
        return positive(operator)

    return compile_attribute


def _expression_positive(expression, operator: str, value: Any, text_mode: bool = False) -> Q:
    lookups = models.lookups
    if text_mode:
        if operator == "eq":
            return Q(lookups.IExact(expression, value))
        if operator == "contains":
            return Q(lookups.IContains(expression, value))
        if operator == "starts_with":
            return Q(lookups.IStartsWith(expression, value))
        if operator == "ends_with":
            return Q(lookups.IEndsWith(expression, value))
        if operator == "in":
            combined = Q()
            for item in value:
                combined |= Q(lookups.IExact(expression, item))
            return combined
    if operator == "eq":
        return Q(lookups.Exact(expression, value))
    if operator == "gt":
        return Q(lookups.GreaterThan(expression, value))
    if operator == "gte":
        return Q(lookups.GreaterThanOrEqual(expression, value))
    if operator == "lt":
        return Q(lookups.LessThan(expression, value))
    if operator == "lte":
        return Q(lookups.LessThanOrEqual(expression, value))
    if operator == "between":
        return Q(lookups.GreaterThanOrEqual(expression, value[0])) & Q(lookups.LessThanOrEqual(expression, value[1]))
    raise ValueError(f"operator {operator!r} has no expression form")


def interaction(kind: str) -> Callable[[Condition, Any], Q]:
    """Compile function for engagement: an Interaction of ``kind`` (open, click, reply) in a window."""

    def compile_interaction(condition: Condition, context) -> Q:
        events = Interaction.objects.filter(customer=OuterRef("pk"), kind=kind)
        operator = NEGATIONS.get(condition.operator, condition.operator)
        if operator == "in_last_days":
            events = events.filter(occurred_at__gte=days_ago(context, condition.value))
        happened = Q(Exists(events))
        return ~happened if condition.operator in NEGATIONS else happened

    return compile_interaction


def purchase(match: Callable[[str], Q]) -> Callable[[Condition, Any], Q]:
    """Compile function for "bought X": an order line matching the key in a window (cancelled orders excluded)."""

    def compile_purchase(condition: Condition, context) -> Q:
        lines = OrderLine.objects.filter(match(condition.key), order__customer=OuterRef("pk")).exclude(
            order__status=Order.Status.CANCELLED
        )
        operator = NEGATIONS.get(condition.operator, condition.operator)
        if operator == "in_last_days":
            lines = lines.filter(order__placed_at__gte=days_ago(context, condition.value))
        bought = Q(Exists(lines))
        return ~bought if condition.operator in NEGATIONS else bought

    return compile_purchase


class SuppressionHash(models.Func):
    """SQL twin of ``customers.models.suppression_hash`` over a customer's address column."""

    output_field = models.CharField()

    def __init__(self, channel: str, address_column: str):
        from django.conf import settings
        from django.db.models.functions import Concat, Lower, Trim

        self.channel = channel
        super().__init__(Concat(Value(f"{settings.SECRET_KEY}:{channel}:"), Lower(Trim(OuterRef(address_column)))))

    def as_sql(self, compiler, connection, **extra_context):
        if connection.vendor == "postgresql":
            extra_context["template"] = "encode(sha256(convert_to(%(expressions)s, 'UTF8')), 'hex')"
        else:
            extra_context["function"] = "SHA256"
        return super().as_sql(compiler, connection, **extra_context)


def _suppressed(channel: str, address_column: str) -> Q:
    hashed = SuppressionHash(channel, address_column)
    return Q(Exists(Suppression.objects.filter(channel=channel, value_hash=hashed)))


def consent(channel: str, opt_in_column: str, address_column: str) -> Callable[[Condition, Any], Q]:
    """Compile function for "may be contacted on channel": opted in, has an address and is not suppressed."""

    def compile_consent(condition: Condition, context) -> Q:
        reachable = Q(**{opt_in_column: True}) & ~Q(**{address_column: ""}) & ~_suppressed(channel, address_column)
        return reachable if condition.value else ~reachable

    return compile_consent


def suppressed(channel: str, address_column: str) -> Callable[[Condition, Any], Q]:
    """Compile function for "the address is on the suppression list" (bounced, complained, unsubscribed…)."""

    def compile_suppressed(condition: Condition, context) -> Q:
        on_list = _suppressed(channel, address_column)
        return on_list if condition.value else ~on_list

    return compile_suppressed


def segment_membership(condition: Condition, context) -> Q:
    """Membership of another segment: its rules inlined (dynamic) or its snapshot (frozen)."""
    member = context.segment_condition(condition.value)
    if condition.operator == "not_in":
        # The inlined rules may be NULL for some rows (outer-joined metrics); make them two-valued first.
        return ~definitely(member)
    return member


# --- The registry -----------------------------------------------------------------------------------

STAGE_CHOICES = tuple(Stage.choices)
# The RFM segment names lifecycle writes into CustomerMetrics.rfm_segment (lifecycle.metrics.RFM_SEGMENT_LABELS;
# not imported, so that compiling a rule does not load the model-fitting stack).
RFM_SEGMENT_CHOICES = (
    ("champions", "Champions"),
    ("loyal", "Loyal"),
    ("potential_loyalists", "Potential loyalists"),
    ("new", "New customers"),
    ("promising", "Promising"),
    ("needs_attention", "Needs attention"),
    ("about_to_sleep", "About to sleep"),
    ("cant_lose", "Can't lose them"),
    ("slipping", "Slipping away"),
    ("hibernating", "Hibernating"),
    ("lost", "Lost"),
)
ENGAGEMENT_KINDS = (
    ("opened", "Opened a message", Interaction.Kind.OPEN),
    ("clicked", "Clicked a link", Interaction.Kind.CLICK),
    ("replied", "Replied", Interaction.Kind.REPLY),
)


def _not_nullable(operators: dict) -> dict:
    return {name: spec for name, spec in operators.items() if name not in ("is_empty", "is_not_empty")}


def _build_registry() -> dict[str, Field]:
    profile = "Profile"
    attributes = "Custom attributes"
    purchases = "Purchases"
    lifecycle = "Lifecycle"
    scores = "RFM and predictions"
    consent_group = "Consent"
    engagement = "Engagement"
    membership = "Segments"
    fields = [
        Field("email", "E-mail", profile, "text", TEXT_OPERATORS, column("email", text=True)),
        Field("first_name", "First name", profile, "text", TEXT_OPERATORS, column("first_name", text=True)),
        Field("last_name", "Last name", profile, "text", TEXT_OPERATORS, column("last_name", text=True)),
        Field("phone", "Phone", profile, "text", TEXT_OPERATORS, column("phone", text=True)),
        Field("external_id", "Shop customer id", profile, "text", TEXT_OPERATORS, column("external_id", text=True)),
        Field("time_zone", "Time zone", profile, "text", TEXT_OPERATORS, column("time_zone", text=True),
              help_text="IANA name such as Europe/Berlin; empty means the workspace's."),
        Field("locale", "Locale", profile, "text", TEXT_OPERATORS, column("locale", text=True)),
        Field("first_seen_at", "First seen", profile, "date", _not_nullable(DATE_OPERATORS), column("first_seen_at")),
        Field("attribute_text", "Attribute (text)", attributes, "attribute_text",
              TEXT_OPERATORS, attribute("text"),
              key_label="Attribute name", key_placeholder="plan"),
        Field("attribute_number", "Attribute (number)", attributes, "attribute_number", NUMBER_OPERATORS,
              attribute("number"), key_label="Attribute name", key_placeholder="age"),
        Field("attribute_bool", "Attribute (yes/no)", attributes, "attribute_bool", BOOL_OPERATORS, attribute("bool"),
              key_label="Attribute name", key_placeholder="vip"),
        Field("attribute_date", "Attribute (date)", attributes, "attribute_date", DATE_OPERATORS, attribute("date"),
              key_label="Attribute name", key_placeholder="birthday"),
        Field("revenue", "Total spent", purchases, "number", NUMBER_OPERATORS, column("metrics__revenue")),
        Field("order_count", "Number of orders", purchases, "number", NUMBER_OPERATORS, column("metrics__order_count"),
              min_value=0, integer=True),
        Field("average_order_value", "Average order value", purchases, "number", NUMBER_OPERATORS,
              column("metrics__average_order_value")),
        Field("last_order_at", "Last order", purchases, "date", DATE_OPERATORS, column("metrics__last_order_at")),
        Field("first_order_at", "First order", purchases, "date", DATE_OPERATORS, column("metrics__first_order_at")),
        Field("bought_product", "Bought product", purchases, "purchase", EVENT_OPERATORS,
              purchase(lambda sku: Q(sku=sku) | Q(product__sku=sku)), key_label="Product SKU",
              key_placeholder="SKU-00042"),
        Field("bought_category", "Bought from category", purchases, "purchase", EVENT_OPERATORS,
              purchase(lambda category: Q(product__category__iexact=category)), key_label="Category",
              key_placeholder="Coffee"),
        Field("stage", "Lifecycle stage", lifecycle, "choice", CHOICE_OPERATORS, column("metrics__stage"),
              choices=STAGE_CHOICES),
        Field("is_heavy_user", "Heavy user", lifecycle, "bool", BOOL_OPERATORS, column("metrics__is_heavy_user")),
        Field("is_reward_due", "Reward due", lifecycle, "bool", BOOL_OPERATORS, column("metrics__is_reward_due")),
        Field("is_reinforce_due", "Reinforce due", lifecycle, "bool", BOOL_OPERATORS,
              column("metrics__is_reinforce_due")),
        Field("recency_score", "Recency score (1–5)", scores, "number", NUMBER_OPERATORS,
              column("metrics__recency_score"), min_value=0, max_value=5, integer=True),
        Field("frequency_score", "Frequency score (1–5)", scores, "number", NUMBER_OPERATORS,
              column("metrics__frequency_score"), min_value=0, max_value=5, integer=True),
        Field("monetary_score", "Monetary score (1–5)", scores, "number", NUMBER_OPERATORS,
              column("metrics__monetary_score"), min_value=0, max_value=5, integer=True),
        Field("rfm_segment", "RFM segment", scores, "choice", CHOICE_OPERATORS, column("metrics__rfm_segment"),
              choices=RFM_SEGMENT_CHOICES),
        Field("predicted_clv_12m", "Predicted value, next 12 months", scores, "number", NUMBER_OPERATORS,
              column("metrics__predicted_clv_12m")),
        Field("p_alive", "P(alive)", scores, "number", NUMBER_OPERATORS, column("metrics__p_alive"),
              min_value=0, max_value=1, help_text="Probability (0–1) the customer will buy again."),
        Field("email_consent", "May be e-mailed", consent_group, "bool", BOOL_OPERATORS,
              consent("email", "email_opt_in", "email"),
              help_text="Opted in to marketing e-mail, has an address, and the address is not suppressed."),
        Field("sms_consent", "May be texted", consent_group, "bool", BOOL_OPERATORS,
              consent("sms", "sms_opt_in", "phone"),
              help_text="Opted in to marketing SMS, has a phone number, and it is not suppressed."),
        Field("email_suppressed", "E-mail address suppressed", consent_group, "bool", BOOL_OPERATORS,
              suppressed("email", "email"), help_text="Bounced, complained, unsubscribed or erased."),
        Field("sms_suppressed", "Phone number suppressed", consent_group, "bool", BOOL_OPERATORS,
              suppressed("sms", "phone")),
    ]
    fields += [
        Field(name, label, engagement, "event", EVENT_OPERATORS, interaction(kind))
        for name, label, kind in ENGAGEMENT_KINDS
    ]
    fields.append(
        Field("segment", "Segment", membership, "segment", SEGMENT_OPERATORS, segment_membership)
    )
    return {field.name: field for field in fields}


FIELDS: dict[str, Field] = _build_registry()


def get_field(name: Any) -> Field | None:
    """Return the registered field called ``name``, or None."""
    return FIELDS.get(name) if isinstance(name, str) else None


def field_groups() -> list[tuple[str, list[Field]]]:
    """Return the fields grouped for the builder's field menu, in registry order."""
    groups: dict[str, list[Field]] = {}
    for field in FIELDS.values():
        groups.setdefault(field.group, []).append(field)
    return list(groups.items())

