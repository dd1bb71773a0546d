"""The dispatcher: turns due campaign steps into outbox ``Message`` rows, set-based, one statement per step.

For every due step one ``INSERT … SELECT … ON CONFLICT DO NOTHING`` writes a row per audience member
(the unique key (tenant, step, customer, occurrence) makes a repeated pass harmless). The SELECT
classifies each row in SQL, in this order:

1. not reachable on the channel (no consent, suppressed address, paused) -> ``suppressed``/``no_consent``;
2. a later journey step for a customer who left the journey (ordered since, or left the stage) -> ``exited``;
3. the workspace frequency cap reached (marketing messages in the rolling window, transactional exempt)
   -> ``suppressed``/``frequency_cap``; campaigns are dispatched in priority order, so lifecycle
   messages take the cap before broadcasts;
4. the deterministic holdout group -> ``held_out`` (recorded, never sent, the baseline for uplift);
5. everyone else -> ``pending``.

Quiet hours are applied afterwards, per customer time zone: due marketing messages whose recipient is
in quiet hours are ``deferred`` to the end of them (a 'deferred' entry on the customer's timeline).
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import (
    BigIntegerField,
    Case,
    CharField,
    Count,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Concat, JSONObject
from django.utils import timezone

from campaigns.models import (
    CAP_STATUSES,
    OPEN_STATUSES,
    Campaign,
    CampaignRun,
    CampaignStep,
    Message,
    Priority,
    SendingPolicy,
)
from crm_site.models import Workspace
from crm_site.tenancy import current_tenant_id
from customers.consent import reachable_customers
from customers.models import Customer, Interaction, Order

log = logging.getLogger(__name__)

# Journey events committed a little after their occurred_at (a long lifecycle run) are still picked up.
JOURNEY_RESCAN_OVERLAP = dt.timedelta(hours=2)
FALSY_FLAG_VALUES = ("", "0", "false", "False", "off", "no", "cleared")

# Knuth's multiplicative (Fibonacci) hash of the customer id, shifted by a pseudo-random per-campaign offset:
# spreads consecutive ids evenly, differs between campaigns, and computes the same in Python and in SQL
# (every product stays below 2**63, so no database overflows).
_HASH_MODULUS = 2**31
_CUSTOMER_MULTIPLIER = 1327217885  # about 2**31 / golden ratio, odd
_CAMPAIGN_MULTIPLIER = 1103515245


def holdout_bucket(campaign_id: int, customer_id: int) -> int:
    """Return the customer's bucket 0..99 for a campaign; buckets below the holdout percent are held out."""
    mixed = (
        (customer_id % _HASH_MODULUS) * _CUSTOMER_MULTIPLIER + (campaign_id % _HASH_MODULUS) * _CAMPAIGN_MULTIPLIER
    ) % _HASH_MODULUS
    return mixed * 100 // _HASH_MODULUS


def _holdout_bucket_sql(campaign_id: int, customer_ref: str) -> ExpressionWrapper:
    offset = (campaign_id % _HASH_MODULUS) * _CAMPAIGN_MULTIPLIER
    mixed = ((F(customer_ref) % Value(_HASH_MODULUS)) * Value(_CUSTOMER_MULTIPLIER) + Value(offset)) % Value(
        _HASH_MODULUS
    )
    return ExpressionWrapper(mixed * Value(100) / Value(_HASH_MODULUS), output_field=BigIntegerField())


def sending_policy() -> SendingPolicy:
    """Return the current workspace's sending policy (defaults when none was saved)."""
    policy = SendingPolicy.objects.first()
    return policy or SendingPolicy(tenant_id=current_tenant_id())


@dataclass
class DispatchResult:
    """What one dispatch pass did in a workspace."""

    created: int = 0
    deferred: int = 0
    steps: list[str] = field(default_factory=list)


# --- The set-based insert -------------------------------------------------------------------------

_MESSAGE_COLUMNS = [
    "tenant", "campaign", "step", "customer", "occurrence", "channel", "priority", "status", "skip_reason",
    "scheduled_for", "next_attempt_at", "created_at", "lease_owner", "attempts", "to_address",
    "provider_message_id", "error",
]


def insert_from_select(model, field_names: list[str], queryset: QuerySet) -> int:
    """Run ``INSERT INTO model (fields) <queryset's SELECT> ON CONFLICT DO NOTHING``; return the rows inserted.

    ``queryset`` must be a values_list whose columns match ``field_names`` in order.
    """
    select_sql, params = queryset.query.sql_with_params()
    quote = connection.ops.quote_name
    columns = ", ".join(quote(model._meta.get_field(name).column) for name in field_names)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(model._meta.db_table)} ({columns}) {select_sql} ON CONFLICT DO NOTHING", params
        )
        return max(cursor.rowcount, 0)


def _message_rows(queryset: QuerySet, *, campaign: Campaign, step: CampaignStep, customer_ref: str,
                  occurrence, scheduled_for, now: dt.datetime, policy: SendingPolicy,
                  exited: Q | None = None) -> QuerySet:
    """Annotate ``queryset`` (customers or lifecycle events) with the columns of a classified Message row."""
    reachable = Exists(reachable_customers(step.channel, at=now).filter(pk=OuterRef(customer_ref)))
    status = Message.Status
    reason = Message.SkipReason
    rules: list[tuple[Q, str, str]] = [(~Q(reachable), status.SUPPRESSED, reason.NO_CONSENT)]
    if exited is not None:
        rules.append((exited, status.SUPPRESSED, reason.EXITED))
    if policy.frequency_cap and campaign.priority != Priority.TRANSACTIONAL:
        recent = (
            Message.objects.filter(
                customer=OuterRef(customer_ref),
                status__in=CAP_STATUSES,
                priority__gt=Priority.TRANSACTIONAL,
                scheduled_for__gt=now - dt.timedelta(days=policy.frequency_window_days),
            )
            .order_by()
            .values("customer")
            .annotate(n=Count("pk"))
            .values("n")
        )
        rules.append((Q(m_recent__gte=policy.frequency_cap), status.SUPPRESSED, reason.FREQUENCY_CAP))
        queryset = queryset.annotate(m_recent=Coalesce(Subquery(recent, output_field=IntegerField()), 0))
    if campaign.holdout_percent:
        queryset = queryset.annotate(m_bucket=_holdout_bucket_sql(campaign.pk, customer_ref))
        rules.append((Q(m_bucket__lt=campaign.holdout_percent), status.HELD_OUT, ""))
    status_case = Case(*[When(condition, then=Value(value)) for condition, value, _ in rules],
                       default=Value(status.PENDING), output_field=CharField())
    reason_case = Case(*[When(condition, then=Value(value)) for condition, _, value in rules],
                       default=Value(""), output_field=CharField())
    return queryset.order_by().annotate(
        m_tenant=Value(campaign.tenant_id),
        m_campaign=Value(campaign.pk),
        m_step=Value(step.pk),
        m_customer=F(customer_ref),
        m_occurrence=occurrence,
        m_channel=Value(step.channel),
        m_priority=Value(campaign.priority),
        m_status=status_case,
        m_skip_reason=reason_case,
        m_scheduled_for=scheduled_for,
        m_next_attempt_at=scheduled_for,
        m_created_at=Value(now, output_field=DateTimeField()),
        m_lease_owner=Value(""),
        m_attempts=Value(0),
        m_to_address=Value(""),
        m_provider_message_id=Value(""),
        m_error=Value(""),
    ).values_list(*[f"m_{name}" for name in _MESSAGE_COLUMNS])


# --- Broadcasts and recurring runs ---------------------------------------------------------------


def campaign_audience(campaign: Campaign) -> QuerySet:
    """Return the customers a campaign is addressed to: its segment's members, else every (non-erased) customer."""
    if campaign.segment_id:
        from segments.audience import segment_members

        return segment_members(campaign.segment)
    return Customer.objects.filter(erased_at__isnull=True)


def start_run(campaign: Campaign, *, now: dt.datetime | None = None) -> CampaignRun:
    """Open the next run of a broadcast or recurring campaign and return it (steps are dispatched as they fall due)."""
    now = now or timezone.now()
    locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
    locked.run_count += 1
    locked.last_run_at = now
    locked.save(update_fields=["run_count", "last_run_at", "updated_at"])
    campaign.run_count, campaign.last_run_at = locked.run_count, now
    return CampaignRun.objects.create(campaign=locked, number=locked.run_count, started_at=now)


def dispatch_run_step(run: CampaignRun, step: CampaignStep, *, now: dt.datetime, policy: SendingPolicy) -> int:
    """Write the messages of one step of a run; return how many rows were created."""
    campaign = run.campaign
    steps = list(campaign.steps.order_by("position").values_list("pk", flat=True))
    if step.pk == steps[0]:
        audience = campaign_audience(campaign)
    else:
        # Later steps go to whoever the first step of this run addressed (held-out ones stay held out).
        first_step_rows = Message.objects.filter(step_id=steps[0], occurrence=run.number, customer=OuterRef("pk"))
        audience = Customer.objects.filter(Exists(first_step_rows.exclude(status=Message.Status.SUPPRESSED)))
    rows = _message_rows(
        audience, campaign=campaign, step=step, customer_ref="pk",
        occurrence=Value(run.number, output_field=BigIntegerField()),
        scheduled_for=Value(run.started_at + step.delay, output_field=DateTimeField()),
        now=now, policy=policy,
    )
    return insert_from_select(Message, _MESSAGE_COLUMNS, rows)


# --- Journeys --------------------------------------------------------------------------------------


def trigger_events(campaign: Campaign) -> QuerySet:
    """Return the lifecycle events that start the journey (after it went live, in its segment when it has one)."""
    from lifecycle.models import LifecycleEvent

    kind, value = campaign.trigger_parts
    events = LifecycleEvent.objects.filter(kind=kind, customer__erased_at__isnull=True)
    events = events.filter(to_value=value) if value else events.exclude(to_value__in=FALSY_FLAG_VALUES)
    if campaign.started_at:
        events = events.filter(occurred_at__gte=campaign.started_at)
    if campaign.segment_id:
        from segments.audience import segment_members

        events = events.filter(customer__in=segment_members(campaign.segment).values("pk"))
    return events


def _journey_exit(campaign: Campaign, step_is_first: bool) -> Q | None:
    """A customer leaves the journey before a later step: bought since entering, or left the trigger stage."""
    if step_is_first:
        return None
    conditions = Q()
    if campaign.exit_on_purchase:
        ordered_since = Order.objects.filter(customer=OuterRef("customer_id"), placed_at__gt=OuterRef("occurred_at"))
        conditions |= Q(Exists(ordered_since))
    kind, value = campaign.trigger_parts
    if kind == "stage" and value:
        from lifecycle.models import CustomerMetrics

        moved_on = CustomerMetrics.objects.filter(customer=OuterRef("customer_id")).exclude(stage=value)
        conditions |= Q(Exists(moved_on))
    return conditions or None


def dispatch_journey_step(campaign: Campaign, step: CampaignStep, *, is_first: bool, now: dt.datetime,
                          policy: SendingPolicy) -> int:
    """Write the messages of a journey step for trigger events whose delay has passed; return rows created."""
    delay = step.delay
    events = trigger_events(campaign).filter(occurred_at__lte=now - delay)
    if step.dispatched_until:
        events = events.filter(occurred_at__gt=step.dispatched_until - delay - JOURNEY_RESCAN_OVERLAP)
    already = Message.objects.filter(step=step, customer=OuterRef("customer_id"), occurrence=OuterRef("pk"))
    events = events.exclude(Exists(already))
    rows = _message_rows(
        events, campaign=campaign, step=step, customer_ref="customer_id",
        occurrence=F("pk"),
        scheduled_for=ExpressionWrapper(F("occurred_at") + Value(delay), output_field=DateTimeField()),
        now=now, policy=policy, exited=_journey_exit(campaign, is_first),
    )
    created = insert_from_select(Message, _MESSAGE_COLUMNS, rows)
    CampaignStep.objects.filter(pk=step.pk).update(dispatched_until=now)
    return created


# --- Quiet hours -------------------------------------------------------------------------------------


def _zone(name: str, fallback: zoneinfo.ZoneInfo) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name) if name else fallback
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return fallback


def quiet_hours_end(local_now: dt.datetime, start: dt.time, end: dt.time) -> dt.datetime | None:
    """Return the aware local time quiet hours end when ``local_now`` falls inside them, else None.

    The window may wrap midnight (21:00-08:00) or not (13:00-14:00); start == end means no quiet hours.
    """
    if start == end:
        return None
    clock = local_now.time().replace(tzinfo=None)
    inside = (start <= clock < end) if start < end else (clock >= start or clock < end)
    if not inside:
        return None
    day = local_now.date() if (start < end or clock < end) else local_now.date() + dt.timedelta(days=1)
    naive_end = dt.datetime.combine(day, end)
    # Wall-clock arithmetic in the customer's zone, so a DST change does not move "08:00".
    return naive_end.replace(tzinfo=local_now.tzinfo)


def defer_for_quiet_hours(*, now: dt.datetime | None = None, workspace: Workspace | None = None) -> int:
    """Defer due marketing messages whose recipients are in quiet hours to the end of them; return how many.

    One UPDATE per distinct time zone among due messages, and one INSERT … SELECT of 'deferred'
    timeline entries for the messages deferred in this pass.
    """
    now = now or timezone.now()
    policy = sending_policy()
    if not policy.quiet_hours_enabled:
        return 0
    workspace = workspace or Workspace.objects.get(pk=current_tenant_id())
    workspace_zone = _zone(workspace.time_zone, zoneinfo.ZoneInfo("UTC"))
    due = Message.objects.filter(status=Message.Status.PENDING, next_attempt_at__lte=now,
                                 priority__gt=Priority.TRANSACTIONAL)
    raw_zones = list(due.order_by().values_list("customer__time_zone", flat=True).distinct())
    zones: dict[str, list[str]] = {}
    for raw in raw_zones:
        zones.setdefault(_zone(raw or "", workspace_zone).key, []).append(raw or "")
    deferred = 0
    for zone_name, raw_values in zones.items():
        local_now = now.astimezone(zoneinfo.ZoneInfo(zone_name))
        end = quiet_hours_end(local_now, policy.quiet_hours_start, policy.quiet_hours_end)
        if end is None:
            continue
        until = end.astimezone(dt.UTC)
        deferred += due.filter(customer__time_zone__in=raw_values).update(
            status=Message.Status.DEFERRED, scheduled_for=until, next_attempt_at=until, deferred_at=now
        )
    if deferred:
        _record_deferrals_on_timeline(now)
    return deferred


def _record_deferrals_on_timeline(deferred_at: dt.datetime) -> int:
    rows = (
        Message.objects.filter(status=Message.Status.DEFERRED, deferred_at=deferred_at)
        .order_by()
        .annotate(
            i_tenant=F("tenant_id"),
            i_customer=F("customer_id"),
            i_kind=Value(Interaction.Kind.DEFERRED.value),
            i_occurred_at=Value(deferred_at, output_field=DateTimeField()),
            i_summary=Concat(Value("“"), F("campaign__name"), Value("” held back for quiet hours"),
                             output_field=CharField()),
            i_details=JSONObject(message_id=F("pk"), campaign_id=F("campaign_id"), until=F("next_attempt_at")),
        )
        .values_list("i_tenant", "i_customer", "i_kind", "i_occurred_at", "i_summary", "i_details")
    )
    return insert_from_select(Interaction, ["tenant", "customer", "kind", "occurred_at", "summary", "details"], rows)


# --- One pass over a workspace -----------------------------------------------------------------------


def dispatch_due(*, now: dt.datetime | None = None) -> DispatchResult:
    """Turn every due step of the current workspace's live campaigns into messages; return what was done.

    Campaigns go in priority order (transactional, lifecycle, broadcast) so the frequency cap favours
    the more important message. Idempotent: running it twice creates nothing new.
    """
    now = now or timezone.now()
    policy = sending_policy()
    result = DispatchResult()
    # Locked, skipping what another dispatcher holds: two dispatch tasks of a workspace at once (beat kicks
    # piling up behind a busy or restarted worker) must not open two runs of one broadcast.
    due_broadcasts = Campaign.objects.select_for_update(skip_locked=True, of=("self",)).filter(
        kind=Campaign.Kind.BROADCAST, status=Campaign.Status.SCHEDULED, scheduled_at__lte=now
    )
    for campaign in due_broadcasts:
        start_run(campaign, now=now)
        Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING, started_at=now)

    runs = (
        CampaignRun.objects.filter(finished_at__isnull=True)
        .exclude(campaign__status__in=(Campaign.Status.PAUSED, Campaign.Status.CANCELLED, Campaign.Status.DRAFT))
        .select_related("campaign")
        .order_by("campaign__priority", "started_at")
    )
    journeys = Campaign.objects.filter(kind=Campaign.Kind.JOURNEY, status=Campaign.Status.SENDING).exclude(trigger="")
    work = [(run.campaign.priority, 0, run) for run in runs] + [(c.priority, 1, c) for c in journeys]
    for _priority, _kind, item in sorted(work, key=lambda entry: entry[:2]):
        if isinstance(item, CampaignRun):
            result.created += _dispatch_run(item, now=now, policy=policy, result=result)
        else:
            steps = list(item.steps.order_by("position"))
            for index, step in enumerate(steps):
                created = dispatch_journey_step(item, step, is_first=index == 0, now=now, policy=policy)
                result.created += created
                result.steps.append(f"{item.name} step {step.position}: {created}")
    result.deferred = defer_for_quiet_hours(now=now)
    finish_completed(now=now)
    return result


def _dispatch_run(run: CampaignRun, *, now: dt.datetime, policy: SendingPolicy, result: DispatchResult) -> int:
    steps = list(run.campaign.steps.order_by("position"))
    created = 0
    while run.steps_dispatched < len(steps):
        step = steps[run.steps_dispatched]
        if run.started_at + step.delay > now:
            break
        count = dispatch_run_step(run, step, now=now, policy=policy)
        created += count
        result.steps.append(f"{run.campaign.name} run {run.number} step {step.position}: {count}")
        run.steps_dispatched += 1
        CampaignRun.objects.filter(pk=run.pk).update(steps_dispatched=run.steps_dispatched)
    return created


def finish_completed(*, now: dt.datetime | None = None) -> int:
    """Close runs with every step dispatched and nothing left to send; broadcasts become done. Return runs closed."""
    now = now or timezone.now()
    open_messages = Message.objects.filter(campaign=OuterRef("campaign"), occurrence=OuterRef("number"),
                                           status__in=OPEN_STATUSES)
    step_count = (
        CampaignStep.objects.filter(campaign=OuterRef("campaign")).order_by().values("campaign")
        .annotate(n=Count("pk")).values("n")
    )
    finished = list(
        CampaignRun.objects.filter(finished_at__isnull=True)
        .annotate(step_count=Coalesce(Subquery(step_count, output_field=IntegerField()), 0))
        .filter(steps_dispatched__gte=F("step_count"))
        .exclude(Exists(open_messages))
        .values_list("pk", "campaign_id")
    )
    if not finished:
        return 0
    CampaignRun.objects.filter(pk__in=[pk for pk, _ in finished]).update(finished_at=now)
    Campaign.objects.filter(
        pk__in={campaign_id for _, campaign_id in finished}, kind=Campaign.Kind.BROADCAST,
        status=Campaign.Status.SENDING,
    ).update(status=Campaign.Status.DONE, finished_at=now)
    return len(finished)
