"""Per-customer metrics, stages and flags, the transitions between them, and each workspace's thresholds."""

from decimal import Decimal

from django.db import models
from django.db.models import F
from django.db.models.functions import Cast
from django.utils import timezone

from crm_site.tenancy import TenantModel


class Stage(models.TextChoices):
    PROSPECT = "prospect", "Prospect"
    ONBOARDING = "onboarding", "Onboarding"
    ACTIVE = "active", "Active"
    AT_RISK = "at_risk", "At risk"
    LAPSED = "lapsed", "Lapsed"


class CustomerMetrics(TenantModel):
    """One row per customer, written back in bulk by a lifecycle run (only rows that changed)."""

    customer = models.OneToOneField("customers.Customer", on_delete=models.CASCADE, related_name="metrics")
    first_seen_at = models.DateTimeField(
        null=True, blank=True,
        help_text="A copy of the customer's first seen, so the customer list filtered by stage sorts by one index.",
    )
    first_order_at = models.DateTimeField(null=True, blank=True)
    last_order_at = models.DateTimeField(null=True, blank=True)
    order_count = models.IntegerField(default=0)
    revenue = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    # Row-level security lets only leakproof operators into an index condition; numeric comparisons are not
    # leakproof, bigint ones are: the customer list's spend range is a range of this column's index.
    revenue_cents = models.GeneratedField(
        expression=Cast(F("revenue") * 100, models.BigIntegerField()), output_field=models.BigIntegerField(),
        db_persist=True, help_text="The revenue in cents (exact), for index range scans of a spend range.",
    )
    trailing_revenue_12m = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    average_order_value = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    usual_gap_days = models.FloatField(null=True, blank=True, help_text="The customer's own typical days between orders.")
    days_since_last_order = models.IntegerField(null=True, blank=True)
    recency_score = models.SmallIntegerField(null=True, blank=True)
    frequency_score = models.SmallIntegerField(null=True, blank=True)
    monetary_score = models.SmallIntegerField(null=True, blank=True)
    rfm_segment = models.CharField(max_length=30, blank=True)
    historic_clv = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    p_alive = models.FloatField(null=True, blank=True)
    expected_purchases_12m = models.FloatField(null=True, blank=True)
    predicted_clv_12m = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    model_kind = models.CharField(max_length=20, blank=True, help_text="bgnbd or rules (too little data to fit).")
    stage = models.CharField(max_length=12, choices=Stage.choices, default=Stage.PROSPECT)
    stage_since = models.DateTimeField(default=timezone.now)
    is_heavy_user = models.BooleanField(default=False)
    is_reward_due = models.BooleanField(default=False)
    is_reinforce_due = models.BooleanField(default=False)
    reason = models.CharField(max_length=300, blank=True, help_text="Why the customer is in this stage, in words.")
    due_rewards = models.JSONField(
        default=list, blank=True,
        help_text='Rewards fired and not yet given: [{"rule": key, "occasion": "2025" or "", "label": text}].',
    )
    computed_at = models.DateTimeField(
        default=timezone.now, help_text="When this row last changed; days_since_last_order is as of then."
    )

    class Meta:
        verbose_name_plural = "customer metrics"
        indexes = [
            models.Index(fields=["tenant", "stage"]),
            models.Index(fields=["tenant", "is_heavy_user"]),
            models.Index(fields=["tenant", "is_reward_due"]),
            models.Index(fields=["tenant", "rfm_segment"]),
            # The customer list pages by keyset on (key, customer) in either direction: with the customer as the
            # tie-breaker one index walk serves a sort (88,000 customers of a million share revenue 0.00).
            models.Index(fields=["tenant", "revenue", "customer"], name="metrics_revenue_order"),
            # With the columns the customer list reads from the row (lifecycle.listing), so that sorting the
            # customers of a last-order range by first seen reads this index alone, not every row of the range.
            models.Index(fields=["tenant", "last_order_at", "customer"],
                         include=["first_seen_at", "stage", "revenue"], name="metrics_last_order_order"),
            models.Index(fields=["tenant", "stage", "last_order_at", "customer"], name="metrics_stage_last_order"),
            models.Index(fields=["tenant", "stage", "first_seen_at", "customer"], name="metrics_stage_first_seen"),
            models.Index(fields=["tenant", "revenue_cents", "customer"], name="metrics_revenue_cents"),
            models.Index(fields=["tenant", "first_seen_at", "customer"], name="metrics_first_seen_order"),
        ]

    def __str__(self):
        return f"Metrics of customer {self.customer_id}: {self.stage}"


class LifecycleEvent(TenantModel):
    """A change of stage or flag, with the reason a marketer reads; campaigns trigger on these."""

    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="lifecycle_events")
    kind = models.CharField(max_length=30, help_text="stage, heavy_user, reward_due, reinforce_due")
    from_value = models.CharField(max_length=30, blank=True)
    to_value = models.CharField(max_length=30)
    reason = models.CharField(max_length=300)
    occurred_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "customer", "-occurred_at"]),
            models.Index(fields=["tenant", "kind", "to_value", "occurred_at"]),
            # The Lifecycle page's latest transition (its cache stamp) and its moves between stages per month.
            models.Index(fields=["tenant", "-id"], name="lifecycle_event_latest"),
            models.Index(fields=["tenant", "occurred_at"], include=["to_value", "from_value"], name="lifecycle_event_moves",
                         condition=models.Q(kind="stage") & ~models.Q(from_value="")),
        ]
        ordering = ["-occurred_at", "-id"]

    def __str__(self):
        return f"{self.kind}: {self.from_value or '—'} → {self.to_value}"


def default_reward_rules() -> list[dict]:
    """Return the reward rules a new workspace starts with (see lifecycle.rewards for the kinds)."""
    return [
        {"key": "vip", "kind": "vip_entry", "label": "Welcome to VIP"},
        {"key": "fifth_order", "kind": "nth_order", "n": 5, "label": "Fifth order"},
        {"key": "anniversary", "kind": "anniversary", "window_days": 14, "label": "Anniversary of the first order"},
    ]


class LifecyclePolicy(TenantModel):
    """A workspace's lifecycle thresholds; defaults apply until an admin changes them in Settings."""

    onboarding_days = models.PositiveIntegerField(
        default=30, help_text="Onboarding lasts this many days from the first purchase (or sign-up, without one)."
    )
    at_risk_gap_multiplier = models.FloatField(default=2.0, help_text="Overdue when days since last order exceed this × usual gap.")
    at_risk_min_days = models.PositiveIntegerField(
        default=14, help_text="Never overdue sooner than this many days after the last order, however short the gap."
    )
    at_risk_p_alive = models.FloatField(default=0.3, help_text="At risk when P(alive) falls below this.")
    one_time_buyer_at_risk_days = models.PositiveIntegerField(
        default=90, help_text="A one-time buyer is at risk when the only order is more than this many days ago."
    )
    lapsed_days = models.PositiveIntegerField(default=365, help_text="Lapsed after this many days without an order.")
    lapsed_p_alive = models.FloatField(default=0.1, help_text="Lapsed when P(alive) falls below this.")
    heavy_user_revenue_share = models.FloatField(default=0.8, help_text="Heavy users make up this share of trailing-12-month revenue.")
    reinforce_window_days = models.PositiveIntegerField(
        default=7, help_text="Reinforce an established customer for this many days after a purchase."
    )
    gross_margin_percent = models.FloatField(
        default=100.0, help_text="Share of revenue kept as margin; customer lifetime values are revenue × this."
    )
    reward_rules = models.JSONField(default=default_reward_rules, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "lifecycle policies"
        constraints = [models.UniqueConstraint(fields=["tenant"], name="lifecycle_policy_one_per_tenant")]

    def __str__(self):
        return f"Lifecycle policy of workspace {self.tenant_id}"


class RewardGrant(TenantModel):
    """A reward given to a customer for a rule (and occasion, e.g. the anniversary year); it is then no longer due."""

    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="reward_grants")
    rule = models.CharField(max_length=40, help_text="The key of the workspace's reward rule.")
    occasion = models.CharField(max_length=20, blank=True, help_text="Which firing of a repeating rule, e.g. 2025.")
    granted_at = models.DateTimeField(default=timezone.now)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "customer", "rule", "occasion"], name="reward_grant_once")
        ]
        ordering = ["-granted_at"]

    def __str__(self):
        return f"{self.rule} {self.occasion}".strip() + f" given to customer {self.customer_id}"


class LifecycleRun(TenantModel):
    """One full lifecycle refresh of a workspace: the fitted model, population cut-offs and what changed.

    Incremental refreshes reuse the latest run's model and cut-offs, so a customer is scored against
    the same population as everyone else until the next full refresh.
    """

    class ModelKind(models.TextChoices):
        BGNBD = "bgnbd", "BG/NBD + Gamma-Gamma"
        RULES = "rules", "Rule-based (too little data)"

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    model_kind = models.CharField(max_length=20, choices=ModelKind.choices, default=ModelKind.RULES)
    model_params = models.JSONField(default=dict, blank=True)
    fallback_reason = models.CharField(max_length=300, blank=True)
    population = models.JSONField(default=dict, blank=True, help_text="RFM cut-points and the heavy-user threshold.")
    customers = models.PositiveIntegerField(default=0)
    repeat_customers = models.PositiveIntegerField(default=0)
    rows_written = models.PositiveIntegerField(default=0)
    events_written = models.PositiveIntegerField(default=0)
    stage_counts = models.JSONField(default=dict, blank=True)
    seconds = models.FloatField(default=0)
    charts = models.JSONField(
        default=dict, blank=True,
        help_text="The heavy charts and the order totals as of this run, stored right after it (lifecycle.analytics).",
    )

    class Meta:
        indexes = [models.Index(fields=["tenant", "-started_at"])]
        ordering = ["-started_at", "-id"]

    def __str__(self):
        return f"Lifecycle run of {self.started_at:%Y-%m-%d %H:%M} ({self.model_kind})"
