"""The customer list: search, filters, sorts, columns and keyset pagination, from a registry higher apps extend.

``customers`` knows nothing of lifecycle, so the list is assembled from registered pieces. This module registers
the core ones (search over name, e-mail, phone and external id; consent filters; name and first-seen sorts) and
higher apps add theirs from their ``AppConfig.ready()`` (lifecycle registers stage, spend and last order).

Pages are fetched by keyset ("seek") pagination: the next page starts after the sort key of the last row shown,
so the 20,000th page costs what the first costs (no OFFSET). A filter may bring its own version of a sort, keyed
by the table it joins (ListFilter.sorts: lifecycle sorts by the metrics row's copy of first seen), and a walk
that may skip many rows is bounded (WalkWindow), after which the matches are sorted. The total shown is an exact
count up to a cap, then the planner's estimate ("about 980,000"), so a million-row workspace never pays for
COUNT(*).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import BooleanField, F, Func, Q, QuerySet, TextField, Value
from django.db.models.functions import Coalesce
from django.db.models.fields.tuple_lookups import Tuple, TupleGreaterThan, TupleLessThan
from django.utils import timezone

from customers.models import Customer

PAGE_SIZE = 50
# Up to this many matches the page says the exact number; beyond it, the planner's estimate.
EXACT_COUNT_CAP = 10_000
# A walk with a window (WalkWindow) visits at most this many rows before it sorts the matches instead: about
# 20 ms of index walk at 1M customers, and enough for a filter that one customer in 400 matches.
WALK_WINDOW = 20_000
# The sort memory of that sort (PostgreSQL, for the rest of the request's transaction): the 150,000 matches of a
# last-order range at 1M customers take 6-7 MB, and the default 4 MB sends them to disk (a third slower).
SORT_WORK_MEM = "32MB"
MAX_SEARCH_TERMS = 5
MAX_SEARCH_LENGTH = 100


# --- Registry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListColumn:
    """A column of the customer table: how to load it (``annotate``) and what a row shows (``value``)."""

    key: str
    label: str
    value: Callable[[Customer], object]
    annotate: Callable[[QuerySet], QuerySet] | None = None
    sort: str | None = None
    numeric: bool = False
    order: int = 100


@dataclass(frozen=True)
class WalkWindow:
    """How far a page may walk a sort's index before it sorts the matches instead.

    Walking an index in the sort's order and skipping non-matches finds a page at once when matches are
    common where the walk starts; when they are rare there (customers whose last order is two years old
    among the newest customers), the walk visits hundreds of thousands of rows, and the planner, which
    assumes that the filter and the order are independent, cannot tell. ``rows()`` returns the rows the
    walk visits (the walked table, in the workspace in scope), ``fields`` the sort's key as its columns:
    the page walks at most WALK_WINDOW of them, then sorts the remaining matches.
    """

    rows: Callable[[], QuerySet]
    fields: tuple[str, ...]


@dataclass(frozen=True)
class ListSort:
    """An order of the customer list.

    ``fields`` is the whole key, and its last field must be unique (the tie-breaker), so that a page can start
    right after the last row of the previous one. ``nullable``: the first field may be NULL (or its related
    row missing); those customers come last, by id, whichever the direction. ``scope`` narrows the rows that
    do have a value (for instance to join a related table on the workspace, which lets its index be used).
    ``window`` bounds the walk of the rows that have a value (see WalkWindow).
    """

    key: str
    label: str
    fields: tuple[str, ...]
    descending: bool = False
    nullable: bool = False
    scope: Callable[[QuerySet], QuerySet] | None = None
    order: int = 100
    window: WalkWindow | None = None


@dataclass(frozen=True)
class ListFilter:
    """A filter of the customer list: the form fields it reads and how it narrows the queryset.

    ``apply(queryset, values)`` gets the cleaned values of its fields (a dict) and is only called when at
    least one of them is filled in. ``sorts``: orders this filter serves better than the registered ones of the
    same key, because they walk the table it joins (the same order, read from that table's copy of the key):
    while the filter is on, the list sorted by one of these keys walks its fields instead.
    """

    key: str
    label: str
    make_fields: Callable[[], dict[str, forms.Field]]
    apply: Callable[[QuerySet, dict], QuerySet]
    order: int = 100
    sorts: tuple[ListSort, ...] = ()


@dataclass(frozen=True)
class DetailPanel:
    """A panel of the customer page contributed by a higher app (lifecycle: stage and metrics).

    ``context(customer)`` returns the template context of ``template_name``.
    """

    key: str
    title: str
    template_name: str
    context: Callable[[Customer], dict]
    order: int = 100


_filters: dict[str, ListFilter] = {}
_columns: dict[str, ListColumn] = {}
_sorts: dict[str, ListSort] = {}
_panels: dict[str, DetailPanel] = {}


def register_filter(list_filter: ListFilter) -> ListFilter:
    """Add (or replace, by key) a filter of the customer list; returns it."""
    _filters[list_filter.key] = list_filter
    return list_filter


def register_choice_filter(
    key: str, label: str, choices: Iterable[tuple[str, str]], apply: Callable[[QuerySet, str], QuerySet], order=100,
    sorts: tuple[ListSort, ...] = (),
) -> ListFilter:
    """Register a one-of-these filter shown as a select ("Any" first); ``apply(queryset, value)``; ``sorts`` as
    in ListFilter. Returns it."""
    choices = list(choices)

    def make_fields():
        return {key: forms.ChoiceField(label=label, choices=[("", "Any"), *choices], required=False)}

    return register_filter(ListFilter(key, label, make_fields, lambda queryset, values: apply(queryset, values[key]),
                                      order, sorts))


def register_range_filter(
    key: str, label: str, kind: str, apply: Callable[[QuerySet, object, object], QuerySet], order=100,
    sorts: tuple[ListSort, ...] = (),
) -> ListFilter:
    """Register a from/to filter (``kind`` "number" or "date") with fields ``<key>_min`` and ``<key>_max``.

    ``apply(queryset, low, high)`` gets None for an open end; ``sorts`` as in ListFilter. Returns the filter.
    """
    if kind not in ("number", "date"):
        raise ValueError(f"unknown range kind {kind!r}")

    def make_fields():
        if kind == "number":
            def bound(text):
                return forms.DecimalField(label=f"{label} {text}", required=False, min_value=0, max_digits=14,
                                          decimal_places=2, widget=forms.NumberInput(attrs={"step": "any"}))
        else:
            def bound(text):
                return forms.DateField(label=f"{label} {text}", required=False,
                                       widget=forms.DateInput(attrs={"type": "date"}))
        return {f"{key}_min": bound("from"), f"{key}_max": bound("to")}

    def apply_values(queryset, values):
        return apply(queryset, values.get(f"{key}_min"), values.get(f"{key}_max"))

    return register_filter(ListFilter(key, label, make_fields, apply_values, order, sorts))


def register_column(column: ListColumn) -> ListColumn:
    """Add (or replace, by key) a column of the customer table; returns it."""
    _columns[column.key] = column
    return column


def register_sort(sort: ListSort) -> ListSort:
    """Add (or replace, by key) an order of the customer list; returns it."""
    if not sort.fields:
        raise ValueError("a sort needs at least one field")
    _sorts[sort.key] = sort
    return sort


def register_detail_panel(panel: DetailPanel) -> DetailPanel:
    """Add (or replace, by key) a panel of the customer page; returns it."""
    _panels[panel.key] = panel
    return panel


def list_filters() -> list[ListFilter]:
    """Return the registered filters in display order."""
    return sorted(_filters.values(), key=lambda item: (item.order, item.key))


def list_columns() -> list[ListColumn]:
    """Return the registered columns in display order."""
    return sorted(_columns.values(), key=lambda item: (item.order, item.key))


def list_sorts() -> list[ListSort]:
    """Return the registered sorts in display order."""
    return sorted(_sorts.values(), key=lambda item: (item.order, item.key))


def detail_panels() -> list[DetailPanel]:
    """Return the registered customer-page panels in display order."""
    return sorted(_panels.values(), key=lambda item: (item.order, item.key))


def find_sort(value: str | None) -> tuple[ListSort, bool]:
    """Return (sort, descending) for a ``sort`` parameter such as "name" or "-spend"; the default when unknown."""
    value = (value or "").strip()
    descending = value.startswith("-")
    sort = _sorts.get(value.lstrip("-"))
    if sort is None:
        sort = _sorts[DEFAULT_SORT]
        descending = sort.descending
    return sort, descending


def sort_choices() -> list[tuple[str, str]]:
    """Return the choices of the sort select: each order in its natural direction and reversed."""
    choices = []
    for sort in list_sorts():
        first, second = ("-", "") if sort.descending else ("", "-")
        choices.append((f"{first}{sort.key}", sort.label))
        choices.append((f"{second}{sort.key}", f"{sort.label} (reversed)"))
    return choices


# --- Search -----------------------------------------------------------------------------------------

_PHONE_LIKE = re.compile(r"^\+?[\d\s\-()./]{3,}$")


class StartsWith(Func):
    """``column ^@ prefix``: true when the text starts with the prefix.

    LIKE 'x%' would say the same, but under row-level security PostgreSQL may only use an index for leakproof
    operators: ``^@`` is one, LIKE is not. A text_pattern_ops index turns ``^@`` into a range scan.
    """

    output_field = BooleanField()
    template = "(%(expressions)s)"
    arg_joiner = " ^@ "

    def __init__(self, column: str, prefix: str):
        super().__init__(F(column), Value(prefix, output_field=TextField()))

    def as_sqlite(self, compiler, connection, **extra_context):
        column, params = compiler.compile(self.source_expressions[0])
        prefix, prefix_params = compiler.compile(self.source_expressions[1])
        return (f"(substr({column}, 1, length({prefix})) = {prefix})",
                (*params, *prefix_params, *prefix_params))


def search_terms(text: str) -> list[str]:
    """Return the terms a search box text stands for: lowercased words, or one phone number as +digits."""
    text = (text or "").strip()[:MAX_SEARCH_LENGTH]
    if not text:
        return []
    if _PHONE_LIKE.match(text) and sum(ch.isdigit() for ch in text) >= 3:
        # "+49 30 1234-56" and "0049 30..." are one number, stored in E.164 as +4930123456.
        digits = re.sub(r"\D", "", text)
        return ["+" + (digits[2:] if text.lstrip().startswith("00") else digits)]
    return [term.lower() for term in text.split()[:MAX_SEARCH_TERMS]]


def _term_matches(term: str, original: str) -> Q:
    if term.startswith("+"):
        return Q(StartsWith("phone", term))
    # An external id is matched whole and as typed: ids are opaque, pasted rather than typed in part.
    return (Q(StartsWith("last_name_key", term)) | Q(StartsWith("first_name_key", term))
            | Q(StartsWith("email", term)) | Q(external_id=original))


def search_customers(queryset: QuerySet, text: str) -> QuerySet:
    """Return the customers matching every term of ``text``.

    A term matches the start of the first name, last name or e-mail address (case-insensitively), or a whole
    external id; a phone number matches the start of the stored E.164 number. Each is a range scan of a
    (tenant, column) index, so a search stays fast however many customers the workspace has.
    """
    originals = (text or "").strip()[:MAX_SEARCH_LENGTH].split()[:MAX_SEARCH_TERMS]
    terms = search_terms(text)
    for position, term in enumerate(terms):
        original = originals[position] if len(terms) == len(originals) else term
        queryset = queryset.filter(_term_matches(term, original))
    return queryset


# --- Filtering ---------------------------------------------------------------------------------------


def applied_filters(values: dict) -> list[tuple[ListFilter, dict]]:
    """Return the registered filters with at least one field filled in, each with its own values."""
    applied = []
    for list_filter in list_filters():
        own = {name: values.get(name) for name in list_filter.make_fields()}
        if any(value not in (None, "") for value in own.values()):
            applied.append((list_filter, own))
    return applied


def filter_customers(queryset: QuerySet, values: dict) -> QuerySet:
    """Return ``queryset`` narrowed by the search text (``values["q"]``) and every filled-in registered filter."""
    queryset = search_customers(queryset, values.get("q") or "")
    for list_filter, own in applied_filters(values):
        queryset = list_filter.apply(queryset, own)
    return queryset


def walked_sort(sort: ListSort, values: dict) -> ListSort:
    """Return the sort whose fields the page walks: an applied filter's own sort of the same key (see
    ListFilter.sorts), else ``sort`` itself."""
    for list_filter, _ in applied_filters(values):
        for own_sort in list_filter.sorts:
            if own_sort.key == sort.key:
                return own_sort
    return sort


def start_of_day(day: date | None) -> datetime | None:
    """Return the aware datetime at which ``day`` begins in the current time zone (None for None)."""
    if day is None:
        return None
    return timezone.make_aware(datetime.combine(day, time.min))


def end_of_day(day: date | None) -> datetime | None:
    """Return the last aware instant of ``day`` in the current time zone (an inclusive upper bound; None for None)."""
    if day is None:
        return None
    return timezone.make_aware(datetime.combine(day, time.max))


# --- Counting ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchCount:
    """How many customers match: exact, an estimate ("about"), or only a lower bound ("more than")."""

    value: int
    exact: bool = True
    lower_bound: bool = False

    def __str__(self):
        if self.exact:
            return f"{self.value:,}"
        if self.lower_bound:
            return f"more than {self.value:,}"
        return f"about {round_estimate(self.value):,}"


def round_estimate(value: int) -> int:
    """Return ``value`` rounded to two significant digits (an estimate should not look precise)."""
    digits = len(str(int(value)))
    return int(round(value, -(digits - 2))) if digits > 2 else int(value)


def count_matches(queryset: QuerySet, cap: int | None = None) -> MatchCount:
    """Return the number of rows of ``queryset``: exact up to ``cap`` (a LIMITed count), else the planner's estimate.

    On PostgreSQL the estimate comes from EXPLAIN, so it costs a plan, not a scan; elsewhere the answer is
    "more than cap".
    """
    cap = EXACT_COUNT_CAP if cap is None else cap
    queryset = queryset.order_by()
    found = queryset.values("pk")[: cap + 1].count()
    if found <= cap:
        return MatchCount(found)
    if connection.vendor == "postgresql":
        plan = json.loads(queryset.explain(format="json"))
        estimate = int(plan[0]["Plan"]["Plan Rows"])
        if estimate > cap:
            return MatchCount(estimate, exact=False)
    return MatchCount(cap, exact=False, lower_bound=True)


# --- Keyset pagination -----------------------------------------------------------------------------------


@dataclass
class KeysetPage:
    """One page of rows and the tokens of the pages before and after it (None at either end)."""

    rows: list
    next_token: str | None = None
    previous_token: str | None = None
    is_first: bool = True

    @property
    def has_next(self) -> bool:
        return self.next_token is not None

    @property
    def has_previous(self) -> bool:
        return self.previous_token is not None


@dataclass(frozen=True)
class _Segment:
    """A stretch of the ordered list that one index can walk: rows with a sort value, then rows without."""

    queryset: QuerySet
    fields: tuple[str, ...]
    window: WalkWindow | None = None


@dataclass(frozen=True)
class _Cursor:
    segment: int
    values: list = field(default_factory=list)


def _segments(queryset: QuerySet, sort: ListSort) -> list[_Segment]:
    if not sort.nullable:
        return [_Segment(queryset, sort.fields, sort.window)]
    first = sort.fields[0]
    with_value = queryset.filter(**{f"{first}__isnull": False})
    if sort.scope is not None:
        with_value = sort.scope(with_value)
    return [_Segment(with_value, sort.fields, sort.window),
            _Segment(queryset.filter(**{f"{first}__isnull": True}), ("id",))]


def _keyed(segment: _Segment, descending: bool, few: bool = False) -> QuerySet:
    """Return the segment's rows in the sort order, with their key values as ``_key0``, ``_key1``…

    ``few``: the capped count saw every match, so they are at most EXACT_COUNT_CAP. Then sorting them is cheap
    and sure, while walking the sort's index is a gamble on the planner's estimate of how rare they are: for
    two search terms it guesses far too many, walks most of a million-row index and takes seconds. Ordering by
    ``COALESCE(key, key)`` (the same value, but no index holds it) makes it find the matches first, then sort.
    """
    keys = {f"_key{n}": F(name) for n, name in enumerate(segment.fields)}

    def key(name):
        expression = Coalesce(F(name), F(name)) if few else F(name)
        return expression.desc() if descending else expression.asc()

    return segment.queryset.annotate(**keys).order_by(*[key(name) for name in segment.fields])


def _after(queryset: QuerySet, segment: _Segment, values: list, descending: bool) -> QuerySet:
    """Rows strictly after ``values`` in the walking direction (a row-value comparison an index can seek to)."""
    return _after_key(queryset, segment.fields, values, descending)


def _after_key(queryset: QuerySet, fields: tuple[str, ...], values: list, descending: bool) -> QuerySet:
    columns = Tuple(*[F(name) for name in fields])
    comparison = TupleLessThan(columns, values) if descending else TupleGreaterThan(columns, values)
    # The redundant bound on the first column lets PostgreSQL start the index scan there even when the
    # tie-breaker lives in another table than the index.
    first_bound = {f"{fields[0]}__{'lte' if descending else 'gte'}": values[0]}
    return queryset.filter(comparison, **first_bound)


def _window_end(window: WalkWindow, values: list | None, descending: bool):
    """Return the first key of the row WALK_WINDOW rows along the walk from ``values`` (None: from the start),
    or None when fewer rows are left (one index-only walk of the sort's own index)."""
    rows = window.rows().filter(**{f"{window.fields[0]}__isnull": False})
    if values is not None:
        rows = _after_key(rows, window.fields, values, descending)
    ordered = rows.order_by(*[F(name).desc() if descending else F(name).asc() for name in window.fields])
    return next(iter(ordered.values_list(window.fields[0], flat=True)[WALK_WINDOW:WALK_WINDOW + 1]), None)


def _segment_rows(segment: _Segment, values: list | None, descending: bool, limit: int, few: bool) -> list:
    """Return up to ``limit`` rows of the segment after ``values`` (None: from its start) walking in
    ``descending`` order: one query; with a window, the rows within it, then the rest sorted (see WalkWindow)."""

    def rows(after, *, sort_them=few, within=None):
        queryset = _keyed(segment, descending, sort_them)
        if after is not None:
            queryset = _after(queryset, segment, after, descending)
        if within is not None:
            queryset = queryset.filter(**{f"{segment.fields[0]}__{'gte' if descending else 'lte'}": within})
        return list(queryset[:limit])

    if segment.window is None or few:
        return rows(values)
    end = _window_end(segment.window, values, descending)
    found = rows(values, within=end)
    if end is None or len(found) >= limit:
        return found
    # The window held fewer matches than asked for: they are rare along this walk, so sort the rest of them.
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL work_mem = '{SORT_WORK_MEM}'")
    rest = rows(_row_values(found[-1], segment) if found else values, sort_them=True)
    return found + rest[:limit - len(found)]


def _row_values(row, segment: _Segment) -> list:
    return [getattr(row, f"_key{n}") for n in range(len(segment.fields))]


def _walk(segments, cursor: _Cursor | None, descending: bool, limit: int, few: bool = False) -> list[tuple[int, object]]:
    """Return up to ``limit`` (segment index, row) pairs after ``cursor`` walking in ``descending`` order."""
    found = []
    start = 0 if cursor is None else cursor.segment
    for index in range(start, len(segments)):
        values = cursor.values if cursor is not None and index == cursor.segment else None
        rows = _segment_rows(segments[index], values, descending, limit - len(found), few)
        found.extend((index, row) for row in rows)
        if len(found) >= limit:
            break
    return found


def _walk_back(segments, cursor: _Cursor, descending: bool, limit: int, few: bool = False) -> list[tuple[int, object]]:
    """Return up to ``limit`` (segment index, row) pairs before ``cursor``, nearest first."""
    found = []
    for index in range(cursor.segment, -1, -1):
        values = cursor.values if index == cursor.segment else None
        rows = _segment_rows(segments[index], values, not descending, limit - len(found), few)
        found.extend((index, row) for row in rows)
        if len(found) >= limit:
            break
    return found


def encode_token(sort: ListSort, descending: bool, segment: int, values: list) -> str:
    """Return the URL-safe token of a position in the list (the sort key of a row)."""
    encoded = [value.isoformat() if isinstance(value, (datetime, date)) else
               str(value) if isinstance(value, Decimal) else value for value in values]
    payload = json.dumps({"s": sort.key, "d": int(descending), "g": segment, "k": encoded}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(token: str | None, sort: ListSort, descending: bool, segments: list[_Segment]) -> _Cursor | None:
    """Return the cursor a token stands for, or None when it is missing, malformed or made for another order."""
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if payload["s"] != sort.key or bool(payload["d"]) != descending:
            return None
        segment_index = int(payload["g"])
        if not 0 <= segment_index < len(segments):
            return None
        segment = segments[segment_index]
        raw_values = payload["k"]
        if not isinstance(raw_values, list) or len(raw_values) != len(segment.fields):
            return None
        output_fields = _output_fields(segment)
        values = [output_field.to_python(value) for output_field, value in zip(output_fields, raw_values)]
        if any(value is None for value in values):
            return None
        return _Cursor(segment_index, values)
    except (ValueError, KeyError, TypeError, binascii.Error, ValidationError, UnicodeDecodeError):
        return None


def _output_fields(segment: _Segment) -> list:
    queryset = segment.queryset.annotate(**{f"_key{n}": F(name) for n, name in enumerate(segment.fields)})
    return [queryset.query.annotations[f"_key{n}"].output_field for n in range(len(segment.fields))]


def fetch_page(
    queryset: QuerySet, sort: ListSort, descending: bool, *, after: str | None = None, before: str | None = None,
    size: int | None = None, few: bool = False,
) -> KeysetPage:
    """Return the page of ``queryset`` in the given order starting after token ``after`` (or ending before ``before``).

    Without a valid token it is the first page. One query per page (two where the rows with a sort value end
    and those without begin). ``few``: ``queryset`` is known to hold at most EXACT_COUNT_CAP rows (see _keyed).
    """
    size = size or PAGE_SIZE
    segments = _segments(queryset, sort)
    cursor_after = decode_token(after, sort, descending, segments)
    cursor_before = None if cursor_after else decode_token(before, sort, descending, segments)

    if cursor_before is not None:
        found = _walk_back(segments, cursor_before, descending, size + 1, few)
        if len(found) > size:
            found = found[:size]
            found.reverse()
            return _page(found, sort, descending, segments, has_next=True, has_previous=True)
        # Fewer rows than a page lie before it: show the first page, full.
        cursor_before = None

    found = _walk(segments, cursor_after, descending, size + 1, few)
    has_next = len(found) > size
    return _page(found[:size], sort, descending, segments, has_next=has_next, has_previous=cursor_after is not None)


def _page(found, sort, descending, segments, *, has_next: bool, has_previous: bool) -> KeysetPage:
    rows = [row for _, row in found]
    page = KeysetPage(rows=rows, is_first=not has_previous)
    if found and has_next:
        index, row = found[-1]
        page.next_token = encode_token(sort, descending, index, _row_values(row, segments[index]))
    if found and has_previous:
        index, row = found[0]
        page.previous_token = encode_token(sort, descending, index, _row_values(row, segments[index]))
    return page


# --- The list, assembled ---------------------------------------------------------------------------------


@dataclass
class CustomerListing:
    """What the customer list page shows: the page of customers, how many match, the columns and the order."""

    page: KeysetPage
    count: MatchCount
    columns: list[ListColumn]
    sort: ListSort
    descending: bool

    @property
    def rows(self) -> list[tuple[Customer, list[dict]]]:
        """Return each customer of the page with its cells: ``{"value": shown text, "numeric": bool}``."""
        return [
            (customer, [{"value": column.value(customer), "numeric": column.numeric} for column in self.columns])
            for customer in self.page.rows
        ]


def list_customers(values: dict, *, after: str | None = None, before: str | None = None,
                   size: int | None = None) -> CustomerListing:
    """Return the listing for cleaned list-form ``values`` (search, filters, sort) in the workspace in scope."""
    sort, descending = find_sort(values.get("sort"))
    sort = walked_sort(sort, values)
    columns = list_columns()
    matching = filter_customers(Customer.objects.all(), values)
    count = count_matches(matching)
    shown = matching
    for column in columns:
        if column.annotate is not None:
            shown = column.annotate(shown)
    page = fetch_page(shown, sort, descending, after=after, before=before, size=size, few=count.exact)
    return CustomerListing(page=page, count=count, columns=columns, sort=sort, descending=descending)


# --- Core registrations ------------------------------------------------------------------------------------

DEFAULT_SORT = "first_seen"


def _opt_in_filter(field_name):
    def apply(queryset, value):
        return queryset.filter(**{field_name: value == "yes"})

    return apply


def format_date(value: datetime | None) -> str:
    """Return the local calendar date of an aware datetime as YYYY-MM-DD ("" for None)."""
    return timezone.localtime(value).strftime("%Y-%m-%d") if value else ""


register_choice_filter("email_consent", "E-mail consent", [("yes", "Opted in"), ("no", "Not opted in")],
                       _opt_in_filter("email_opt_in"), order=20)
register_choice_filter("sms_consent", "SMS consent", [("yes", "Opted in"), ("no", "Not opted in")],
                       _opt_in_filter("sms_opt_in"), order=21)
register_range_filter("first_seen", "First seen", "date",
                      lambda queryset, low, high: queryset.filter(
                          **({"first_seen_at__gte": start_of_day(low)} if low else {}),
                          **({"first_seen_at__lte": end_of_day(high)} if high else {})),
                      order=60)

register_sort(ListSort("name", "Name", ("last_name_key", "first_name_key", "id"), order=10))
register_sort(ListSort("first_seen", "First seen", ("first_seen_at", "id"), descending=True, order=60))

register_column(ListColumn("email", "E-mail", lambda customer: customer.email, order=10))
register_column(ListColumn("phone", "Phone", lambda customer: customer.phone, order=20))
register_column(ListColumn("consent", "Consent",
                           lambda customer: ", ".join(name for name, given in
                                                      (("e-mail", customer.email_opt_in), ("SMS", customer.sms_opt_in))
                                                      if given) or "none",
                           order=30))
register_column(ListColumn("first_seen", "First seen", lambda customer: format_date(customer.first_seen_at),
                           sort="first_seen", order=60))
