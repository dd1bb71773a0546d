"""Who the customers are, what they bought, what they agreed to, and what happened between us."""

import hashlib

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Cast, Lower, Round
from django.utils import timezone

from crm_site.tenancy import TenantModel


class Channel(models.TextChoices):
    EMAIL = "email", "E-mail"
    SMS = "sms", "SMS"


class Customer(TenantModel):
    external_id = models.CharField(max_length=100, blank=True, help_text="The id in the shop's own system.")
    email = models.EmailField(max_length=254, blank=True)
    phone = models.CharField(max_length=20, blank=True, help_text="E.164, e.g. +4930123456")
    first_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100, blank=True)
    time_zone = models.CharField(max_length=64, blank=True, help_text="IANA name; the workspace's when blank.")
    locale = models.CharField(max_length=16, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    # Derived from the consent ledger by customers.consent; kept here so audiences filter on one table.
    email_opt_in = models.BooleanField(default=False)
    sms_opt_in = models.BooleanField(default=False)
    first_seen_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    erased_at = models.DateTimeField(null=True, blank=True)
    # Lowercased names for the list's search and name order. Under row-level security PostgreSQL uses an index
    # only for leakproof operators, and lower() is not one, so the lowercased value is stored, not computed.
    first_name_key = models.GeneratedField(
        expression=Lower("first_name"), output_field=models.CharField(max_length=100), db_persist=True
    )
    last_name_key = models.GeneratedField(
        expression=Lower("last_name"), output_field=models.CharField(max_length=100), db_persist=True
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "external_id"], condition=~Q(external_id=""), name="customer_unique_external_id"
            ),
            models.UniqueConstraint(fields=["tenant", "email"], condition=~Q(email=""), name="customer_unique_email"),
        ]
        indexes = [
            # The customer list (customers.listing): keyset pages seek on (sort key, id), and the search matches
            # prefixes with ^@, which pattern_ops indexes serve (and which, unlike LIKE, row-level security allows).
            models.Index(fields=["tenant", "last_name_key", "first_name_key", "id"], name="customer_name_order"),
            models.Index(fields=["tenant", "first_seen_at", "id"], name="customer_first_seen_order"),
            models.Index(fields=["tenant", "last_name_key"], opclasses=["int8_ops", "text_pattern_ops"],
                         name="customer_last_name_prefix"),
            models.Index(fields=["tenant", "first_name_key"], opclasses=["int8_ops", "text_pattern_ops"],
                         name="customer_first_name_prefix"),
            models.Index(fields=["tenant", "email"], opclasses=["int8_ops", "text_pattern_ops"],
                         name="customer_email_prefix"),
            models.Index(fields=["tenant", "phone"], opclasses=["int8_ops", "text_pattern_ops"],
                         name="customer_phone_prefix"),
            models.Index(fields=["tenant", "-created_at"]),
        ]
        ordering = ["-created_at"]

    def __str__(self):
        return self.full_name or self.email or self.phone or f"Customer {self.pk}"

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


class Product(TenantModel):
    sku = models.CharField(max_length=64)
    name = models.CharField(max_length=200)
    category = models.CharField(max_length=100, blank=True)
    price = models.DecimalField(max_digits=12, decimal_places=2, default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "sku"], name="product_unique_sku")]
        indexes = [models.Index(fields=["tenant", "category"])]
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.sku})"


class Order(TenantModel):
    class Status(models.TextChoices):
        PLACED = "placed", "Placed"
        REFUNDED = "refunded", "Refunded"
        PARTIALLY_REFUNDED = "partially_refunded", "Partially refunded"
        CANCELLED = "cancelled", "Cancelled"

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    external_id = models.CharField(max_length=100)
    placed_at = models.DateTimeField()
    total = models.DecimalField(max_digits=12, decimal_places=2)
    refunded_amount = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    # The lifecycle refresh reads every order of a workspace; numeric arithmetic per order was half of the
    # server's work in that read, so the net amount is kept in integer cents, computed once when written.
    net_cents = models.GeneratedField(
        expression=Cast(Round((F("total") - F("refunded_amount")) * 100), models.BigIntegerField()),
        output_field=models.BigIntegerField(), db_persist=True,
        help_text="The total net of refunds in cents (exact), computed by the database.",
    )
    currency = models.CharField(max_length=3, default="EUR")
    channel = models.CharField(max_length=30, blank=True, help_text="web, store, phone, marketplace…")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PLACED)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "external_id"], name="order_unique_external_id")]
        indexes = [
            models.Index(fields=["tenant", "customer", "placed_at"]),
            models.Index(fields=["tenant", "placed_at"]),
        ]
        ordering = ["-placed_at"]

    def __str__(self):
        return f"Order {self.external_id}"

    @property
    def net_total(self):
        return self.total - self.refunded_amount


class OrderLine(TenantModel):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, null=True, blank=True, on_delete=models.SET_NULL, related_name="lines")
    sku = models.CharField(max_length=64, blank=True)
    quantity = models.IntegerField(default=1)
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)
    line_total = models.DecimalField(max_digits=12, decimal_places=2)
    returned_quantity = models.IntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["tenant", "order"]), models.Index(fields=["tenant", "product"])]

    def __str__(self):
        return f"{self.quantity} × {self.sku}"


class ConsentEvent(TenantModel):
    """One line of the append-only consent ledger; the current state is derived from the latest event."""

    class Action(models.TextChoices):
        GRANT = "grant", "Granted"
        WITHDRAW = "withdraw", "Withdrawn"

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="consent_events")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    purpose = models.CharField(max_length=40, default="marketing")
    action = models.CharField(max_length=10, choices=Action.choices)
    occurred_at = models.DateTimeField(default=timezone.now)
    method = models.CharField(max_length=40, help_text="form, double_opt_in, import, api, admin, sms_keyword, unsubscribe…")
    source = models.CharField(max_length=200, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True)
    wording_version = models.CharField(max_length=40, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True, help_text="Double opt-in confirmation time.")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "customer", "channel", "-occurred_at"])]
        ordering = ["-occurred_at", "-id"]

    def __str__(self):
        return f"{self.channel} {self.purpose} {self.action} at {self.occurred_at:%Y-%m-%d}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError("The consent ledger is append-only: record a new event instead.")
        super().save(*args, **kwargs)


def suppression_hash(channel: str, value: str) -> str:
    """Return the keyed hash under which an address is suppressed, so it survives erasure of the customer."""
    normalized = value.strip().lower()
    return hashlib.sha256(f"{settings.SECRET_KEY}:{channel}:{normalized}".encode()).hexdigest()


class Suppression(TenantModel):
    class Reason(models.TextChoices):
        BOUNCED = "bounced", "Bounced"
        COMPLAINED = "complained", "Complained"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        ERASED = "erased", "Erased on request"
        MANUAL = "manual", "Manual"

    channel = models.CharField(max_length=10, choices=Channel.choices)
    value_hash = models.CharField(max_length=64)
    reason = models.CharField(max_length=20, choices=Reason.choices)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "channel", "value_hash"], name="suppression_unique_value")
        ]

    def __str__(self):
        return f"{self.channel} suppressed ({self.reason})"


class Interaction(TenantModel):
    """The customer's timeline: purchases, messages, opens, clicks, replies, consent changes, notes."""

    class Kind(models.TextChoices):
        PURCHASE = "purchase", "Purchase"
        MESSAGE = "message", "Message"
        OPEN = "open", "Opened"
        CLICK = "click", "Clicked"
        REPLY = "reply", "Replied"
        CONSENT = "consent", "Consent change"
        NOTE = "note", "Note"
        LIFECYCLE = "lifecycle", "Lifecycle"
        DEFERRED = "deferred", "Deferred"

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="interactions")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    occurred_at = models.DateTimeField(default=timezone.now)
    summary = models.CharField(max_length=300)
    details = models.JSONField(default=dict, blank=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "customer", "-occurred_at"]),
            models.Index(fields=["tenant", "kind", "-occurred_at"]),
        ]
        ordering = ["-occurred_at", "-id"]

    def __str__(self):
        return self.summary


class ApiKey(models.Model):
    """A workspace's key to the JSON API; only a SHA-256 digest of the secret is stored.

    The key names its workspace, so it is read before any workspace is in scope and, like Membership,
    is not row-secured: every query filters on ``workspace`` explicitly.
    """

    workspace = models.ForeignKey("crm_site.Workspace", on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The public start of the key, shown to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["workspace", "-created_at"])]
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class MessagingPause(TenantModel):
    """A customer asked (preference centre) to receive no marketing until ``paused_until``; consent is unchanged."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+", db_index=False)
    paused_until = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "customer"], name="messaging_pause_unique_customer")]
        indexes = [models.Index(fields=["tenant", "paused_until"])]

    def __str__(self):
        return f"Paused until {self.paused_until:%Y-%m-%d}"


class ImportRun(TenantModel):
    """One CSV import: the uploaded file, its column mapping and options, and the outcome with its error report."""

    class Kind(models.TextChoices):
        CUSTOMERS = "customers", "Customers"
        ORDERS = "orders", "Orders (with or without lines)"
        CONSENT = "consent", "Consent events"

    class Mode(models.TextChoices):
        REJECT = "reject", "Reject the whole file if any row has an error"
        SKIP = "skip", "Import the good rows; download the bad ones"

    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Waiting for column mapping"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        IMPORTED = "imported", "Imported"
        REJECTED = "rejected", "Rejected: nothing imported"
        FAILED = "failed", "Failed: nothing imported"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.UPLOADED)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.REJECT)
    original_name = models.CharField(max_length=255)
    stored_path = models.CharField(max_length=500, blank=True, help_text="Relative to MEDIA_ROOT; private.")
    size = models.PositiveBigIntegerField(default=0)
    encoding = models.CharField(max_length=20, blank=True)
    delimiter = models.CharField(max_length=1, default=",")
    encoding_note = models.TextField(blank=True)
    line_count = models.PositiveBigIntegerField(default=0)
    header = models.JSONField(default=list, blank=True)
    mapping = models.JSONField(default=dict, blank=True, help_text="Column name → field name.")
    options = models.JSONField(default=dict, blank=True, help_text="default_region, day_first, default_channel.")
    job = models.ForeignKey("crm_site.BackgroundJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    rows_read = models.PositiveBigIntegerField(default=0)
    created_count = models.PositiveBigIntegerField(default=0)
    updated_count = models.PositiveBigIntegerField(default=0)
    skipped_count = models.PositiveBigIntegerField(default=0)
    error_count = models.PositiveBigIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="The first errors: line, column, message.")
    summary = models.JSONField(default=dict, blank=True)
    error_file = models.CharField(max_length=500, blank=True, help_text="Bad rows with an error column.")
    fatal_error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.get_kind_display()} import of {self.original_name}"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.IMPORTED, self.Status.REJECTED, self.Status.FAILED)
