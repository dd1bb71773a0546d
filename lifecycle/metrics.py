"""Per-customer metrics of a workspace from one set-based pass over its orders, scored in pandas.

The pipeline of a refresh:

1. ``load_customer_orders`` reads the workspace's customers and orders once and aggregates per customer
   (first/last order, counts, revenue net of refunds, trailing 12-month revenue, and the usual
   inter-purchase gap: the median of the gaps between consecutive purchase days). On PostgreSQL the
   orders stream to numpy as packed records in parts (lifecycle.packed_reads), and ``OrderTotals`` adds up
   each part as it arrives; on SQLite one query does it, with ``LAG`` over the customer's orders in time order.
2. ``add_calendar_days`` turns timestamps into whole days in each customer's own time zone (an order
   at 23:30 in Los Angeles is on that day there, whatever the UTC date says).
3. ``fit_population`` fits the buy-till-you-die models (lifecycle.predictive) on the workspace's
   customers and fixes the RFM quintile cut-points; with too little data the workspace falls back to
   rule-based predictions and says why.
4. ``score`` applies them: RFM scores and segment, historic and predicted 12-month CLV, P(alive),
   expected purchases.

Purchase days (not orders) are what the models count, as in the BG/NBD paper: two orders on one day
are one purchase occasion. Day boundaries for the models and gaps are the workspace's time zone, so
the orders need no join on customers.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import psycopg
from django.db import connection

from lifecycle import predictive
from lifecycle.packed_reads import packed_parts

MIN_REPEAT_CUSTOMERS = 200
FIT_SAMPLE_SIZE = 100_000  # the population parameters are as precise from a 100k sample, and 10x faster to fit
HORIZON_DAYS = 365
COUNTED_STATUSES = ("placed", "partially_refunded")  # cancelled and fully refunded orders are not purchases

RFM_SEGMENT_LABELS = {
    "champions": "Champions",
    "loyal": "Loyal",
    "potential_loyalists": "Potential loyalists",
    "new": "New customers",
    "promising": "Promising",
    "needs_attention": "Needs attention",
    "about_to_sleep": "About to sleep",
    "cant_lose": "Can't lose them",
    "slipping": "Slipping away",
    "hibernating": "Hibernating",
    "lost": "Lost",
}


# --- 1. The one pass over the orders ---------------------------------------------------------------
# On PostgreSQL the orders of the workspace stream to numpy (lifecycle.packed_reads: 24-byte records, page
# ranges read on two connections sharing one snapshot), which aggregates them per customer: PostgreSQL runs a
# window (LAG) or an ordered-set aggregate (PERCENTILE_CONT) in one process only, and that took six times as
# long as a parallel GROUP BY at 10M orders. The customers are read first, packed per time zone, on this
# connection; each part of the orders is then added up while the server reads the next ones.

# The net amount comes in cents from the order's stored generated column: numeric arithmetic per order was
# about half of the server's time in this read.
_PACKED_ORDERS = """
SELECT string_agg(int8send(customer_id) || timestamptz_send(placed_at) || int8send(net_cents), ''::bytea)
FROM customers_order
WHERE tenant_id = %(tenant)s AND status IN ('placed', 'partially_refunded') AND placed_at <= %(as_of)s {condition}
"""
_ORDER_RECORD = np.dtype([("customer_id", ">i8"), ("placed_at", ">i8"), ("net_cents", ">i8")])
_PACKED_CUSTOMERS = """
SELECT time_zone, string_agg(int8send(id) || timestamptz_send(first_seen_at), ''::bytea)
FROM customers_customer
WHERE tenant_id = %(tenant)s AND erased_at IS NULL {condition}
GROUP BY time_zone
"""
_CUSTOMER_RECORD = np.dtype([("customer_id", ">i8"), ("signed_up_at", ">i8")])
PG_EPOCH_MICROSECONDS = 946_684_800_000_000  # 2000-01-01, PostgreSQL's timestamp zero, in Unix microseconds
_DAY_MICROSECONDS = 86_400_000_000

# SQLite (the embedded default) aggregates in SQL: a window for the gaps and two small Python functions for
# the time zones and the median.
_SQLITE_QUERY = """
WITH dated AS (
    SELECT o.customer_id, o.placed_at, o.total - o.refunded_amount AS net,
           rapport_local_date(o.placed_at, %(tz)s) AS day
    FROM customers_order o
    WHERE o.tenant_id = %(tenant)s AND o.status IN ('placed', 'partially_refunded')
      AND o.placed_at <= %(as_of)s {order_customer_filter}
), sequenced AS (
    SELECT customer_id, placed_at, net, day,
           CAST(julianday(day) - julianday(LAG(day) OVER customer_orders) AS INTEGER) AS gap,
           FIRST_VALUE(day) OVER customer_orders AS first_day
    FROM dated
    WINDOW customer_orders AS (PARTITION BY customer_id ORDER BY placed_at)
), per_customer AS MATERIALIZED (
    SELECT customer_id,
           MIN(placed_at) AS first_order_at,
           MAX(placed_at) AS last_order_at,
           COUNT(*) AS order_count,
           1 + COUNT(*) FILTER (WHERE gap > 0) AS purchase_days,
           SUM(net) AS revenue,
           COALESCE(SUM(net) FILTER (WHERE placed_at > %(year_ago)s), 0) AS trailing_revenue_12m,
           COUNT(*) FILTER (WHERE placed_at > %(year_ago)s) AS orders_12m,
           COALESCE(SUM(net) FILTER (WHERE day <> first_day), 0) AS repeat_revenue,
           CAST(julianday(MAX(day)) - julianday(MIN(day)) AS INTEGER) AS span_days,
           rapport_median(gap) FILTER (WHERE gap > 0) AS usual_gap_days
    FROM sequenced
    GROUP BY customer_id
)
SELECT c.id AS customer_id, c.time_zone, c.first_seen_at AS signed_up_at,
       p.first_order_at, p.last_order_at, COALESCE(p.order_count, 0) AS order_count,
       COALESCE(p.purchase_days, 0) AS purchase_days, COALESCE(p.revenue, 0) AS revenue,
       COALESCE(p.trailing_revenue_12m, 0) AS trailing_revenue_12m, COALESCE(p.orders_12m, 0) AS orders_12m,
       COALESCE(p.repeat_revenue, 0) AS repeat_revenue, COALESCE(p.span_days, 0) AS span_days,
       p.usual_gap_days
FROM customers_customer c
LEFT JOIN per_customer p ON p.customer_id = c.id
WHERE c.tenant_id = %(tenant)s AND c.erased_at IS NULL {customer_filter}
ORDER BY c.id
"""

FRAME_COLUMNS = [
    "customer_id", "time_zone", "signed_up_at", "first_order_at", "last_order_at", "order_count", "purchase_days",
    "revenue", "trailing_revenue_12m", "orders_12m", "repeat_revenue", "span_days", "usual_gap_days",
]


def load_customer_orders(tenant_id: int, as_of: dt.datetime, workspace_tz: str, customer_ids=None, *,
                         after_reading=None) -> pd.DataFrame:
    """Return one row per (non-erased) customer of the workspace with their order aggregates as of ``as_of``:
    first/last order, counts, revenue net of refunds, trailing 12-month revenue and orders, purchase days
    (distinct days in the workspace's zone), revenue after the first purchase day, the span between the first
    and last purchase day, and the usual gap (the median of the gaps between consecutive purchase days).

    Customers without orders have zero counts and no dates. ``time_zone`` is the customer's own zone,
    or the workspace's when blank or unknown. ``after_reading()``, if given, is called as soon as the server has
    sent the orders, so that other work can start there while this process adds them up. Must run inside the
    workspace's tenant scope.
    """
    params = {
        "tenant": tenant_id,
        "as_of": as_of,
        "year_ago": as_of - dt.timedelta(days=365),
        "tz": workspace_tz,
    }
    if customer_ids is not None:
        customer_ids = sorted({int(pk) for pk in customer_ids})
    connection.ensure_connection()
    if connection.vendor == "postgresql":
        frame = _postgres_frame(params, customer_ids, after_reading)
    else:
        frame = _sqlite_frame(params, customer_ids)
        if after_reading is not None:
            after_reading()
    return _typed(frame, workspace_tz)


def _sqlite_frame(params: dict, customer_ids) -> pd.DataFrame:
    filters = {"order_customer_filter": "", "customer_filter": ""}
    if customer_ids is not None:
        params = {**params, "customer_ids": json.dumps(customer_ids)}
        filters = {"order_customer_filter": "AND o.customer_id IN (SELECT value FROM json_each(%(customer_ids)s))",
                   "customer_filter": "AND c.id IN (SELECT value FROM json_each(%(customer_ids)s))"}
    _register_sqlite_functions()
    with connection.cursor() as cursor:
        cursor.execute(_SQLITE_QUERY.format(**filters), params)
        return pd.DataFrame(cursor.fetchall(), columns=FRAME_COLUMNS)


def _postgres_frame(params: dict, customer_ids, after_reading) -> pd.DataFrame:
    condition = ""
    if customer_ids is not None:
        params = {**params, "customer_ids": customer_ids}
        condition = "AND {column} = ANY(%(customer_ids)s)"
    with packed_parts(_PACKED_ORDERS, params, _ORDER_RECORD, table="customers_order",
                      condition=condition.format(column="customer_id"), when_read=after_reading) as parts:
        # This connection reads the customers while the others read the orders; each part of the orders is
        # then added up as it arrives, while the server reads the next.
        totals = OrderTotals(_read_customers(params, condition.format(column="id")), params["year_ago"],
                             params["tz"])
        for part in parts:
            totals.add(part)
    return totals.frame()


def _read_customers(params: dict, condition: str) -> pd.DataFrame:
    """Return the customers (id, time zone, first seen), sorted by id, packed per time zone by the server."""
    # A server-binding cursor, not Django's client-side one: results in binary, so bytea arrives as bytes.
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_PACKED_CUSTOMERS.format(condition=condition), params, binary=True)
        groups = cursor.fetchall()
    parts = [np.frombuffer(packed, dtype=_CUSTOMER_RECORD) for _, packed in groups]
    records = np.concatenate(parts) if parts else np.empty(0, dtype=_CUSTOMER_RECORD)
    zones = np.repeat(np.array([zone for zone, _ in groups], dtype=object), [len(part) for part in parts])
    by_id = np.argsort(records["customer_id"], kind="stable")
    signed_up = (records["signed_up_at"][by_id].astype(np.int64) + PG_EPOCH_MICROSECONDS).astype("datetime64[us]")
    return pd.DataFrame({
        "customer_id": records["customer_id"][by_id].astype(np.int64),
        "time_zone": pd.array(zones[by_id], dtype="string"),
        "signed_up_at": pd.DatetimeIndex(signed_up).tz_localize("UTC"),
    })


def _unix_microseconds(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


_NEVER, _EVER = np.iinfo(np.int64).max, np.iinfo(np.int64).min


class OrderTotals:
    """The FRAME_COLUMNS aggregates of a workspace's customers, from their orders added part by part (arrays of
    ``_ORDER_RECORD`` records in this machine's byte order: customer id, placed_at in PostgreSQL microseconds,
    net amount in cents), in any order and any split; orders of other customers are ignored.

    Counts, sums (in integer cents), first and last order and the revenue of the first purchase day are kept per
    customer as parts arrive; each order's customer position and purchase day (a calendar day in the
    workspace's zone) are kept for the end, where sorting one key per order (position, then day) gives each
    customer's purchase days in order, and the gaps between them.
    """

    def __init__(self, customers: pd.DataFrame, year_ago: dt.datetime, workspace_tz: str):
        self.customers = customers.reset_index(drop=True)
        self.workspace_tz = workspace_tz
        self._year_ago = _unix_microseconds(year_ago) - PG_EPOCH_MICROSECONDS
        self._position_of = position_lookup(self.customers["customer_id"].to_numpy(dtype=np.int64))
        size = len(self.customers)
        self.order_count, self.revenue_cents = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
        self.orders_12m, self.trailing_cents = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
        self.first_order, self.last_order = np.full(size, _NEVER), np.full(size, _EVER)
        self.first_day, self.first_day_cents = np.full(size, _NEVER), np.zeros(size, dtype=np.int64)
        self._part_first_day, self._part_first_day_cents = np.empty(size, dtype=np.int64), np.empty(size, np.int64)
        self._positions: list[np.ndarray] = []
        self._days: list[np.ndarray] = []

    def add(self, orders: np.ndarray) -> None:
        """Add a part of the orders."""
        # Contiguous copies of the fields with numpy's own int64 type: ufunc.at takes its fast path (twenty times
        # faster) only for those, not for a record field's view or a copy of it that keeps the field's dtype.
        placed_at, net = orders["placed_at"].astype(np.int64), orders["net_cents"].astype(np.int64)
        position = self._position_of(orders["customer_id"])
        known = position >= 0
        if not known.all():
            position, placed_at, net = position[known], placed_at[known], net[known]
        np.add.at(self.order_count, position, 1)
        np.add.at(self.revenue_cents, position, net)
        recent = placed_at > self._year_ago
        np.add.at(self.orders_12m, position[recent], 1)
        np.add.at(self.trailing_cents, position[recent], net[recent])
        np.minimum.at(self.first_order, position, placed_at)
        np.maximum.at(self.last_order, position, placed_at)
        day = _local_day_numbers(placed_at, self.workspace_tz)
        # The first purchase day and its revenue in this part, merged into the ones of the parts before.
        part_first, part_cents = self._part_first_day, self._part_first_day_cents
        part_first.fill(_NEVER)
        part_cents.fill(0)
        np.minimum.at(part_first, position, day)
        on_first = day == part_first[position]
        np.add.at(part_cents, position[on_first], net[on_first])
        self.first_day_cents = np.where(part_first < self.first_day, part_cents,
                                        self.first_day_cents + np.where(part_first == self.first_day, part_cents, 0))
        np.minimum(self.first_day, part_first, out=self.first_day)
        self._positions.append(position.astype(np.int32))
        self._days.append(day.astype(np.int32))

    def frame(self) -> pd.DataFrame:
        """Return the customers (sorted by id) with the FRAME_COLUMNS aggregates of the orders added."""
        frame = self.customers
        size = len(frame)
        keys, day_bits = self._purchase_keys()
        keys.sort()
        # One key per purchase day; within a customer, consecutive keys differ by the gap in days.
        purchase = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
        del keys
        customer = purchase >> purchase.dtype.type(day_bits)
        same_customer = customer[1:] == customer[:-1]
        starts = np.flatnonzero(np.r_[True, ~same_customer]) if len(purchase) else np.zeros(0, dtype=np.intp)
        ends = np.r_[starts[1:] - 1, len(purchase) - 1] if len(starts) else starts
        buyer = customer[starts].astype(np.intp)  # the customers with a purchase, in order
        day_mask = purchase.dtype.type((1 << day_bits) - 1)
        purchase_days = np.zeros(size, dtype=np.int64)
        purchase_days[buyer] = ends - starts + 1
        span_days = np.zeros(size, dtype=np.int64)
        span_days[buyer] = (purchase[ends] & day_mask).astype(np.int64) - (purchase[starts] & day_mask)

        # The gaps between consecutive purchase days of each customer, sorted within the customer for the median.
        # They come in customer order already: a merge sort (numpy's stable kind) sorts such runs several times
        # faster.
        gaps = np.diff(purchase)[same_customer]
        gaps |= customer[1:][same_customer] << purchase.dtype.type(day_bits)
        del purchase, customer, same_customer
        gaps.sort(kind="stable")
        gap_values = (gaps & day_mask).astype(float)
        gap_count = purchase_days[buyer] - 1
        gap_start = np.cumsum(gap_count) - gap_count
        has_gap = gap_count > 0
        usual_gap = np.full(size, np.nan)
        lower = gap_start[has_gap] + (gap_count[has_gap] - 1) // 2
        upper = gap_start[has_gap] + gap_count[has_gap] // 2
        usual_gap[buyer[has_gap]] = (gap_values[lower] + gap_values[upper]) / 2  # PERCENTILE_CONT(0.5)

        bought = self.order_count > 0
        frame["first_order_at"] = _moments(np.where(bought, self.first_order, 0) + PG_EPOCH_MICROSECONDS, bought)
        frame["last_order_at"] = _moments(np.where(bought, self.last_order, 0) + PG_EPOCH_MICROSECONDS, bought)
        frame["order_count"] = self.order_count
        frame["purchase_days"] = purchase_days
        frame["revenue"] = self.revenue_cents / 100
        frame["trailing_revenue_12m"] = self.trailing_cents / 100
        frame["orders_12m"] = self.orders_12m
        frame["repeat_revenue"] = (self.revenue_cents - self.first_day_cents) / 100
        frame["span_days"] = span_days
        frame["usual_gap_days"] = usual_gap
        return frame[FRAME_COLUMNS]

    def _purchase_keys(self) -> tuple[np.ndarray, int]:
        """Return one key per order, the customer's position in the high bits and the day (since the first order
        of all) in the low ``day_bits``: 32 bits when they fit (a million customers over eleven years), which
        numpy sorts nearly twice as fast. Built part by part, without concatenating positions and days."""
        first_day = min((int(days.min()) for days in self._days if len(days)), default=0)
        last_day = max((int(days.max()) for days in self._days if len(days)), default=0)
        day_bits = max((last_day - first_day).bit_length(), 1)
        key_type = np.uint32 if max(len(self.customers) - 1, 1).bit_length() + day_bits <= 32 else np.uint64
        keys = np.empty(sum(len(days) for days in self._days), dtype=key_type)
        start = 0
        for position, days in zip(self._positions, self._days):
            part = keys[start:start + len(days)]
            np.left_shift(position, day_bits, out=part, dtype=key_type, casting="unsafe")
            part |= (days - first_day).astype(key_type)
            start += len(days)
        self._positions, self._days = [], []
        return keys, day_bits


def _local_day_numbers(pg_microseconds: np.ndarray, zone: str) -> np.ndarray:
    """Return the calendar day (days since 1970-01-01) in ``zone`` of each moment, given in PostgreSQL microseconds."""
    unix = (pg_microseconds + PG_EPOCH_MICROSECONDS).view("datetime64[us]")
    wall = pd.DatetimeIndex(unix).tz_localize("UTC").tz_convert(zone).tz_localize(None)
    return wall.asi8 // _DAY_MICROSECONDS


def position_lookup(ids: np.ndarray):
    """Return a function giving the position of each value in the sorted ``ids``, -1 where it is not there."""
    if not len(ids):
        return lambda values: np.full(len(values), -1, dtype=np.intp)
    low, high = int(ids[0]), int(ids[-1])
    if high - low < 4 * len(ids):  # a workspace's ids are mostly one run: a lookup table beats a binary search
        # Padded with a -1 on each side, for the values below and above the ids (``take`` clips to them).
        table = np.full(high - low + 3, -1, dtype=np.intp)
        table[ids - low + 1] = np.arange(len(ids))
        return lambda values: np.take(table, values - (low - 1), mode="clip")

    def search(values):
        position = np.minimum(np.searchsorted(ids, values), len(ids) - 1)
        return np.where(ids[position] == values, position, -1)
    return search


def _moments(microseconds: np.ndarray, present: np.ndarray) -> pd.Series:
    values = np.where(present, microseconds, 0).astype("datetime64[us]")
    return pd.Series(pd.DatetimeIndex(values).tz_localize("UTC")).where(present)


def _typed(frame: pd.DataFrame, workspace_tz: str) -> pd.DataFrame:
    for column in ("signed_up_at", "first_order_at", "last_order_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    for column in ("order_count", "purchase_days", "orders_12m", "span_days"):
        frame[column] = pd.to_numeric(frame[column]).fillna(0).astype("int64")
    for column in ("revenue", "trailing_revenue_12m", "repeat_revenue", "usual_gap_days"):
        frame[column] = pd.to_numeric(frame[column]).astype("float64")
    frame["customer_id"] = frame["customer_id"].astype("int64")
    frame["time_zone"] = resolve_time_zones(frame["time_zone"], workspace_tz)
    return frame


def resolve_time_zones(zones: pd.Series, default_tz: str) -> pd.Series:
    """Return each customer's IANA zone name, the workspace's where theirs is blank or not a known zone.

    Each distinct name is looked at once (a million customers have a few dozen).
    """
    codes, names = pd.factorize(zones.astype(object), use_na_sentinel=False)
    resolved = []
    for name in names:
        name = name.strip() if isinstance(name, str) else ""
        resolved.append(name if name and _is_zone(name) else default_tz)
    return pd.Series(np.array(resolved, dtype=object)[codes], index=zones.index).astype("string")


def _is_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _register_sqlite_functions() -> None:
    raw = connection.connection

    def local_date(value, zone):
        if value is None:
            return None
        moment = dt.datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.astimezone(zoneinfo.ZoneInfo(zone)).date().isoformat()

    class Median:
        def __init__(self):
            self.values = []

        def step(self, value):
            if value is not None:
                self.values.append(value)

        def finalize(self):
            return float(np.median(self.values)) if self.values else None

    raw.create_function("rapport_local_date", 2, local_date, deterministic=True)
    raw.create_aggregate("rapport_median", 1, Median)


# --- 2. Days in the customer's own calendar --------------------------------------------------------


def _local_days(moments: pd.Series, rows_by_zone: list[tuple[str, np.ndarray]]) -> pd.Series:
    """Return the calendar day (midnight, tz-naive) of each UTC moment in its row's time zone."""
    utc = pd.DatetimeIndex(moments.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]"))
    days = np.empty(len(moments), dtype="datetime64[us]")
    for zone, rows in rows_by_zone:
        days[rows] = utc[rows].tz_localize("UTC").tz_convert(zone).tz_localize(None).normalize().to_numpy()
    return pd.Series(days, index=moments.index)


def add_calendar_days(frame: pd.DataFrame, now: dt.datetime) -> pd.DataFrame:
    """Return ``frame`` with today's date and the first/last order and sign-up dates in each customer's zone,
    and the whole days since each (NaN where there is no such date).

    A frame this function already returned for the same ``now`` (or a selection of its rows) is returned as
    it is: fitting, scoring and classifying each ask, and a million customers take a second.
    """
    if frame.attrs.get("calendar_days_as_of") == now and "days_since_signup" in frame:
        return frame.copy(deep=False)
    frame = frame.copy()
    codes, zones = pd.factorize(frame["time_zone"].astype("string"))
    rows_by_zone = [(zone, np.flatnonzero(codes == code)) for code, zone in enumerate(zones)]
    today = pd.Timestamp(now).tz_convert("UTC")
    today_by_zone = np.array([today.tz_convert(zone).tz_localize(None).normalize().to_datetime64() for zone in zones],
                             dtype="datetime64[us]")
    frame["today_local"] = pd.Series(today_by_zone[codes], index=frame.index)
    for name, column in (("first_order", "first_order_at"), ("last_order", "last_order_at"),
                         ("signup", "signed_up_at")):
        frame[f"{name}_local"] = _local_days(frame[column], rows_by_zone)
        frame[f"days_since_{name}"] = (frame["today_local"] - frame[f"{name}_local"]).dt.days
    frame.attrs["calendar_days_as_of"] = now
    return frame


# --- 3. The population: fitted model and cut-offs ------------------------------------------------


@dataclass
class Population:
    """What a full refresh learns from all customers and incremental refreshes reuse."""

    model_kind: str = "rules"
    bgnbd: dict | None = None
    gamma_gamma: dict | None = None
    fallback_reason: str = ""
    rfm_cutpoints: dict = field(default_factory=dict)
    heavy_user_threshold: float | None = None
    customers: int = 0
    repeat_customers: int = 0

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Population:
        known = {name: value for name, value in (data or {}).items() if name in cls.__dataclass_fields__}
        return cls(**known)


def model_inputs(frame: pd.DataFrame, workspace_tz: str, now: dt.datetime) -> pd.DataFrame:
    """Return the buy-till-you-die summary per customer in days: frequency x, recency t_x, age T, mean repeat value."""
    today = pd.Timestamp(now).tz_convert(workspace_tz).tz_localize(None).normalize()
    first_day = frame["first_order_at"].dt.tz_convert(workspace_tz).dt.tz_localize(None).dt.normalize()
    frequency = (frame["purchase_days"] - 1).clip(lower=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        monetary = np.where(frequency > 0, frame["repeat_revenue"] / frequency.replace(0, np.nan), np.nan)
    return pd.DataFrame({
        "frequency": frequency,
        "recency": frame["span_days"].astype(float),
        "T": (today - first_day).dt.days.astype(float),
        "monetary": monetary,
    }, index=frame.index)


def fit_population(frame: pd.DataFrame, *, workspace_tz: str, now: dt.datetime, heavy_user_share: float,
                   min_repeat_customers: int = MIN_REPEAT_CUSTOMERS, previous: Population | None = None) -> Population:
    """Return the population learnt from all customers: BG/NBD + Gamma-Gamma parameters (or why not), RFM
    quintile cut-points and the heavy-user revenue threshold.

    The fits start from ``previous`` (the workspace's last full refresh) when it has fitted models: the nightly
    refit then converges in a few steps to the same optimum instead of searching from scratch.
    """
    from lifecycle.stages import heavy_user_threshold

    # Columns selected by a mask, not the (wide) frame: copying every column of a million rows took longer.
    bought = (frame["order_count"] > 0).to_numpy()
    population = Population(customers=len(frame))
    if bought.any():
        calendar = add_calendar_days(frame, now)
        quantiles = [0.2, 0.4, 0.6, 0.8]
        population.rfm_cutpoints = {
            name: [float(v) for v in np.quantile(calendar[column].to_numpy()[bought], quantiles)]
            for name, column in (("recency", "days_since_last_order"), ("frequency", "order_count"),
                                 ("monetary", "revenue"))
        }
    population.heavy_user_threshold = heavy_user_threshold(frame["trailing_revenue_12m"], heavy_user_share)

    inputs = model_inputs(frame, workspace_tz, now)[bought]
    population.repeat_customers = int((inputs["frequency"] > 0).sum())
    if population.repeat_customers < min_repeat_customers:
        population.fallback_reason = (
            f"only {population.repeat_customers} repeat customers; the BG/NBD model needs {min_repeat_customers}"
        )
        return population
    sample = inputs
    if len(sample) > FIT_SAMPLE_SIZE:
        sample = inputs.sample(n=FIT_SAMPLE_SIZE, random_state=np.random.default_rng(20050101))
    try:
        bgnbd = predictive.fit_bgnbd(sample["frequency"], sample["recency"], sample["T"],
                                     previous=previous.bgnbd if previous else None)
    except predictive.FitError as error:
        population.fallback_reason = f"the BG/NBD fit failed: {error}"
        return population
    population.model_kind = "bgnbd"
    population.bgnbd = bgnbd.as_dict()
    try:
        population.gamma_gamma = predictive.fit_gamma_gamma(
            sample["frequency"], sample["monetary"], previous=previous.gamma_gamma if previous else None).as_dict()
    except predictive.FitError as error:
        # Purchases are still predicted; spend per purchase falls back to the customer's average order.
        population.fallback_reason = f"spend per purchase is each customer's average order: {error}"
    return population


# --- 4. Scores -------------------------------------------------------------------------------------


def _quintile(values: pd.Series, cutpoints: list[float], higher_is_better: bool = True) -> pd.Series:
    if not cutpoints:
        return pd.Series(pd.NA, index=values.index, dtype="Int16")
    below = np.searchsorted(np.asarray(cutpoints, dtype=float), values.to_numpy(dtype=float), side="left")
    scores = 1 + below if higher_is_better else 5 - below
    return pd.Series(scores, index=values.index).astype("Int16")


def _rfm_grid_segment(r: np.ndarray, f: np.ndarray) -> np.ndarray:
    conditions = [
        (r >= 4) & (f >= 4),
        (r == 3) & (f >= 4),
        (r >= 4) & (f >= 2),
        (r == 5) & (f == 1),
        (r == 4) & (f == 1),
        (r == 3) & (f == 3),
        (r == 3),
        (r <= 2) & (r >= 1) & (f == 5),
        (r <= 2) & (r >= 1) & (f >= 3),
        (r == 2),
        (r == 1),
    ]
    choices = ["champions", "loyal", "potential_loyalists", "new", "promising", "needs_attention", "about_to_sleep",
               "cant_lose", "slipping", "hibernating", "lost"]
    return np.select(conditions, choices, default="")


# The segment of each cell of the 6 x 6 grid of (recency, frequency) scores, 0 standing for no score; the
# segment column is categorical over these names ("" for customers without a purchase).
_SCORES = np.arange(6)
_GRID_NAMES = _rfm_grid_segment(*np.meshgrid(_SCORES, _SCORES, indexing="ij"))
RFM_SEGMENT_DTYPE = pd.CategoricalDtype(["", *RFM_SEGMENT_LABELS])
_GRID_CODES = pd.Categorical(_GRID_NAMES.ravel(), dtype=RFM_SEGMENT_DTYPE).codes.reshape(_GRID_NAMES.shape)


def _rfm_segment_codes(recency: pd.Series, frequency: pd.Series) -> np.ndarray:
    r = recency.fillna(0).astype(int).to_numpy()
    f = frequency.fillna(0).astype(int).to_numpy()
    return _GRID_CODES[r, f]


def rfm_segment(recency: pd.Series, frequency: pd.Series) -> pd.Series:
    """Return the classic RFM grid segment per customer from recency and frequency scores (1-5)."""
    return pd.Series(RFM_SEGMENT_DTYPE.categories[_rfm_segment_codes(recency, frequency)], index=recency.index)


def distinct_rows(*columns: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return, per row of the columns, the number of its distinct combination of values (0, 1, … in order of
    first appearance; NaN is a value), and the first row of each combination."""
    codes = np.zeros(len(columns[0]), dtype=np.int64)
    for column in columns:  # combined one column at a time, so the codes stay below the number of rows
        column_codes, distinct = pd.factorize(column, use_na_sentinel=False)
        codes, _ = pd.factorize(codes * len(distinct) + column_codes)
    return codes, first_rows(codes)


def first_rows(codes: np.ndarray) -> np.ndarray:
    """Return the first row of each code, for codes numbered in order of first appearance (as pandas' factorize
    numbers them): the rows where the running maximum grows."""
    if not len(codes):
        return np.zeros(0, dtype=np.intp)
    highest = np.maximum.accumulate(codes)
    return np.flatnonzero(np.r_[True, highest[1:] > highest[:-1]])


def score(frame: pd.DataFrame, population: Population, *, workspace_tz: str, now: dt.datetime,
          gross_margin_percent: float = 100.0) -> pd.DataFrame:
    """Return ``frame`` with calendar days, AOV, RFM scores and segment, historic CLV, and P(alive), expected
    12-month purchases and predicted 12-month CLV (from the fitted models, or run-rate rules).
    """
    frame = add_calendar_days(frame, now)
    margin = gross_margin_percent / 100.0
    buyers = frame["order_count"] > 0
    frame["average_order_value"] = np.where(buyers, frame["revenue"] / frame["order_count"].clip(lower=1), 0.0)
    cut = population.rfm_cutpoints
    frame["recency_score"] = _quintile(frame["days_since_last_order"], cut.get("recency"), higher_is_better=False)
    frame["frequency_score"] = _quintile(frame["order_count"], cut.get("frequency"))
    frame["monetary_score"] = _quintile(frame["revenue"], cut.get("monetary"))
    for column in ("recency_score", "frequency_score", "monetary_score"):
        frame.loc[~buyers, column] = pd.NA
    segment = np.where(buyers, _rfm_segment_codes(frame["recency_score"], frame["frequency_score"]), 0)
    frame["rfm_segment"] = pd.Categorical.from_codes(segment, dtype=RFM_SEGMENT_DTYPE)
    frame["historic_clv"] = frame["revenue"] * margin
    frame["model_kind"] = pd.Categorical.from_codes(np.zeros(len(frame), dtype=np.int8),
                                                    categories=[population.model_kind])

    if population.model_kind == "bgnbd" and population.bgnbd:
        inputs = model_inputs(frame, workspace_tz, now)[buyers.to_numpy()]
        bgnbd = predictive.BetaGeometricNBD(**population.bgnbd)
        # Evaluated once per distinct (x, t_x, T): fewer than half as many as buyers (hyp2f1 took 0.4 s on 1M).
        columns = (inputs["frequency"], inputs["recency"], inputs["T"])
        rows, first_rows = distinct_rows(*columns)
        distinct = [column.to_numpy(dtype=float)[first_rows] for column in columns]
        p_alive = bgnbd.probability_alive(*distinct)[rows]
        expected = bgnbd.expected_purchases(HORIZON_DAYS, *distinct)[rows]
        if population.gamma_gamma:
            spend = predictive.GammaGamma(**population.gamma_gamma).expected_spend(
                inputs["frequency"], inputs["monetary"])
        else:
            spend = frame.loc[buyers, "average_order_value"].to_numpy()
        frame["p_alive"] = np.nan
        frame["expected_purchases_12m"] = np.nan
        frame["predicted_clv_12m"] = np.nan
        frame.loc[buyers, "p_alive"] = p_alive
        frame.loc[buyers, "expected_purchases_12m"] = expected
        frame.loc[buyers, "predicted_clv_12m"] = expected * spend * margin
    else:
        # Run rate: the last twelve months repeat, unless the customer has not bought for a year.
        recent = buyers & (frame["days_since_last_order"] < 365)
        frame["p_alive"] = np.nan
        frame["expected_purchases_12m"] = np.where(recent, frame["orders_12m"], np.where(buyers, 0.0, np.nan))
        frame["predicted_clv_12m"] = np.where(recent, frame["trailing_revenue_12m"] * margin,
                                              np.where(buyers, 0.0, np.nan))
    # Rounded as shown, so a change too small to see is no change to write back.
    frame["p_alive"] = frame["p_alive"].round(2)
    frame["expected_purchases_12m"] = frame["expected_purchases_12m"].round(2)
    for column in ("revenue", "trailing_revenue_12m", "average_order_value", "historic_clv", "predicted_clv_12m"):
        frame[column] = frame[column].round(2)
    frame["usual_gap_days"] = frame["usual_gap_days"].round(1)
    return frame
