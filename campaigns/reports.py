"""What a campaign did: the outbox funnel, engagement, and conversions against the holdout group.

Uplift compares customers who were sent the first step with the held-out customers (chosen at random by
campaigns.outbox.holdout_bucket, so the two groups differ only by the message). A customer converts when
they place an order within the attribution window after the send (held out: after the moment the
message would have gone). The difference in conversion rate comes with a 95% confidence interval
(normal approximation); with small groups the report says so instead of pretending.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import (
    Count,
    DecimalField,
    Exists,
    ExpressionWrapper,
    F,
    FloatField,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce

from campaigns.models import Campaign, Message, MessageEvent
from customers.models import ConsentEvent, Order

MIN_GROUP = 100
MIN_CONVERSIONS = 10
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% confidence interval."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass
class GroupResult:
    """One side of the experiment: how many, how many converted, what they spent."""

    customers: int = 0
    conversions: int = 0
    revenue: Decimal = Decimal("0")
    revenue_squares: float = 0.0

    @property
    def conversion_rate(self) -> float:
        return self.conversions / self.customers if self.customers else 0.0

    @property
    def revenue_per_customer(self) -> float:
        return float(self.revenue) / self.customers if self.customers else 0.0


@dataclass
class CampaignReport:
    """Everything the report page shows for one campaign."""

    targeted: int = 0
    held_out: int = 0
    not_sent: int = 0
    deferred: int = 0
    pending: int = 0
    sent: int = 0
    failed: int = 0
    delivered: int = 0
    delivered_is_estimate: bool = True
    opened: int = 0
    clicked: int = 0
    replied: int = 0
    unsubscribed: int = 0
    bounced: int = 0
    complained: int = 0
    not_sent_reasons: dict[str, int] = field(default_factory=dict)
    attribution_days: int = 7
    treatment: GroupResult = field(default_factory=GroupResult)
    control: GroupResult = field(default_factory=GroupResult)
    uplift: Interval | None = None
    revenue_uplift: Interval | None = None
    incremental_conversions: float = 0.0
    incremental_revenue: float = 0.0
    sample_too_small: bool = True
    sample_message: str = ""

    def rate(self, count: int) -> float:
        """Return ``count`` as a share of messages sent (0 when nothing was sent)."""
        return count / self.sent if self.sent else 0.0


def difference_interval(successes_a: int, n_a: int, successes_b: int, n_b: int) -> Interval | None:
    """Return the difference of two proportions (a − b) with its 95% Wald interval; None when a group is empty."""
    if not n_a or not n_b:
        return None
    p_a, p_b = successes_a / n_a, successes_b / n_b
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    diff = p_a - p_b
    return Interval(diff, diff - Z_95 * se, diff + Z_95 * se)


def mean_difference_interval(a: GroupResult, b: GroupResult) -> Interval | None:
    """Return the difference of revenue per customer (a − b) with a 95% Welch interval; None when a group is too small."""
    if a.customers < 2 or b.customers < 2:
        return None

    def variance(group: GroupResult) -> float:
        mean = group.revenue_per_customer
        return max((group.revenue_squares - group.customers * mean * mean) / (group.customers - 1), 0.0)

    se = math.sqrt(variance(a) / a.customers + variance(b) / b.customers)
    diff = a.revenue_per_customer - b.revenue_per_customer
    return Interval(diff, diff - Z_95 * se, diff + Z_95 * se)


def campaign_report(campaign: Campaign) -> CampaignReport:
    """Return the report of a campaign (a handful of aggregate queries, however many messages)."""
    report = CampaignReport(attribution_days=campaign.attribution_window_days)
    messages = Message.objects.filter(campaign=campaign)
    status = Message.Status
    funnel = messages.aggregate(
        targeted=Count("customer", distinct=True),
        held_out=Count("pk", filter=Q(status=status.HELD_OUT)),
        not_sent=Count("pk", filter=Q(status=status.SUPPRESSED)),
        deferred=Count("pk", filter=Q(deferred_at__isnull=False)),
        pending=Count("pk", filter=Q(status__in=(status.PENDING, status.DEFERRED, status.SENDING))),
        sent=Count("pk", filter=Q(status=status.SENT)),
        failed=Count("pk", filter=Q(status=status.FAILED)),
    )
    for name, value in funnel.items():
        setattr(report, name, value or 0)
    report.not_sent_reasons = dict(
        messages.filter(status=status.SUPPRESSED).order_by().values_list("skip_reason").annotate(n=Count("pk"))
    )
    kind = MessageEvent.Kind
    engagement = MessageEvent.objects.filter(campaign=campaign).aggregate(
        **{name: Count("message", distinct=True, filter=Q(kind=value)) for name, value in (
            ("delivered", kind.DELIVERED), ("opened", kind.OPENED), ("clicked", kind.CLICKED),
            ("replied", kind.REPLIED), ("bounced", kind.BOUNCED), ("complained", kind.COMPLAINED),
            ("unsubscribed_events", kind.UNSUBSCRIBED),
        )}
    )
    for name in ("opened", "clicked", "replied", "bounced", "complained"):
        setattr(report, name, engagement[name] or 0)
    if engagement["delivered"]:
        report.delivered, report.delivered_is_estimate = engagement["delivered"], False
    else:  # plain SMTP reports no deliveries: accepted by the server, less what bounced
        report.delivered = max(report.sent - report.bounced, 0)
    window = dt.timedelta(days=campaign.attribution_window_days)
    report.unsubscribed = max(_unsubscribed(campaign, window), engagement["unsubscribed_events"] or 0)
    _conversions(campaign, report, window)
    return report


def _unsubscribed(campaign: Campaign, window: dt.timedelta) -> int:
    """Customers who withdrew consent for the channel within the window after a message of this campaign."""
    sent = Message.objects.filter(campaign=campaign, status=Message.Status.SENT).annotate(
        window_end=ExpressionWrapper(F("sent_at") + Value(window), output_field=Message._meta.get_field("sent_at"))
    )
    withdrew = ConsentEvent.objects.filter(
        customer=OuterRef("customer_id"), channel=OuterRef("channel"), action=ConsentEvent.Action.WITHDRAW,
        occurred_at__gte=OuterRef("sent_at"), occurred_at__lte=OuterRef("window_end"),
    )
    return sent.filter(Exists(withdrew)).values("customer").distinct().count()


def _conversions(campaign: Campaign, report: CampaignReport, window: dt.timedelta) -> None:
    """Fill the treatment/control groups and the uplift from the first step's messages (one query)."""
    first_step = campaign.steps.order_by("position").values_list("pk", flat=True).first()
    if first_step is None:
        return
    datetime_field = Message._meta.get_field("sent_at")
    entries = (
        Message.objects.filter(step_id=first_step, status__in=(Message.Status.SENT, Message.Status.HELD_OUT))
        .annotate(anchor=Coalesce("sent_at", "scheduled_for"))
        .annotate(window_end=ExpressionWrapper(F("anchor") + Value(window), output_field=datetime_field))
    )
    orders_in_window = Order.objects.filter(
        customer=OuterRef("customer_id"), placed_at__gt=OuterRef("anchor"), placed_at__lte=OuterRef("window_end")
    ).exclude(status=Order.Status.CANCELLED)
    spent = (
        orders_in_window.order_by().values("customer")
        .annotate(total=Sum(F("total") - F("refunded_amount"))).values("total")
    )
    money = DecimalField(max_digits=14, decimal_places=2)
    rows = (
        entries.annotate(converted=Exists(orders_in_window),
                         revenue=Coalesce(Subquery(spent, output_field=money), Value(Decimal("0")), output_field=money))
        .order_by()
        .values("status")
        .annotate(
            customers=Count("pk"),
            conversions=Count("pk", filter=Q(converted=True)),
            revenue_total=Sum("revenue"),
            revenue_squares=Sum(ExpressionWrapper(F("revenue") * F("revenue"), output_field=FloatField())),
        )
    )
    for row in rows:
        group = report.treatment if row["status"] == Message.Status.SENT else report.control
        group.customers = row["customers"]
        group.conversions = row["conversions"]
        group.revenue = row["revenue_total"] or Decimal("0")
        group.revenue_squares = float(row["revenue_squares"] or 0)
    treatment, control = report.treatment, report.control
    report.uplift = difference_interval(treatment.conversions, treatment.customers, control.conversions,
                                        control.customers)
    report.revenue_uplift = mean_difference_interval(treatment, control)
    if report.uplift:
        report.incremental_conversions = report.uplift.estimate * treatment.customers
    if report.revenue_uplift:
        report.incremental_revenue = report.revenue_uplift.estimate * treatment.customers
    too_small = []
    if control.customers < MIN_GROUP:
        too_small.append(f"the holdout group has {control.customers} customers (at least {MIN_GROUP} needed)")
    if treatment.customers < MIN_GROUP:
        too_small.append(f"{treatment.customers} customers were sent the message (at least {MIN_GROUP} needed)")
    if treatment.conversions + control.conversions < MIN_CONVERSIONS:
        too_small.append(f"only {treatment.conversions + control.conversions} conversions so far "
                         f"(at least {MIN_CONVERSIONS} needed)")
    report.sample_too_small = bool(too_small)
    report.sample_message = ("Sample too small to measure uplift: " + "; ".join(too_small) + ".") if too_small else ""
