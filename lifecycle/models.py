"""Per-customer metrics, stages and flags, the transitions between them, and each workspace's thresholds."""

from decimal import Decimal

from django.db import models
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
    first_order_at = models.DateTimeField(null=True, blank=True)
    last_order_at = models.DateTimeField(null=True, blank=True)
    order_count = models.IntegerField(default=0)
    revenue = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
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
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "customer metrics"
        indexes = [
            models.Index(fields=["tenant", "stage"]),
            models.Index(fields=["tenant", "is_heavy_user"]),
            models.Index(fields=["tenant", "is_reward_due"]),
            models.Index(fields=["tenant", "-revenue"]),
            models.Index(fields=["tenant", "last_order_at"]),
            models.Index(fields=["tenant", "rfm_segment"]),
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
        ]
        ordering = ["-occurred_at", "-id"]

    def __str__(self):
        return f"{self.kind}: {self.from_value or '—'} → {self.to_value}"


class LifecyclePolicy(TenantModel):
    """A workspace's lifecycle thresholds; defaults apply until an admin changes them in Settings."""

    onboarding_days = models.PositiveIntegerField(default=30)
    at_risk_gap_multiplier = models.FloatField(default=2.0, help_text="Overdue when days since last order exceed this × usual gap.")
    at_risk_p_alive = models.FloatField(default=0.3, help_text="At risk when P(alive) falls below this.")
    one_time_buyer_at_risk_days = models.PositiveIntegerField(default=90)
    lapsed_days = models.PositiveIntegerField(default=365)
    heavy_user_revenue_share = models.FloatField(default=0.8, help_text="Heavy users make up this share of trailing-12-month revenue.")
    reinforce_window_days = models.PositiveIntegerField(default=7)
    reward_rules = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "lifecycle policies"
        constraints = [models.UniqueConstraint(fields=["tenant"], name="lifecycle_policy_one_per_tenant")]

    def __str__(self):
        return f"Lifecycle policy of workspace {self.tenant_id}"
