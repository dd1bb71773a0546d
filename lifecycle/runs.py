"""Lifecycle refreshes: the full one per workspace (nightly, or on demand) and the incremental one for customers
touched by new orders. Both write back only the rows that changed and store every transition as a LifecycleEvent.

A refresh reads in one short transaction, computes in pandas outside any transaction (so a job's progress is
visible meanwhile), and writes in one transaction: the frame is staged in a temporary table (COPY on
PostgreSQL), transitions are inserted as events by comparing it with the stored rows, and the rows are upserted
with ``ON CONFLICT … DO UPDATE … WHERE`` any compared column ``IS DISTINCT FROM`` the stored one. A row written
by another refresh after this one read its data is left alone, so a slow full refresh never overwrites a newer
incremental result.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import time
from dataclasses import dataclass

import pandas as pd
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from crm_site.models import Workspace
from crm_site.tenancy import tenant_scope
from lifecycle import metrics as metrics_module
from lifecycle.models import CustomerMetrics, LifecyclePolicy, LifecycleRun, RewardGrant, Stage
from lifecycle.stages import classify

log = logging.getLogger(__name__)

ADVISORY_LOCK_CLASS = 7_242  # pg_advisory_xact_lock(class, tenant): one lifecycle write per workspace at a time

# Columns compared to decide whether a stored row changed. days_since_last_order grows every day for everyone,
# so it is refreshed whenever a row is written but is not itself a reason to write; the stage reason and
# stage_since only change with the stage.
COMPARED = [
    ("first_order_at", "timestamptz"), ("last_order_at", "timestamptz"), ("order_count", "integer"),
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
        policy = workspace_policy()
        frame = metrics_module.load_customer_orders(workspace.pk, now, workspace.time_zone)
        given = _given_rewards(None)
    progress(1, REFRESH_STEPS, f"Fitting the purchase model on {len(frame):,} customers")
    population = metrics_module.fit_population(
        frame, workspace_tz=workspace.time_zone, now=now, heavy_user_share=policy.heavy_user_revenue_share)
    progress(2, REFRESH_STEPS, "Scoring and classifying customers")
    scored = metrics_module.score(frame, population, workspace_tz=workspace.time_zone, now=now,
                                  gross_margin_percent=policy.gross_margin_percent)
    classified = classify(scored, policy, now, heavy_threshold=population.heavy_user_threshold,
                          given_rewards=given)
    progress(3, REFRESH_STEPS, "Writing changes")
    with tenant_scope(workspace):
        rows, events = write_back(workspace.pk, classified, now=now, read_started=read_started)
        _delete_erased(workspace.pk)
        counts = dict(CustomerMetrics.objects.values_list("stage").annotate(n=Count("id")).order_by())
        run = LifecycleRun.objects.create(
            started_at=read_started, finished_at=timezone.now(), model_kind=population.model_kind,
            model_params={"bgnbd": population.bgnbd, "gamma_gamma": population.gamma_gamma},
            fallback_reason=population.fallback_reason, population=population.as_json(),
            customers=len(frame), repeat_customers=population.repeat_customers, rows_written=rows,
            events_written=events, stage_counts={stage: counts.get(stage, 0) for stage in Stage.values},
            seconds=round(time.monotonic() - started, 3),
        )
    progress(REFRESH_STEPS, REFRESH_STEPS, f"{rows:,} customers changed, {events:,} transitions recorded")
    log.info("lifecycle refresh of workspace %s: %s customers, %s rows, %s events in %.1fs", workspace.pk,
             len(frame), rows, events, run.seconds)
    return RefreshResult(len(frame), rows, events, population.model_kind, run)


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
        latest = LifecycleRun.objects.order_by("-started_at", "-id").first()
        if latest is None:
            latest_population = None
        else:
            latest_population = metrics_module.Population.from_json(latest.population)
            policy = workspace_policy()
            frame = metrics_module.load_customer_orders(workspace.pk, now, workspace.time_zone, customer_ids)
            given = _given_rewards(customer_ids)
    if latest_population is None:
        return refresh_workspace(workspace, now=now)
    scored = metrics_module.score(frame, latest_population, workspace_tz=workspace.time_zone, now=now,
                                  gross_margin_percent=policy.gross_margin_percent)
    classified = classify(scored, policy, now, heavy_threshold=latest_population.heavy_user_threshold,
                          given_rewards=given)
    with tenant_scope(workspace):
        rows, events = write_back(workspace.pk, classified, now=now, read_started=read_started)
    return RefreshResult(len(frame), rows, events, latest_population.model_kind)


def _given_rewards(customer_ids) -> pd.DataFrame:
    grants = RewardGrant.objects.all()
    if customer_ids is not None:
        grants = grants.filter(customer_id__in=customer_ids)
    return pd.DataFrame(list(grants.values_list("customer_id", "rule", "occasion")),
                        columns=["customer_id", "rule", "occasion"])


def _delete_erased(tenant_id: int) -> None:
    # An erased customer keeps no profile: their metrics row goes too (their events cascade with the customer).
    CustomerMetrics.objects.filter(customer__erased_at__isnull=False).delete()


# --- Write-back ------------------------------------------------------------------------------------


def _money(value) -> str:
    return f"{value:.2f}"


def flag_reasons(frame: pd.DataFrame, threshold_share: float | None = None) -> pd.DataFrame:
    """Return the reason text of each flag for the customers who have it (empty elsewhere)."""
    reasons = pd.DataFrame(index=frame.index, data={"heavy_reason": "", "reward_reason": "", "reinforce_reason": ""})
    heavy = frame["is_heavy_user"].astype(bool)
    if heavy.any():
        reasons.loc[heavy, "heavy_reason"] = (
            "12-month revenue " + frame.loc[heavy, "trailing_revenue_12m"].map(_money) + "; among the top customers")
    due = frame["is_reward_due"].astype(bool)
    if due.any():
        reasons.loc[due, "reward_reason"] = frame.loc[due, "due_rewards"].map(
            lambda rewards: "; ".join(f"{r['label']}{' ' + r['occasion'] if r['occasion'] else ''}" for r in rewards))
    reinforce = frame["is_reinforce_due"].astype(bool)
    if reinforce.any():
        reasons.loc[reinforce, "reinforce_reason"] = (
            "ordered " + frame.loc[reinforce, "days_since_last_order"].astype(int).astype(str) + " days ago; order "
            + frame.loc[reinforce, "order_count"].astype(str))
    return reasons


def _staging_frame(frame: pd.DataFrame) -> pd.DataFrame:
    staged = pd.concat([frame, flag_reasons(frame)], axis=1)
    staged = staged[[name for name, _ in STAGED]].copy()
    staged["due_rewards"] = staged["due_rewards"].map(json.dumps)
    staged["days_since_last_order"] = staged["days_since_last_order"].astype("Int64")
    for column in ("recency_score", "frequency_score", "monetary_score"):
        staged[column] = staged[column].astype("Int64")
    # Timestamps as the database's own text (Django's on SQLite), so an unchanged one compares equal.
    adapt = connection.ops.adapt_datetimefield_value
    for column in ("first_order_at", "last_order_at"):
        staged[column] = staged[column].map(
            lambda value: None if pd.isna(value) else str(adapt(value.to_pydatetime())))
    for column in ("is_heavy_user", "is_reward_due", "is_reinforce_due"):
        staged[column] = staged[column].astype(bool)
    return staged


def write_back(tenant_id: int, frame: pd.DataFrame, *, now: dt.datetime, read_started: dt.datetime) -> tuple[int, int]:
    """Write the classified frame: insert transitions as events, upsert the changed rows. Returns (rows, events).

    Runs inside the workspace's scope (one transaction).
    """
    if frame.empty:
        return 0, 0
    staged = _staging_frame(frame)
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        if postgres:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ADVISORY_LOCK_CLASS, tenant_id])
            cursor.execute("SET LOCAL work_mem = '256MB'")
            columns = ", ".join(f"{name} {kind}" for name, kind in STAGED)
            cursor.execute("DROP TABLE IF EXISTS pg_temp.lifecycle_incoming")
            cursor.execute(f"CREATE TEMP TABLE lifecycle_incoming ({columns}) ON COMMIT DROP")
            _copy_in(staged)
            cursor.execute("ANALYZE lifecycle_incoming")
        else:
            cursor.execute("DROP TABLE IF EXISTS temp.lifecycle_incoming")
            columns = ", ".join(f"{name} {'text' if kind in ('jsonb', 'timestamptz') else kind}" for name, kind in STAGED)
            cursor.execute(f"CREATE TEMP TABLE lifecycle_incoming ({columns})")
            placeholders = ", ".join(["%s"] * len(STAGED))
            rows = staged.astype(object).where(staged.notna(), None).itertuples(index=False, name=None)
            cursor.executemany(f"INSERT INTO lifecycle_incoming VALUES ({placeholders})", list(rows))
        adapt = connection.ops.adapt_datetimefield_value
        params = {"tenant": tenant_id, "now": adapt(now), "read_started": adapt(read_started),
                  "written_at": adapt(timezone.now())}
        cursor.execute(_events_sql(), params)
        events = max(cursor.rowcount, 0)
        cursor.execute(_upsert_sql(postgres), params)
        rows = max(cursor.rowcount, 0)
        # Dropped now, not only at commit: a caller's transaction may refresh again before committing.
        cursor.execute("DROP TABLE pg_temp.lifecycle_incoming" if postgres else "DROP TABLE temp.lifecycle_incoming")
    return rows, events


def _copy_in(staged: pd.DataFrame) -> None:
    buffer = io.StringIO()
    # Everything quoted: an empty quoted field is an empty string, FORCE_NULL turns it into NULL where
    # the column is not text (pandas writes missing values as empty strings).
    staged.to_csv(buffer, index=False, header=False, quoting=csv.QUOTE_ALL, na_rep="")
    nullable = ", ".join(name for name, _ in STAGED if name not in _TEXT_COLUMNS)
    with connection.connection.cursor() as cursor:
        with cursor.copy(f"COPY lifecycle_incoming FROM STDIN (FORMAT CSV, FORCE_NULL ({nullable}))") as copy:
            copy.write(buffer.getvalue())


def _changed(left: str, right: str) -> str:
    return " OR ".join(f"{left}.{name} IS DISTINCT FROM {right}.{name}" for name, _ in COMPARED)


_FRESH = "(m.customer_id IS NULL OR m.computed_at <= %(read_started)s)"
_OFF_REASONS = {
    "heavy_user": "no longer among the top customers by 12-month revenue",
    "reward_due": "no reward due any more",
    "reinforce_due": "reinforcement window over",
}


def _events_sql() -> str:
    """Return the INSERT of one event per stage change and per flag switched on or off."""
    stage = f"""
SELECT %(tenant)s, i.customer_id, 'stage', COALESCE(m.stage, ''), i.stage, i.reason, %(now)s
FROM lifecycle_incoming i LEFT JOIN lifecycle_customermetrics m ON m.customer_id = i.customer_id
WHERE m.stage IS DISTINCT FROM i.stage AND {_FRESH}"""
    flags = [f"""
SELECT %(tenant)s, i.customer_id, '{kind}',
       CASE WHEN COALESCE(m.{column}, FALSE) THEN 'on' ELSE 'off' END,
       CASE WHEN i.{column} THEN 'on' ELSE 'off' END,
       CASE WHEN i.{column} THEN i.{reason} ELSE '{_OFF_REASONS[kind]}' END, %(now)s
FROM lifecycle_incoming i LEFT JOIN lifecycle_customermetrics m ON m.customer_id = i.customer_id
WHERE COALESCE(m.{column}, FALSE) <> i.{column} AND {_FRESH}""" for kind, column, reason in FLAGS]
    return ("INSERT INTO lifecycle_lifecycleevent (tenant_id, customer_id, kind, from_value, to_value, reason,"
            " occurred_at)" + "\nUNION ALL".join([stage, *flags]))


def _upsert_sql(postgres: bool) -> str:
    names = [name for name, _ in COMPARED]
    cast = "::jsonb" if postgres else ""
    select = ", ".join(f"{name}{cast if name == 'due_rewards' else ''}" for name in names)
    updates = ", ".join(f"{name} = excluded.{name}" for name in names)
    stage_changed = "m.stage IS DISTINCT FROM excluded.stage"
    return f"""
INSERT INTO lifecycle_customermetrics AS m (tenant_id, customer_id, {", ".join(names)}, days_since_last_order,
                                            reason, stage_since, computed_at)
SELECT %(tenant)s, customer_id, {select}, days_since_last_order, reason, %(now)s, %(written_at)s
FROM lifecycle_incoming WHERE 1 = 1
ON CONFLICT (customer_id) DO UPDATE SET {updates},
    days_since_last_order = excluded.days_since_last_order,
    reason = CASE WHEN {stage_changed} THEN excluded.reason ELSE m.reason END,
    stage_since = CASE WHEN {stage_changed} THEN excluded.stage_since ELSE m.stage_since END,
    computed_at = excluded.computed_at
WHERE m.computed_at <= %(read_started)s AND ({_changed("m", "excluded")})
"""
