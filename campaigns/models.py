"""Campaigns and journeys, their steps, the outbox of messages, tracking events and the workspace's sending rules.

A campaign has one or more steps (an e-mail or SMS with a delay). The dispatcher (campaigns.outbox) turns due
steps into ``Message`` rows, one per (step, customer, occurrence); the sender (campaigns.sending) claims and
delivers them. Send times live in the database (``next_attempt_at``), never in broker ETAs.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from crm_site.tenancy import TenantModel
from customers.models import Channel


class Priority(models.IntegerChoices):
    """Lower sends first and wins the frequency cap; transactional messages ignore caps and quiet hours."""

    TRANSACTIONAL = 1, "Transactional"
    LIFECYCLE = 2, "Lifecycle"
    BROADCAST = 3, "Broadcast"


class SenderIdentity(TenantModel):
    """Who a workspace's messages come from: an e-mail From/Reply-To and an SMS sender id."""

    name = models.CharField(max_length=100, help_text="For the team, e.g. 'Newsletter'.")
    from_name = models.CharField(max_length=100)
    from_email = models.EmailField()
    reply_to = models.EmailField(blank=True)
    sms_from = models.CharField(max_length=20, blank=True, help_text="SMS sender: E.164 number or 11-character name.")
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "sender identities"
        constraints = [models.UniqueConstraint(fields=["tenant", "from_email"], name="sender_unique_from_email")]
        ordering = ["-is_default", "name"]

    def __str__(self):
        return f"{self.from_name} <{self.from_email}>"

    @property
    def from_header(self) -> str:
        from email.utils import formataddr

        return formataddr((self.from_name, self.from_email))


class SendingPolicy(TenantModel):
    """A workspace's frequency cap and quiet hours; defaults apply until an admin changes them."""

    frequency_cap = models.PositiveSmallIntegerField(
        default=3, help_text="Most marketing messages a customer gets per window, across campaigns (0 = no cap)."
    )
    frequency_window_days = models.PositiveSmallIntegerField(default=7, validators=[MinValueValidator(1)])
    quiet_hours_enabled = models.BooleanField(default=True)
    quiet_hours_start = models.TimeField(default=dt.time(21, 0), help_text="In the customer's own time zone.")
    quiet_hours_end = models.TimeField(default=dt.time(8, 0))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "sending policies"
        constraints = [models.UniqueConstraint(fields=["tenant"], name="sending_policy_one_per_tenant")]

    def __str__(self):
        return f"Sending policy of workspace {self.tenant_id}"


class Trigger(models.TextChoices):
    """Lifecycle events a journey starts on: ``<LifecycleEvent.kind>:<to_value>``, or a flag kind being set."""

    ONBOARDING = "stage:onboarding", "Becomes a new customer (onboarding)"
    REINFORCE_DUE = "reinforce_due", "Buys again (reinforcement due)"
    REWARD_DUE = "reward_due", "A reward becomes due"
    AT_RISK = "stage:at_risk", "Becomes at risk"
    LAPSED = "stage:lapsed", "Lapses"
    ACTIVE = "stage:active", "Becomes active"
    HEAVY_USER = "heavy_user", "Becomes a heavy user"


class Campaign(TenantModel):
    class Kind(models.TextChoices):
        BROADCAST = "broadcast", "One-off broadcast"
        RECURRING = "recurring", "Recurring"
        JOURNEY = "journey", "Journey (lifecycle-triggered)"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        SENDING = "sending", "Sending"
        DONE = "done", "Done"
        PAUSED = "paused", "Paused"
        CANCELLED = "cancelled", "Cancelled"

    name = models.CharField(max_length=150)
    description = models.CharField(max_length=300, blank=True)
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.BROADCAST)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.BROADCAST)
    segment = models.ForeignKey(
        "segments.Segment", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="Who may receive it. A journey with a segment only admits customers who are in it.",
    )
    trigger = models.CharField(max_length=40, choices=Trigger.choices, blank=True)
    sender = models.ForeignKey(SenderIdentity, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    holdout_percent = models.PositiveSmallIntegerField(
        default=10, validators=[MaxValueValidator(50)],
        help_text="Share of the audience that deliberately gets nothing, to measure uplift.",
    )
    attribution_window_days = models.PositiveSmallIntegerField(default=7, validators=[MinValueValidator(1)])
    exit_on_purchase = models.BooleanField(
        default=True, help_text="Later journey steps skip a customer who ordered after entering the journey."
    )
    issues_reward_codes = models.BooleanField(default=False, help_text="Give each recipient a unique reward code.")
    reward_code_prefix = models.CharField(max_length=12, blank=True, default="")
    scheduled_at = models.DateTimeField(null=True, blank=True, help_text="When a broadcast goes out.")
    schedule = models.OneToOneField(
        "django_celery_beat.PeriodicTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The beat entry of a recurring campaign (editable in Django admin too).",
    )
    run_count = models.PositiveIntegerField(default=0)
    last_run_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True, help_text="Journeys react to events after this time.")
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "status", "kind"]), models.Index(fields=["tenant", "-created_at"])]
        ordering = ["-created_at"]

    def __str__(self):
        return self.name

    @property
    def trigger_parts(self) -> tuple[str, str]:
        """Return (LifecycleEvent.kind, to_value) of the trigger; to_value is '' for a flag being set."""
        kind, _, value = self.trigger.partition(":")
        return kind, value

    @property
    def is_editable(self) -> bool:
        return self.status in (self.Status.DRAFT, self.Status.PAUSED, self.Status.SCHEDULED)

    @property
    def has_messages(self) -> bool:
        """True once the dispatcher wrote a message: steps can then be edited but not moved or removed."""
        return self.messages.exists()

    def add_step(self, step: CampaignStep) -> CampaignStep:
        """Save ``step`` as the campaign's last step and return it."""
        with transaction.atomic():
            # Two marketers adding a step at once would pick the same position: the campaign row serialises them.
            Campaign.objects.select_for_update().filter(pk=self.pk).first()
            last = self.steps.aggregate(last=models.Max("position"))["last"] or 0
            step.campaign, step.tenant_id, step.position = self, self.tenant_id, last + 1
            step.save()
        return step

    def move_step(self, step: CampaignStep, offset: int) -> bool:
        """Swap ``step`` with its neighbour ``offset`` (-1 earlier, +1 later); return False at either end."""
        with transaction.atomic():
            ordered = list(self.steps.select_for_update().order_by("position"))
            index = next(i for i, each in enumerate(ordered) if each.pk == step.pk)
            if not 0 <= index + offset < len(ordered):
                return False
            other = ordered[index + offset]
            mine, theirs = step.position, other.position
            # The unique (campaign, position) constraint is checked row by row: park one step at 0 meanwhile.
            CampaignStep.objects.filter(pk=step.pk).update(position=0)
            CampaignStep.objects.filter(pk=other.pk).update(position=mine)
            CampaignStep.objects.filter(pk=step.pk).update(position=theirs)
        step.position = theirs
        return True

    def remove_step(self, step: CampaignStep) -> None:
        """Delete ``step`` and close the gap in the positions of the steps after it."""
        position = step.position
        with transaction.atomic():
            step.delete()
            # Two passes, so no row ever lands on a position another row still holds.
            self.steps.filter(position__gt=position).update(position=models.F("position") + 10000)
            self.steps.filter(position__gt=10000).update(position=models.F("position") - 10001)


class CampaignStep(TenantModel):
    class Format(models.TextChoices):
        TEXT = "text", "Plain text (links become tracked)"
        HTML = "html", "HTML"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField(default=1)
    channel = models.CharField(max_length=10, choices=Channel.choices, default=Channel.EMAIL)
    delay_days = models.PositiveSmallIntegerField(default=0, help_text="After the journey starts (or the run).")
    delay_hours = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(23)])
    subject = models.CharField(max_length=300, blank=True)
    body = models.TextField()
    body_format = models.CharField(max_length=5, choices=Format.choices, default=Format.TEXT)
    # Journeys: trigger events up to this time have been turned into messages (re-scanned with an overlap).
    dispatched_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "campaign", "position"], name="step_unique_position")
        ]
        ordering = ["campaign", "position"]

    def __str__(self):
        return f"Step {self.position} of {self.campaign_id} ({self.channel}, +{self.delay})"

    @property
    def delay(self) -> dt.timedelta:
        return dt.timedelta(days=self.delay_days, hours=self.delay_hours)


class CampaignRun(TenantModel):
    """One sending of a broadcast (a single run) or of a recurring campaign (one per schedule tick)."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    steps_dispatched = models.PositiveSmallIntegerField(default=0, help_text="Steps already turned into messages.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "campaign", "number"], name="run_unique_number")]
        indexes = [models.Index(fields=["tenant", "finished_at"])]
        ordering = ["-started_at"]

    def __str__(self):
        return f"Run {self.number} of campaign {self.campaign_id}"


class Message(TenantModel):
    """The outbox: one message per (step, customer, occurrence), created by the dispatcher, delivered by a sender.

    ``occurrence`` separates the runs of a recurring campaign (run number) and the entries of a customer
    into a journey (the triggering LifecycleEvent id); it is 0 for a broadcast.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DEFERRED = "deferred", "Deferred (quiet hours)"
        HELD_OUT = "held_out", "Held out"
        SUPPRESSED = "suppressed", "Not sent"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    class SkipReason(models.TextChoices):
        NO_CONSENT = "no_consent", "No consent for the channel"
        SUPPRESSED = "suppressed", "Address suppressed"
        NO_ADDRESS = "no_address", "No address for the channel"
        FREQUENCY_CAP = "frequency_cap", "Frequency cap reached"
        CONSENT_WITHDRAWN = "consent_withdrawn", "Consent withdrawn before sending"
        EXITED = "exited", "Left the journey"
        CANCELLED = "cancelled", "Campaign cancelled"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="messages")
    step = models.ForeignKey(CampaignStep, on_delete=models.CASCADE, related_name="messages")
    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="+")
    occurrence = models.BigIntegerField(default=0)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.BROADCAST)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    skip_reason = models.CharField(max_length=20, choices=SkipReason.choices, blank=True)
    scheduled_for = models.DateTimeField(help_text="When the step meant it to go out (moved by quiet hours).")
    next_attempt_at = models.DateTimeField(help_text="When a sender may claim it next.")
    deferred_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=80, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    to_address = models.CharField(max_length=254, blank=True)
    provider_message_id = models.CharField(max_length=200, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "step", "customer", "occurrence"], name="message_unique_step_customer"
            )
        ]
        indexes = [
            # The sender's claim: due messages of a workspace in priority order.
            models.Index(fields=["tenant", "status", "next_attempt_at"], name="message_claim"),
            models.Index(fields=["tenant", "campaign", "status"], name="message_campaign_status"),
            # The frequency cap: a customer's recent messages.
            models.Index(fields=["tenant", "customer", "scheduled_for"], name="message_customer_recent"),
            models.Index(fields=["tenant", "provider_message_id"], name="message_provider_id"),
        ]
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"Message {self.pk} ({self.status})"

    @property
    def message_id_header(self) -> str:
        """The RFC 5322 Message-ID: stable per outbox row, so a resend after a crash is recognisably the same."""
        from urllib.parse import urlsplit

        domain = getattr(settings, "RAPPORT_MESSAGE_ID_DOMAIN", "") or urlsplit(settings.SITE_URL).hostname
        return f"<rapport.{self.tenant_id}.{self.pk}@{domain}>"


class MessageEvent(TenantModel):
    """What happened to a sent message: delivered, opened, clicked, bounced, complained, unsubscribed, replied."""

    class Kind(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        OPENED = "opened", "Opened"
        CLICKED = "clicked", "Clicked"
        BOUNCED = "bounced", "Bounced"
        COMPLAINED = "complained", "Complained"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        REPLIED = "replied", "Replied"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="events")
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="+")
    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=15, choices=Kind.choices)
    occurred_at = models.DateTimeField(default=timezone.now)
    url = models.URLField(max_length=2000, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "campaign", "kind"], name="msgevent_campaign_kind"),
            models.Index(fields=["tenant", "message", "kind"], name="msgevent_message_kind"),
        ]
        ordering = ["-occurred_at", "-id"]

    def __str__(self):
        return f"{self.kind} of message {self.message_id}"


class RewardCode(TenantModel):
    """A unique code given to one customer by a reward campaign."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="reward_codes")
    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="+")
    code = models.CharField(max_length=40)
    created_at = models.DateTimeField(default=timezone.now)
    redeemed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "code"], name="reward_code_unique"),
            models.UniqueConstraint(fields=["tenant", "campaign", "customer"], name="reward_code_one_per_customer"),
        ]

    def __str__(self):
        return self.code


# Messages a sender may still pick up, and those that count against the frequency cap.
OPEN_STATUSES = (Message.Status.PENDING, Message.Status.DEFERRED, Message.Status.SENDING)
CAP_STATUSES = (*OPEN_STATUSES, Message.Status.SENT)
ACTIVE_CAMPAIGN = Q(status__in=(Campaign.Status.SCHEDULED, Campaign.Status.SENDING))
