"""Segments: saved answers to "who?", either a rule tree evaluated when used or a frozen list of customers."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from crm_site.tenancy import TenantModel


def empty_rules() -> dict:
    return {"op": "and", "rules": []}


class Segment(TenantModel):
    """A named audience. Dynamic segments are evaluated from ``rules`` when used; frozen ones are a snapshot."""

    class Kind(models.TextChoices):
        DYNAMIC = "dynamic", "Dynamic (evaluated when used)"
        FROZEN = "frozen", "Frozen (a snapshot list)"

    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    rules = models.JSONField(default=empty_rules, blank=True, help_text="The rule tree (segments.rules).")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.DYNAMIC)
    is_builtin = models.BooleanField(default=False, help_text="Created for every workspace; copyable, not editable.")
    builtin_key = models.CharField(max_length=40, blank=True, help_text="Which built-in segment this is.")
    frozen_at = models.DateTimeField(null=True, blank=True, help_text="When the snapshot of a frozen segment was taken.")
    source = models.CharField(max_length=200, blank=True, help_text="Where a frozen list came from (rules, CSV file).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "builtin_key"], condition=~Q(builtin_key=""), name="segment_unique_builtin_key"
            ),
        ]
        indexes = [models.Index(fields=["tenant", "-is_builtin", "name"])]
        ordering = ["-is_builtin", "name", "id"]

    def __str__(self):
        return self.name

    @property
    def is_frozen(self) -> bool:
        return self.kind == self.Kind.FROZEN

    @property
    def is_editable(self) -> bool:
        """Built-in segments are read-only (copy them instead); frozen lists are changed by a new snapshot."""
        return not self.is_builtin


class SegmentMember(TenantModel):
    """One customer in the snapshot of a frozen segment."""

    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="members", db_index=False)
    customer = models.ForeignKey("customers.Customer", on_delete=models.CASCADE, related_name="+", db_index=False)
    added_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "segment", "customer"], name="segment_member_unique"),
        ]
        # The unique constraint serves "members of a segment"; this one "segments of a customer" (and deletes).
        indexes = [models.Index(fields=["tenant", "customer"])]

    def __str__(self):
        return f"Customer {self.customer_id} in segment {self.segment_id}"
