"""Lifecycle refreshes: the full one per workspace (nightly, or on demand) and the incremental one for customers
touched by new orders. Both write back only the rows that changed and store every transition as a LifecycleEvent.

A refresh reads in one short transaction, computes in pandas outside any transaction (so a job's progress is
visible meanwhile), and writes in one transaction: the rows that may have changed (on PostgreSQL, those that
differ from the stored ones as read packed; on SQLite, all) are staged in a temporary table (COPY on
PostgreSQL), transitions are inserted as events by comparing it with the stored rows, the stored rows where any
compared column ``IS DISTINCT FROM`` the incoming one are updated (the others are not touched), and customers
without a row get one. A row written by another refresh after this one read its data is left alone, so a slow full
refresh never overwrites a newer incremental result; the advisory lock keeps two writers apart.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from django.db import connection
from django.utils import timezone

from crm_site.models import Workspace
from crm_site.tenancy import tenant_scope
from customers.models import Customer
from lifecycle import metrics as metrics_module
from lifecycle.models import CustomerMetrics, LifecyclePolicy, LifecycleRun, RewardGrant, Stage
from lifecycle.packed_reads import DeferredRead, can_share_snapshot, read_packed
from lifecycle.stages import classify, stage_reasons

log = logging.getLogger(__name__)

ADVISORY_LOCK_CLASS = 7_242  # pg_advisory_xact_lock(class, tenant): one lifecycle write per workspace at a time

# Columns compared to decide whether a stored row changed. days_since_last_order grows every day for everyone,
# so it is refreshed whenever a row is written but is not itself a reason to write; the stage reason and
# stage_since only change with the stage.
COMPARED = [
    ("first_seen_at", "timestamptz"), ("first_order_at", "timestamptz"), ("last_order_at", "timestamptz"),
    ("order_count", "integer"),
    ("revenue", "numeric(14,2)"), ("trailing_revenue_12m", "numeric(14,2)"),
    ("average_order_value", "numeric(12,2)"), ("usual_gap_days", "double precision"),
    ("recency_score", "smallint"), ("frequency_score", "smallint"), ("monetary_score", "smallint"),
    ("rfm_segment", "varchar(30)"), ("historic_clv", "numeric(14,2)"), ("p_alive", "double precision"),
    ("expected_purchases_12m", "double precision"), ("predicted_clv_12m", "numeric(14,2)"),
    ("model_kind", "varchar(20)"), ("stage", "varchar(12)"), ("is_heavy_user", "boolean"),
    ("is_reward_due", "boolean"), ("is_reinforce_due", "boolean"), ("due_rewards", "jsonb"),
]
STAGED = [("customer_id", "bigint"), *COMPARED, ("days_since_last_order", "integer"), ("reason", "varchar(300)"),
          ("heavy_reason", "text"), ("reward_reason", "text"), ("reinforce_reason", "text")]
_TEXT_COLUMNS = {"rfm_segment", "model_kind", "stage", "reason", "heavy_reason", "reward_reason", "reinforce_reason"}
FLAGS = [("heavy_user", "is_heavy_user", "heavy_reason"), ("reward_due", "is_reward_due", "reward_reason"),
         ("reinforce_due", "is_reinforce_due", "reinforce_reason")]
# The predictions drift every day for every customer who does not buy (P(alive) falls with the customer's age):
# compared exactly, they made a nightly refresh rewrite nine rows in ten. A prediction is written exactly whenever
# its row is written; by itself it is a reason to write only once it moved by at least the larger of an absolute
# amount and a share of the stored value, so a stored prediction stays within that of the current one.
PREDICTION_TOLERANCE = {  # column: (absolute, relative to the stored value)
    "p_alive": (0.02, 0.0),
    "expected_purchases_12m": (0.05, 0.10),
    "predicted_clv_12m": (1.00, 0.10),
}


@dataclass
class RefreshResult:
    """What a refresh did: how many customers it looked at, rows it wrote and transitions it recorded."""

    customers: int
    rows_written: int
    events_written: int
    model_kind: str
    run: LifecycleRun | None = None


def workspace_policy() -> LifecyclePolicy:
    """Return the lifecycle policy of the workspace in scope, created with the defaults on first use."""
    policy, _ = LifecyclePolicy.objects.get_or_create()
    return policy


def _noop_progress(step: int, total: int, message: str) -> None:
    pass


REFRESH_STEPS = 5


def refresh_workspace(workspace: Workspace | int, *, now: dt.datetime | None = None, progress=None) -> RefreshResult:
    """Recompute every customer of the workspace: refit the model, reclassify, write back what changed.

    Returns the counts; records a LifecycleRun holding the fitted model and population cut-offs.
    ``progress(step, total, message)`` is called between the steps. Must not run inside a transaction that
    other connections are meant to see progress from.
    """
    started = time.monotonic()
    progress = progress or _noop_progress
    workspace = workspace if isinstance(workspace, Workspace) else Workspace.objects.get(pk=workspace)
    now = now or timezone.now()
    read_started = timezone.now()
    progress(0, REFRESH_STEPS, "Reading orders")
    with tenant_scope(workspace):
        stored = _deferred_stored_read(workspace.pk)  # a transaction of its own, holding the lock for a moment
    try:
        with tenant_scope(workspace):
            policy = workspace_policy()
            previous = _latest_population()
            given = _given_rewards(None)
            # The server reads the stored rows as soon as the orders are read, while this process aggregates,
            # fits and classifies.
            frame = metrics_module.load_customer_orders(workspace.pk, now, workspace.time_zone,
                                                        after_reading=stored.start if stored else None)
    finally:
        if stored is not None:
            stored.start()  # whatever happened, or its thread keeps its connection open
    progress(1, REFRESH_STEPS, f"Fitting the purchase model on {len(frame):,} customers")
    frame = metrics_module.add_calendar_days(frame, now)  # once, for the fit, the scores and the stages
    population = metrics_module.fit_population(
        frame, workspace_tz=workspace.time_zone, now=now, heavy_user_share=policy.heavy_user_revenue_share,
        previous=previous)
    progress(2, REFRESH_STEPS, "Scoring and classifying customers")
    scored = metrics_module.score(frame, population, workspace_tz=workspace.time_zone, now=now,
                                  gross_margin_percent=policy.gross_margin_percent)
    classified = classify(scored, policy, now, heavy_threshold=population.heavy_user_threshold,
                          given_rewards=given, with_reasons=False)
    progress(3, REFRESH_STEPS, "Writing changes")
    with tenant_scope(workspace):
        rows, events = write_back(workspace.pk, classified, now=now, read_started=read_started, stored=stored)
        _delete_erased(workspace.pk)
        # Counted from this run's classification (every non-erased customer), not by scanning the table again.
        counts = classified["stage"].value_counts().to_dict()
        run = LifecycleRun.objects.create(
            started_at=read_started, finished_at=timezone.now(), model_kind=population.model_kind,
            model_params={"bgnbd": population.bgnbd, "gamma_gamma": population.gamma_gamma},
            fallback_reason=population.fallback_reason, population=population.as_json(),
            customers=len(frame), repeat_customers=population.repeat_customers, rows_written=rows,
            events_written=events, stage_counts={stage: counts.get(stage, 0) for stage in Stage.values},
            seconds=round(time.monotonic() - started, 3),
        )
    _refresh_statistics(rows, len(frame))
    progress(REFRESH_STEPS, REFRESH_STEPS, f"{rows:,} customers changed, {events:,} transitions recorded")
    log.info("lifecycle refresh of workspace %s: %s customers, %s rows, %s events in %.1fs", workspace.pk,
             len(frame), rows, events, run.seconds)
    return RefreshResult(len(frame), rows, events, population.model_kind, run)


ANALYZE_AFTER_ROWS = 10_000
ANALYZE_AFTER_SHARE = 0.1


def _refresh_statistics(rows_written: int, customers: int) -> None:
    """After a large write-back (a tenth of the customers, and at least ANALYZE_AFTER_ROWS rows), refresh
    PostgreSQL's statistics of the metrics table at once: until autovacuum gets to it, stale ones make the
    planner walk the wrong index (customer list sorted by spend: seconds, not ms). A nightly refresh's few per
    cent of rewritten rows leave them as they were.
    """
    large = rows_written >= max(ANALYZE_AFTER_ROWS, ANALYZE_AFTER_SHARE * customers)
    if connection.vendor == "postgresql" and large:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE lifecycle_customermetrics")


def refresh_customers(workspace: Workspace | int, customer_ids, *, now: dt.datetime | None = None) -> RefreshResult:
    """Recompute the given customers against the latest full refresh's model and cut-offs; write what changed.

    Without any full refresh yet, runs one (the population is needed to score anyone). Returns the counts.
    """
    workspace = workspace if isinstance(workspace, Workspace) else Workspace.objects.get(pk=workspace)
    customer_ids = sorted({int(pk) for pk in customer_ids})
    if not customer_ids:
        return RefreshResult(0, 0, 0, "")
    now = now or timezone.now()
    read_started = timezone.now()
    with tenant_scope(workspace):
        latest_population = _latest_population()
        if latest_population is not None:
            policy = workspace_policy()
            frame = metrics_module.load_customer_orders(workspace.pk, now, workspace.time_zone, customer_ids)
            given = _given_rewards(customer_ids)
    if latest_population is None:
        return refresh_workspace(workspace, now=now)
    scored = metrics_module.score(frame, latest_population, workspace_tz=workspace.time_zone, now=now,
                                  gross_margin_percent=policy.gross_margin_percent)
    classified = classify(scored, policy, now, heavy_threshold=latest_population.heavy_user_threshold,
                          given_rewards=given, with_reasons=False)
    with tenant_scope(workspace):
        rows, events = write_back(workspace.pk, classified, now=now, read_started=read_started)
    return RefreshResult(len(frame), rows, events, latest_population.model_kind)


def _latest_population() -> metrics_module.Population | None:
    """Return the population (model and cut-offs) of the workspace's latest full refresh, None before the first."""
    latest = LifecycleRun.objects.order_by("-started_at", "-id").only("population").first()
    return None if latest is None else metrics_module.Population.from_json(latest.population)


def _given_rewards(customer_ids) -> pd.DataFrame:
    grants = RewardGrant.objects.all()
    if customer_ids is not None:
        grants = grants.filter(customer_id__in=customer_ids)
    return pd.DataFrame(list(grants.values_list("customer_id", "rule", "occasion")),
                        columns=["customer_id", "rule", "occasion"])


def _delete_erased(tenant_id: int) -> None:
    # An erased customer keeps no profile: their metrics row goes too (their events cascade with the customer).
    # The ids first: a subquery was planned as a join over all metrics rows (4 s at 1M, right after they were
    # first written).
    erased = list(Customer.objects.filter(erased_at__isnull=False).values_list("pk", flat=True))
    if erased:
        CustomerMetrics.objects.filter(customer_id__in=erased).delete()


# --- Write-back ------------------------------------------------------------------------------------


def _per_distinct_set(frame: pd.DataFrame, render) -> pd.Series:
    """Return ``render(list of rewards due)`` per row of the classified frame, rendering each distinct set once."""
    codes, first_rows = metrics_module.distinct_rows(frame["due_rewards_set"])
    rendered = np.array([render(frame["due_rewards"].iloc[row]) for row in first_rows], dtype=object)
    return pd.Series(rendered[codes], index=frame.index, dtype=object)


def _reward_reason(rewards) -> str:
    return "; ".join(f"{r['label']}{' ' + r['occasion'] if r['occasion'] else ''}" for r in rewards)


def flag_reasons(frame: pd.DataFrame, threshold_share: float | None = None) -> pd.DataFrame:
    """Return the reason text of each flag for the customers who have it (empty elsewhere)."""
    reasons = pd.DataFrame(index=frame.index, data={"heavy_reason": "", "reward_reason": "", "reinforce_reason": ""})
    heavy = frame["is_heavy_user"].astype(bool)
    if heavy.any():
        reasons.loc[heavy, "heavy_reason"] = (
            "12-month revenue " + frame.loc[heavy, "trailing_revenue_12m"].map("{:.2f}".format)
            + "; among the top customers")
    due = frame["is_reward_due"].astype(bool)
    if due.any():
        reasons.loc[due, "reward_reason"] = _per_distinct_set(frame.loc[due], _reward_reason)
    reinforce = frame["is_reinforce_due"].astype(bool)
    if reinforce.any():
        reasons.loc[reinforce, "reinforce_reason"] = (
            "ordered " + frame.loc[reinforce, "days_since_last_order"].astype(int).astype(str) + " days ago; order "
            + frame.loc[reinforce, "order_count"].astype(str))
    return reasons


def _staging_frame(frame: pd.DataFrame) -> pd.DataFrame:
    if "reason" not in frame:  # a refresh words the stage reasons only for the rows it writes
        frame = frame.assign(reason=stage_reasons(frame))
    staged = pd.concat([frame.rename(columns={"signed_up_at": "first_seen_at"}), flag_reasons(frame)], axis=1)
    staged = staged[[name for name, _ in STAGED]].copy()
    staged["due_rewards"] = _per_distinct_set(frame, json.dumps)
    for column in _TEXTS:  # categorical in the classified frame
        staged[column] = staged[column].astype(object)
    staged["days_since_last_order"] = staged["days_since_last_order"].astype("Int64")
    for column in ("recency_score", "frequency_score", "monetary_score"):
        staged[column] = staged[column].astype("Int64")
    if connection.vendor != "postgresql":
        # Timestamps as Django's own text on SQLite, so an unchanged one compares equal (PostgreSQL parses
        # the ISO text pandas writes into timestamptz and compares instants).
        adapt = connection.ops.adapt_datetimefield_value
        for column in ("first_seen_at", "first_order_at", "last_order_at"):
            staged[column] = staged[column].map(
                lambda value: None if pd.isna(value) else str(adapt(value.to_pydatetime())))
    for column in ("is_heavy_user", "is_reward_due", "is_reinforce_due"):
        staged[column] = staged[column].astype(bool)
    return staged


def write_back(tenant_id: int, frame: pd.DataFrame, *, now: dt.datetime, read_started: dt.datetime,
               stored: DeferredRead | None = None) -> tuple[int, int]:
    """Write the classified frame: insert transitions as events, update the changed rows and insert new ones.

    Returns (rows written, events written). Runs inside the workspace's scope (one transaction). ``stored``,
    from _deferred_stored_read, holds the stored rows as they were when the refresh read (else they are read
    now).
    """
    if frame.empty:
        return 0, 0
    postgres = connection.vendor == "postgresql"
    temp = "pg_temp" if postgres else "temp"
    customers = len(frame)
    with connection.cursor() as cursor:
        if postgres:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ADVISORY_LOCK_CLASS, tenant_id])
            frame = frame[differs_from_stored(tenant_id, frame, stored.records() if stored else None)]
            if frame.empty:
                return 0, 0
        staged = _staging_frame(frame)
        for table in ("lifecycle_incoming", "lifecycle_changed"):
            cursor.execute(f"DROP TABLE IF EXISTS {temp}.{table}")
        if postgres:
            cursor.execute("SET LOCAL work_mem = '256MB'")
            columns = ", ".join(f"{name} {kind}" for name, kind in STAGED)
            cursor.execute(f"CREATE TEMP TABLE lifecycle_incoming ({columns}) ON COMMIT DROP")
            _copy_in(staged)
            cursor.execute("ANALYZE lifecycle_incoming (customer_id)")  # the join key: enough to plan, and fast
        else:
            columns = ", ".join(f"{name} {'text' if kind in ('jsonb', 'timestamptz') else kind}" for name, kind in STAGED)
            cursor.execute(f"CREATE TEMP TABLE lifecycle_incoming ({columns})")
            placeholders = ", ".join(["%s"] * len(STAGED))
            rows = staged.astype(object).where(staged.notna(), None).itertuples(index=False, name=None)
            cursor.executemany(f"INSERT INTO lifecycle_incoming VALUES ({placeholders})", list(rows))
        adapt = connection.ops.adapt_datetimefield_value
        params = {"tenant": tenant_id, "now": adapt(now), "read_started": adapt(read_started),
                  "written_at": adapt(timezone.now())}
        if postgres and len(staged) < _LOOKED_UP_BELOW * customers:
            # A few per cent of the customers: through the customer index (0.36 s for 62,500 at 1M) rather than a hash
            # join over a scan of the whole table (0.63 s), which the planner prefers because it prices an index
            # lookup as a read from disk.
            cursor.execute("SET LOCAL enable_hashjoin = off")
            cursor.execute("SET LOCAL enable_mergejoin = off")
            cursor.execute(_changed_sql(postgres), params)
            cursor.execute("RESET enable_hashjoin")
            cursor.execute("RESET enable_mergejoin")
        else:
            cursor.execute(_changed_sql(postgres), params)
        if postgres:
            cursor.execute("ANALYZE lifecycle_changed")
        cursor.execute(_events_sql(), params)
        events = max(cursor.rowcount, 0)
        cursor.execute(_update_sql(postgres), params)
        rows = max(cursor.rowcount, 0)
        cursor.execute(_insert_sql(postgres), params)
        rows += max(cursor.rowcount, 0)
        # Dropped now, not only at commit: a caller's transaction may refresh again before committing.
        for table in ("lifecycle_incoming", "lifecycle_changed"):
            cursor.execute(f"DROP TABLE {temp}.{table}")
    return rows, events


# --- Which rows may have changed ------------------------------------------------------------------
# Staging a million rows to find the few dozen that changed took most of a nightly refresh. Instead the stored
# rows' compared columns are read as packed fixed-width records (lifecycle.packed_reads), the text columns as
# one 64-bit hash computed by the server for both sides, numpy lays the incoming values out the same way, and
# only the rows that differ, or have no stored row, are staged. The write-back's own comparison in SQL still
# decides, so a row this filter keeps in vain costs a staged row, never a wrong write.

_NULL_INTEGER = {"timestamptz": np.iinfo(np.int64).min, "integer": np.iinfo(np.int32).min,
                 "smallint": np.iinfo(np.int16).min, "numeric": np.iinfo(np.int64).min}
_TEXTS = [name for name, kind in COMPARED if kind.startswith("varchar")]
_TEXTS_HASH = "hashtextextended({texts}, jsonb_hash_extended({rewards}, 0))"
_STORED_BY_ID_BELOW = 10_000  # an incremental refresh reads its customers' rows through the index
_COMPARED_AT_ONCE = 65_536
_LOOKED_UP_BELOW = 0.2  # the share of the customers below which the write-back finds stored rows by index
# Numeric columns kept in cents by a stored generated column too: read as they are (numeric arithmetic is most of
# the server's work in this read).
_STORED_CENTS = {"revenue": "revenue_cents"}


def _stored_field(name: str, kind: str) -> tuple[str, str]:
    """Return the SQL packing one stored column into a fixed width, and the numpy type that reads it."""
    if kind == "timestamptz":
        return f"timestamptz_send(COALESCE({name}, '-infinity'))", ">i8"
    if kind == "integer":
        return f"int4send(COALESCE({name}, '{_NULL_INTEGER['integer']}'::integer))", ">i4"
    if kind == "smallint":
        return f"int2send(COALESCE({name}, '{_NULL_INTEGER['smallint']}'::smallint))", ">i2"
    if kind.startswith("numeric"):
        cents = _STORED_CENTS.get(name, f"({name} * 100)::bigint")
        return f"int8send(COALESCE({cents}, '{_NULL_INTEGER['numeric']}'::bigint))", ">i8"
    if kind == "double precision":
        return f"float8send(COALESCE({name}, 'NaN'))", ">f8"
    return f"boolsend({name})", "u1"


def _stored_layout() -> tuple[str, np.dtype]:
    fields = [("customer_id", "int8send(customer_id)", ">i8")]
    fields += [(name, *_stored_field(name, kind)) for name, kind in COMPARED
               if name not in _TEXTS and kind != "jsonb"]
    texts = _TEXTS_HASH.format(texts=" || chr(31) || ".join(_TEXTS), rewards="due_rewards")
    fields.append(("texts", f"int8send({texts})", ">i8"))
    query = f"""
SELECT string_agg({" || ".join(expression for _, expression, _ in fields)}, ''::bytea)
FROM lifecycle_customermetrics
WHERE tenant_id = %(tenant)s {{condition}}
"""
    return query, np.dtype([(name, kind) for name, _, kind in fields])


_STORED_QUERY, _STORED_RECORD = _stored_layout()


def _incoming_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Return the frame's compared values encoded as _STORED_QUERY packs the stored ones (same NULL markers), one
    array per field."""
    staged = frame.rename(columns={"signed_up_at": "first_seen_at"})
    columns = {"customer_id": staged["customer_id"].to_numpy(dtype=np.int64)}
    for name in _STORED_RECORD.names[1:-1]:
        kind = dict(COMPARED)[name]
        column = staged[name]
        if kind == "double precision":
            columns[name] = column.to_numpy(dtype=float, na_value=np.nan)
            continue
        if kind == "boolean":
            columns[name] = column.fillna(False).to_numpy(dtype=bool)
            continue
        if kind == "timestamptz":
            moments = pd.to_datetime(column, utc=True).dt.tz_localize(None).astype("datetime64[us]")
            values = moments.to_numpy().astype(np.int64) - PG_EPOCH_MICROSECONDS
        elif kind.startswith("numeric"):
            values = np.round(column.fillna(0).to_numpy(dtype=float) * 100).astype(np.int64)
        else:
            values = column.fillna(0).to_numpy(dtype=np.int64, copy=True)
        values[column.isna().to_numpy()] = _NULL_INTEGER[kind.split("(")[0]]
        columns[name] = values
    columns["texts"] = _texts_hashes(frame)
    return columns


def _texts_hashes(frame: pd.DataFrame) -> np.ndarray:
    """Return the server's hash of each row's text columns, asked once per distinct combination of them."""
    # The text columns are categorical and the reward lists numbered by set: their codes are combined, not the texts.
    codes, first_rows = metrics_module.distinct_rows(*(frame[name] for name in _TEXTS), frame["due_rewards_set"])
    texts = zip(*(frame[name].iloc[first_rows].astype(object).fillna("").astype(str) for name in _TEXTS))
    joined = ["\x1f".join(combination) for combination in texts]
    rewards = [json.dumps(rewards) for rewards in frame["due_rewards"].iloc[first_rows]]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_TEXTS_HASH.format(texts='texts', rewards='rewards::jsonb')}"
                       " FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS combination(texts, rewards, position)"
                       " ORDER BY position", [joined, rewards])
        hashes = np.array([value for value, in cursor.fetchall()], dtype=np.int64)
    return hashes[codes]


def _deferred_stored_read(tenant_id: int) -> DeferredRead | None:
    """Return a read of the workspace's stored metrics rows as they are now, to run later (PostgreSQL); call it in
    a transaction of its own, which holds the workspace's lifecycle lock until it ends.

    Only while no lifecycle write of the workspace is under way (its advisory lock is free for a moment): every
    row a refresh writes after this moment is then newer than this refresh's read, which the write-back never
    overwrites, so comparing with these rows stages what comparing at write time would (a reward marked given
    at this very moment keeps its change either way). None otherwise, off PostgreSQL, or when the snapshot
    cannot be shared (packed_reads.can_share_snapshot).
    """
    if connection.vendor != "postgresql" or not can_share_snapshot():
        return None
    with connection.cursor() as cursor:
        # Held until this (short) transaction ends, however it ends.
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [ADVISORY_LOCK_CLASS, tenant_id])
        if not cursor.fetchone()[0]:
            return None
    return DeferredRead(_STORED_QUERY.format(condition=""), {"tenant": tenant_id}, _STORED_RECORD)


def differs_from_stored(tenant_id: int, frame: pd.DataFrame, stored: np.ndarray | None = None) -> np.ndarray:
    """Return, per row of the classified frame, whether it has no stored metrics row or one that differs in a
    compared column (PostgreSQL; the text columns compared by a 64-bit hash). ``stored``: the workspace's
    stored rows as _STORED_QUERY packs them, read now when not given."""
    incoming = _incoming_columns(frame)
    incoming_ids = incoming["customer_id"]
    if stored is None:
        params = {"tenant": tenant_id}
        condition = ""
        if len(frame) < _STORED_BY_ID_BELOW:
            params["customer_ids"] = incoming_ids.tolist()
            condition = "AND customer_id = ANY(%(customer_ids)s)"
        stored = read_packed(_STORED_QUERY, params, _STORED_RECORD, table="lifecycle_customermetrics",
                             condition=condition)
    # Each incoming row's stored row (-1: none), through a lookup table of the incoming ids (in customer order, as
    # the frame comes).
    by_id = None if (incoming_ids[1:] > incoming_ids[:-1]).all() else np.argsort(incoming_ids)
    place = metrics_module.position_lookup(incoming_ids if by_id is None else incoming_ids[by_id])(
        stored["customer_id"])
    known = place >= 0
    stored_row = np.full(len(incoming_ids), -1, dtype=np.intp)
    stored_row[place[known] if by_id is None else by_id[place[known]]] = np.flatnonzero(known)
    # Whole records compared byte for byte, as opaque values of the record's size (one comparison instead of one
    # per field; NaN is the one value with several encodings, and both sides hold the canonical one: pandas' and
    # float8send's), a slice of rows at a time: small arrays the allocator recycles, where arrays of a million
    # records would be fresh memory each time. A prediction within tolerance takes the stored value first.
    changed = stored_row < 0
    whole = np.dtype((np.void, stored.dtype.itemsize))
    records = np.zeros(min(_COMPARED_AT_ONCE, len(stored_row)), dtype=stored.dtype)
    for start in range(0, len(stored_row), _COMPARED_AT_ONCE):
        rows = slice(start, start + _COMPARED_AT_ONCE)
        part = records[:len(stored_row[rows])]
        for name in _STORED_RECORD.names:
            part[name] = incoming[name][rows]
        here = ~changed[rows]
        old, new = stored[stored_row[rows][here]], part[here]
        for name in PREDICTION_TOLERANCE:
            new[name] = np.where(_within_tolerance(name, old[name], new[name]), old[name], new[name])
        changed[rows][here] = old.view(whole) != new.view(whole)
    return changed


def _within_tolerance(name: str, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Return whether each packed prediction ``new`` is within PREDICTION_TOLERANCE of the stored ``old``
    (both NULL counts as within, one NULL as not)."""
    absolute, relative = PREDICTION_TOLERANCE[name]
    if dict(COMPARED)[name].startswith("numeric"):  # packed as cents, NULL as a marker
        old_null, new_null = old == _NULL_INTEGER["numeric"], new == _NULL_INTEGER["numeric"]
        old, new = old / 100, new / 100
    else:
        old_null, new_null = np.isnan(old), np.isnan(new)
    with np.errstate(invalid="ignore"):
        close = np.abs(new - old) < np.maximum(absolute, relative * np.abs(old))
    return (old_null & new_null) | (~old_null & ~new_null & close)


def _copy_in(staged: pd.DataFrame) -> None:
    payload = binary_copy_payload(staged, STAGED)
    with connection.connection.cursor() as cursor:
        with cursor.copy("COPY lifecycle_incoming FROM STDIN (FORMAT BINARY)") as copy:
            step = 8 << 20
            for start in range(0, len(payload), step):
                copy.write(payload[start:start + step])


# --- Binary COPY of a frame ------------------------------------------------------------------------
# pandas' to_csv formats a million rows of thirty columns in about twenty seconds; numpy lays out PostgreSQL's
# binary COPY format (a field count per row, then per field its length and bytes, -1 for NULL) in one.

PG_EPOCH_MICROSECONDS = 946_684_800_000_000  # 2000-01-01, PostgreSQL's timestamp zero, in Unix microseconds
_NUMERIC_GROUPS = 5  # base-10000 digits: up to 10^12 with two decimals, as numeric(14,2) holds


def _fixed_field(values: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(values.astype(dtype)).view(np.uint8).reshape(len(values), -1)


def _numeric_field(values: pd.Series) -> np.ndarray:
    """PostgreSQL's binary numeric for values with two decimals: ndigits, weight, sign, dscale, base-10000 digits.

    Always five digit groups (leading zeros are allowed; the server normalises them).
    """
    scaled = np.abs(np.round(values.fillna(0).to_numpy(dtype=float) * 100)).astype(np.int64) * 100
    groups = np.empty((len(values), _NUMERIC_GROUPS), dtype=">i2")
    for position in range(_NUMERIC_GROUPS - 1, -1, -1):
        groups[:, position] = scaled % 10000
        scaled //= 10000
    header = np.empty((len(values), 4), dtype=">i2")
    header[:, 0] = _NUMERIC_GROUPS
    header[:, 1] = _NUMERIC_GROUPS - 2  # the last group holds the decimals (weight -1)
    header[:, 2] = np.where(values.fillna(0).to_numpy(dtype=float) < 0, 0x4000, 0)
    header[:, 3] = 2
    return np.concatenate([header.view(np.uint8), groups.view(np.uint8)], axis=1)


def _text_field(values: pd.Series, prefix: bytes = b"") -> tuple[np.ndarray, np.ndarray]:
    """Return the UTF-8 bytes of all values, concatenated, and each one's start and length in them.

    Each distinct text is encoded once (stages, segments and most reasons repeat across customers).
    """
    codes, distinct = pd.factorize(values.fillna("").astype(object), use_na_sentinel=False)
    encoded = [prefix + str(text).encode() for text in distinct]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    starts = np.cumsum(lengths) - lengths
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), np.column_stack([starts[codes], lengths[codes]])


def _field_bytes(column: pd.Series, kind: str):
    """Return (null mask, fixed bytes per row as a 2-D array, or (bytes, start and length per row) for text)."""
    nulls = column.isna().to_numpy()
    if kind in ("bigint", "integer", "smallint"):
        dtype = {"bigint": ">i8", "integer": ">i4", "smallint": ">i2"}[kind]
        return nulls, _fixed_field(column.fillna(0).to_numpy(dtype=np.int64), dtype)
    if kind == "double precision":
        return nulls, _fixed_field(column.fillna(0).to_numpy(dtype=float), ">f8")
    if kind == "boolean":
        return nulls, _fixed_field(column.fillna(False).to_numpy(dtype=bool), "u1")
    if kind == "timestamptz":
        moments = pd.to_datetime(column, utc=True).dt.tz_localize(None).astype("datetime64[us]")
        microseconds = moments.to_numpy().astype(np.int64) - PG_EPOCH_MICROSECONDS
        return nulls, _fixed_field(np.where(nulls, 0, microseconds), ">i8")
    if kind.startswith("numeric"):
        return nulls, _numeric_field(column)
    if kind == "jsonb":
        return nulls, _text_field(column, prefix=b"\x01")  # jsonb's binary format: version 1, then the text
    return nulls, _text_field(column)  # text and varchar


def binary_copy_payload(frame: pd.DataFrame, columns: list[tuple[str, str]]) -> bytes:
    """Return ``frame``'s ``columns`` as a PostgreSQL binary COPY stream (NULL where pandas has a missing value).

    Rows whose fields have the same lengths (a few hundred layouts for a million customers) are laid out
    together as one numpy structured array; COPY does not care in which order rows come.
    """
    fields = [_field_bytes(frame[name], kind) for name, kind in columns]
    lengths = np.column_stack([
        np.where(nulls, -1, data[1][:, 1] if isinstance(data, tuple) else data.shape[1]) for nulls, data in fields
    ]) if fields else np.empty((len(frame), 0), dtype=np.int64)
    layout_of_row = np.zeros(len(frame), dtype=np.int64)
    for position in range(lengths.shape[1]):
        codes, distinct = pd.factorize(lengths[:, position])
        layout_of_row, _ = pd.factorize(layout_of_row * len(distinct) + codes)
    by_layout = np.argsort(layout_of_row, kind="stable")
    group_ends = np.cumsum(np.bincount(layout_of_row))
    pieces = [b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")]
    for group_end, group_size in zip(group_ends, np.diff(np.concatenate([[0], group_ends]))):
        rows = by_layout[group_end - group_size:group_end]
        layout = lengths[rows[0]]
        dtype = [("field_count", ">i2")]
        for position, length in enumerate(layout):
            dtype.append((f"length_{position}", ">i4"))
            if length > 0:
                dtype.append((f"value_{position}", "u1", (int(length),)))
        block = np.empty(len(rows), dtype=np.dtype(dtype))
        block["field_count"] = len(columns)
        for position, ((nulls, data), length) in enumerate(zip(fields, layout)):
            block[f"length_{position}"] = length
            if length <= 0:
                continue
            if isinstance(data, tuple):
                text, spans = data
                block[f"value_{position}"] = text[spans[rows, 0][:, None] + np.arange(length)]
            else:
                block[f"value_{position}"] = data[rows]
        pieces.append(block.tobytes())
    pieces.append((-1).to_bytes(2, "big", signed=True))
    return b"".join(pieces)


def _changed(stored: str, incoming: str, postgres: bool) -> str:
    """Return the SQL condition: the incoming row differs from the stored one (predictions: beyond tolerance)."""
    greatest = "GREATEST" if postgres else "MAX"
    conditions = []
    for name, _ in COMPARED:
        old, new = f"{stored}.{name}", f"{incoming}.{name}"
        if name in PREDICTION_TOLERANCE:
            absolute, relative = PREDICTION_TOLERANCE[name]
            conditions.append(f"(({old} IS NULL) <> ({new} IS NULL) OR ABS({new} - {old}) >= "
                              f"{greatest}({absolute}, {relative} * ABS({old})))")
        else:
            conditions.append(f"{old} IS DISTINCT FROM {new}")
    return " OR ".join(conditions)


_OFF_REASONS = {
    "heavy_user": "no longer among the top customers by 12-month revenue",
    "reward_due": "no reward due any more",
    "reinforce_due": "reinforcement window over",
}


def _changed_sql(postgres: bool) -> str:
    """Return the statement keeping, in a temporary table, the incoming customers to write: new ones, and those
    whose stored row differs in a compared column and is not newer than this refresh's read.

    The one join of the incoming rows with the stored ones; the events, the update and the insert then work
    on this (usually small) set.
    """
    old_flags = ", ".join(f"COALESCE(m.{column}, FALSE) AS old_{column}" for _, column, _ in FLAGS)
    stored_row = ", m.ctid AS stored_row" if postgres else ""  # where the update finds the row (_update_sql)
    return f"""
CREATE TEMP TABLE lifecycle_changed {"ON COMMIT DROP " if postgres else ""}AS
SELECT i.customer_id, m.customer_id IS NULL AS is_new, m.stage AS old_stage, {old_flags}{stored_row}
FROM lifecycle_incoming i LEFT JOIN lifecycle_customermetrics m ON m.customer_id = i.customer_id
WHERE m.customer_id IS NULL OR (m.computed_at <= %(read_started)s AND ({_changed("m", "i", postgres)}))
"""


def _events_sql() -> str:
    """Return the INSERT of one event per stage change and per flag switched on or off: one pass over the changed
    rows, each paired with every kind of event."""
    kinds = ["stage", *(kind for kind, _, _ in FLAGS)]
    from_value, to_value, reason, happened = (["CASE k.kind"] for _ in range(4))
    from_value.append("WHEN 'stage' THEN COALESCE(c.old_stage, '')")
    to_value.append("WHEN 'stage' THEN i.stage")
    reason.append("WHEN 'stage' THEN i.reason")
    happened.append("WHEN 'stage' THEN c.old_stage IS DISTINCT FROM i.stage")
    for kind, column, flag_reason in FLAGS:
        from_value.append(f"WHEN '{kind}' THEN CASE WHEN c.old_{column} THEN 'on' ELSE 'off' END")
        to_value.append(f"WHEN '{kind}' THEN CASE WHEN i.{column} THEN 'on' ELSE 'off' END")
        reason.append(f"WHEN '{kind}' THEN CASE WHEN i.{column} THEN i.{flag_reason} ELSE '{_OFF_REASONS[kind]}' END")
        happened.append(f"WHEN '{kind}' THEN c.old_{column} <> i.{column}")
    values = ", ".join(f"('{kind}')" for kind in kinds)
    return f"""
INSERT INTO lifecycle_lifecycleevent (tenant_id, customer_id, kind, from_value, to_value, reason, occurred_at)
WITH kinds(kind) AS (VALUES {values})
SELECT %(tenant)s, i.customer_id, k.kind, {" ".join(from_value)} END, {" ".join(to_value)} END,
       {" ".join(reason)} END, %(now)s
FROM lifecycle_changed c JOIN lifecycle_incoming i ON i.customer_id = c.customer_id CROSS JOIN kinds k
WHERE {" ".join(happened)} END
"""


def _update_sql(postgres: bool) -> str:
    """Return the UPDATE of the stored rows that changed (unchanged rows are not touched, not even locked).

    On PostgreSQL the rows are found by the row addresses lifecycle_changed took (a TID scan), not by scanning the
    whole table for a join on the customer: a row another writer changed since then has moved, and is left alone,
    as the ``computed_at`` condition would leave it.
    """
    cast = "::jsonb" if postgres else ""
    found = ("m.ctid = ANY(ARRAY(SELECT stored_row FROM lifecycle_changed WHERE NOT is_new)) AND "
             if postgres else "")
    updates = ", ".join(f"{name} = i.{name}{cast if name == 'due_rewards' else ''}" for name, _ in COMPARED)
    stage_changed = "m.stage IS DISTINCT FROM i.stage"
    return f"""
UPDATE lifecycle_customermetrics AS m SET {updates},
    days_since_last_order = i.days_since_last_order,
    reason = CASE WHEN {stage_changed} THEN i.reason ELSE m.reason END,
    stage_since = CASE WHEN {stage_changed} THEN %(now)s ELSE m.stage_since END,
    computed_at = %(written_at)s
FROM lifecycle_changed AS c JOIN lifecycle_incoming AS i ON i.customer_id = c.customer_id
WHERE {found}m.customer_id = c.customer_id AND NOT c.is_new AND m.computed_at <= %(read_started)s
"""


def _insert_sql(postgres: bool) -> str:
    """Return the INSERT of the customers who had no metrics row (``WHERE``: SQLite's upsert syntax needs one).

    A row another writer inserted meanwhile conflicts and is left alone.
    """
    names = [name for name, _ in COMPARED]
    cast = "::jsonb" if postgres else ""
    select = ", ".join(f"i.{name}{cast if name == 'due_rewards' else ''}" for name in names)
    return f"""
INSERT INTO lifecycle_customermetrics (tenant_id, customer_id, {", ".join(names)}, days_since_last_order,
                                       reason, stage_since, computed_at)
SELECT %(tenant)s, i.customer_id, {select}, i.days_since_last_order, i.reason, %(now)s, %(written_at)s
FROM lifecycle_changed AS c JOIN lifecycle_incoming AS i ON i.customer_id = c.customer_id WHERE c.is_new
ON CONFLICT (customer_id) DO NOTHING
"""
