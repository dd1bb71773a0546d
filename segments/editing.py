"""Saving, copying and deleting segments: the domain side of the builder and the segment page."""

from __future__ import annotations

from django.db.models import ProtectedError

from segments.builder import normalize_rules
from segments.models import Segment
from segments.rules import InvalidRules, iter_conditions, validate_rules
from segments.snapshots import write_snapshot


class SegmentInUse(Exception):
    """The segment cannot be deleted: other segments or campaigns depend on it."""


def save_segment(segment: Segment, rules: dict, *, user=None) -> Segment:
    """Validate and store ``rules`` on ``segment`` (a dynamic one) or snapshot its members now (a frozen one).

    Raises InvalidRules when the rules do not validate and ValueError for a built-in segment.
    """
    if segment.is_builtin:
        raise ValueError("Built-in segments cannot be changed; copy one instead.")
    errors = validate_rules(rules, segment=segment if segment.pk else None)
    if errors:
        raise InvalidRules(errors)
    segment.rules = normalize_rules(rules)
    if segment.created_by_id is None and user is not None and user.is_authenticated:
        segment.created_by = user
    if segment.kind == Segment.Kind.FROZEN:
        segment.save()
        write_snapshot(segment, segment.rules)
    else:
        segment.frozen_at = None
        segment.save()
    return segment


def copy_segment(segment: Segment, *, user=None) -> Segment:
    """Return a new, editable dynamic segment with ``segment``'s rules (how built-ins are customised)."""
    return Segment.objects.create(
        name=f"Copy of {segment.name}"[:120], description=segment.description, rules=segment.rules,
        kind=Segment.Kind.DYNAMIC, created_by=user if user is not None and user.is_authenticated else None,
    )


def segments_referring_to(segment: Segment) -> list[Segment]:
    """Return the other segments of the workspace whose rules test membership of ``segment``."""
    referring = []
    for other in Segment.objects.exclude(pk=segment.pk).only("pk", "name", "rules"):
        if any(node.get("field") == "segment" and str(node.get("value")) == str(segment.pk)
               for node in iter_conditions(other.rules)):
            referring.append(other)
    return referring


def delete_segment(segment: Segment) -> None:
    """Delete a segment; raises SegmentInUse (with the reason) for built-ins and segments something depends on."""
    if segment.is_builtin:
        raise SegmentInUse("Built-in segments cannot be deleted.")
    referring = segments_referring_to(segment)
    if referring:
        names = ", ".join(f"“{other.name}”" for other in referring)
        raise SegmentInUse(f"Segments {names} refer to this one; remove those conditions first.")
    try:
        segment.delete()
    except ProtectedError as error:
        names = ", ".join(sorted({str(obj) for obj in error.protected_objects})[:5])
        raise SegmentInUse(f"It is used by {names}; choose another segment there first.") from None
