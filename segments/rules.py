"""Rule trees: validation with messages a marketer can act on, and compilation to one Django ``Q``.

A rule tree is JSON: a group ``{"op": "and" | "or", "rules": [...]}`` whose rules are groups or conditions
``{"field": ..., "operator": ..., "value": ..., "key": ...}`` (see segments.fields for the fields). A
position in the tree is a path of indexes: ``()`` is the root group, ``(0, 2)`` the third rule of its first
group. Errors carry the path of the node they concern, so the builder shows them next to it.

Compilation produces a ``Q`` over ``customers.Customer``: plain column lookups, joins to the one-to-one
``CustomerMetrics`` and ``EXISTS`` subqueries for orders, interactions, suppressions and frozen segments,
so a whole segment is one SQL query. It runs inside a tenant scope (subqueries use the scoped managers).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field as dataclass_field
from typing import Any

from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from segments.fields import Condition, RuleValueError, get_field

MAX_DEPTH = 4  # groups inside groups; deeper trees are hard to read and slow to plan
MAX_CONDITIONS = 50
GROUP_OPS = ("and", "or")

Path = tuple[int, ...]


@dataclass(frozen=True)
class RuleError:
    """A problem with one node of a rule tree: where it is (``path``) and what to do about it (``message``)."""

    path: Path
    message: str
    is_cycle: bool = False

    @property
    def dom_id(self) -> str:
        """The builder's id of the node, e.g. ``r-0-2``."""
        return path_id(self.path)

    def __str__(self) -> str:
        where = "Rules" if not self.path else "Rule " + ".".join(str(index + 1) for index in self.path)
        return f"{where}: {self.message}"


class InvalidRules(ValueError):
    """Raised by ``compile_rules`` for a tree that does not validate; ``errors`` lists every problem."""

    def __init__(self, errors: list[RuleError]):
        self.errors = errors
        super().__init__("; ".join(str(error) for error in errors))


def path_id(path: Path) -> str:
    """Return the builder's id for a node path: ``()`` → ``r``, ``(0, 2)`` → ``r-0-2``."""
    return "-".join(["r", *(str(index) for index in path)])


def is_group(node: Any) -> bool:
    return isinstance(node, dict) and ("rules" in node or "op" in node) and "field" not in node


# --- Segment references (membership of another segment) ----------------------------------------------


@dataclass
class RuleContext:
    """What compiling and validating need beyond the tree: the clock, the segment being edited, a cache."""

    now: dt.datetime = dataclass_field(default_factory=timezone.now)
    editing_id: int | None = None
    # Segments being expanded, outermost first: a reference to one of them is a cycle.
    expanding: tuple = ()
    _segments: dict = dataclass_field(default_factory=dict)

    def load_segment(self, segment_id: int):
        """Return the segment with this id in the current workspace, or None (cached per context)."""
        from segments.models import Segment

        if segment_id not in self._segments:
            self._segments[segment_id] = Segment.objects.filter(pk=segment_id).first()
        return self._segments[segment_id]

    def segment_condition(self, segment_id: int) -> Q:
        """Return the Q for "is a member of segment ``segment_id``": its rules inlined, or its snapshot."""
        from segments.models import Segment, SegmentMember

        segment = self.load_segment(segment_id)
        if segment is None:
            raise InvalidRules([RuleError((), f"Segment {segment_id} does not exist any more.")])
        if segment.kind == Segment.Kind.FROZEN:
            return Q(Exists(SegmentMember.objects.filter(segment_id=segment.pk, customer=OuterRef("pk"))))
        # compile_rules validated the whole chain of references (existence, cycles) before compiling.
        return _compile_node(segment.rules, self.entering(segment))

    def entering(self, segment) -> RuleContext:
        """Return the context for expanding ``segment``'s own rules."""
        return RuleContext(now=self.now, editing_id=self.editing_id, expanding=(*self.expanding, segment),
                           _segments=self._segments)

    def cycle_through(self, segment) -> list | None:
        """Return the chain of segments that leads back to one being expanded or edited, or None."""
        if self.editing_id is not None and segment.pk == self.editing_id:
            return [segment, *self.expanding, segment]
        if any(earlier.pk == segment.pk for earlier in self.expanding):
            return [*self.expanding, segment]
        return None


def cycle_message(chain: list) -> str:
    names = " → ".join(f"“{segment.name}”" for segment in chain)
    if len(chain) == 2:
        return f"A segment cannot include itself (“{chain[0].name}”)."
    return f"These segments include each other in a circle: {names}. Remove one of the references."


def _segment_reference_errors(segment_id: int, context: RuleContext) -> RuleError | None:
    """Check a membership condition: the segment exists, its own rules are valid and do not lead back round."""
    from segments.models import Segment

    segment = context.load_segment(segment_id)
    if segment is None:
        return RuleError((), "That segment does not exist (it may have been deleted).")
    cycle = context.cycle_through(segment)
    if cycle:
        return RuleError((), cycle_message(cycle), is_cycle=True)
    if segment.kind == Segment.Kind.FROZEN:
        return None
    inner_errors = validate_rules(segment.rules, context=context.entering(segment))
    if not inner_errors:
        return None
    cycles = [error for error in inner_errors if error.is_cycle]
    if cycles:
        return cycles[0]
    return RuleError((), f"Segment “{segment.name}” has a problem of its own: {inner_errors[0]}")


def iter_conditions(node: Any):
    """Yield every condition (non-group node) of a tree, depth first."""
    if is_group(node):
        for child in node.get("rules") or []:
            if isinstance(child, dict):
                yield from iter_conditions(child)
    elif isinstance(node, dict):
        yield node


# --- Validation ---------------------------------------------------------------------------------------


def clean_condition(node: dict) -> Condition:
    """Return the checked, normalised condition of a JSON node, or raise RuleValueError with the message."""
    field_name = node.get("field")
    if field_name in (None, ""):
        raise RuleValueError("Choose a field.")
    field = get_field(field_name)
    if field is None:
        raise RuleValueError(f"Unknown field “{field_name}”.")
    operator = node.get("operator")
    if operator in (None, ""):
        raise RuleValueError("Choose a comparison.")
    if operator not in field.operators:
        offered = ", ".join(f"“{label}”" for label, _ in field.operators.values())
        raise RuleValueError(f"“{operator}” does not apply to {field.label}; choose {offered}.")
    key = field.clean_key(node.get("key"))
    value = field.clean_value(operator, node.get("value"))
    return Condition(field=field, operator=operator, value=value, key=key)


def validate_rules(rules: Any, *, segment=None, context: RuleContext | None = None) -> list[RuleError]:
    """Return every problem with a rule tree (empty list: valid).

    ``segment`` is the segment being edited, so a reference back to it is reported as a cycle. Needs a
    tenant scope when the tree refers to other segments.
    """
    context = context or RuleContext(editing_id=getattr(segment, "pk", None))
    errors: list[RuleError] = []
    if not is_group(rules):
        return [RuleError((), "The rules must be a group: {\"op\": \"and\" or \"or\", \"rules\": [...]}.")]
    counter = {"conditions": 0}
    _validate_group(rules, (), 1, context, errors, counter)
    if counter["conditions"] > MAX_CONDITIONS:
        errors.append(RuleError((), f"Use at most {MAX_CONDITIONS} conditions (this has {counter['conditions']})."))
    return errors


def _validate_group(group: dict, path: Path, depth: int, context, errors: list, counter: dict) -> None:
    if group.get("op") not in GROUP_OPS:
        errors.append(RuleError(path, "Choose whether all (and) or any (or) of the rules must match."))
    children = group.get("rules")
    if not isinstance(children, list) or not children:
        message = "Add at least one condition." if not path else "This group is empty: add a condition or remove it."
        errors.append(RuleError(path, message))
        return
    for index, child in enumerate(children):
        child_path = (*path, index)
        if is_group(child):
            if depth >= MAX_DEPTH:
                errors.append(RuleError(child_path, f"Groups can be nested at most {MAX_DEPTH} deep."))
                continue
            _validate_group(child, child_path, depth + 1, context, errors, counter)
        elif isinstance(child, dict):
            counter["conditions"] += 1
            try:
                condition = clean_condition(child)
            except RuleValueError as error:
                errors.append(RuleError(child_path, str(error)))
                continue
            if condition.field.type == "segment":
                problem = _segment_reference_errors(condition.value, context)
                if problem:
                    errors.append(RuleError(child_path, problem.message, is_cycle=problem.is_cycle))
        else:
            errors.append(RuleError(child_path, "Each rule must be a condition or a group."))


# --- Compilation --------------------------------------------------------------------------------------


def compile_rules(rules: Any, *, now: dt.datetime | None = None, segment=None) -> Q:
    """Return the ``Q`` over Customer selecting who matches ``rules``; raise InvalidRules if they do not validate.

    ``now`` fixes the clock for "in the last N days" (default: now); ``segment`` is the segment whose
    rules these are, for cycle detection. Call inside a tenant scope.
    """
    context = RuleContext(now=now or timezone.now(), editing_id=getattr(segment, "pk", None))
    errors = validate_rules(rules, context=context)
    if errors:
        raise InvalidRules(errors)
    return _compile_node(rules, context)


def _compile_node(node: dict, context: RuleContext) -> Q:
    if is_group(node):
        parts = [_compile_node(child, context) for child in node["rules"]]
        combined = parts[0]
        for part in parts[1:]:
            combined = (combined | part) if node["op"] == "or" else (combined & part)
        return combined
    condition = clean_condition(node)
    return condition.field.compile(condition, context)


# --- Reading rules aloud --------------------------------------------------------------------------------


def describe_condition(node: dict, segment_names: dict | None = None) -> str:
    """Return a condition in words, e.g. "Total spent > 100" (best effort for invalid nodes)."""
    field = get_field(node.get("field"))
    if field is None:
        return f"Unknown field {node.get('field')!r}"
    operator = node.get("operator")
    label = field.label + (f" “{node.get('key')}”" if field.needs_key else "")
    if operator not in field.operators:
        return label
    words = field.operator_label(operator)
    value = node.get("value")
    kind = field.value_kind(operator)
    if kind == "none":
        return f"{label} {words}"
    if kind == "days":
        return f"{label} {words.replace('…', str(value))}"
    if kind == "bool":
        return f"{label}: {'yes' if value in (True, 'true') else 'no'}"
    if kind in ("choice", "choices"):
        labels = dict(field.choices)
        values = value if isinstance(value, list) else [value]
        return f"{label} {words} {', '.join(str(labels.get(item, item)) for item in values)}"
    if kind == "segment":
        name = (segment_names or {}).get(_as_int(value), f"segment {value}")
        return f"{words} “{name}”"
    if kind == "number_pair" and isinstance(value, list) and len(value) == 2:
        return f"{label} {words} {value[0]} and {value[1]}"
    if isinstance(value, list):
        value = ", ".join(str(item) for item in value)
    return f"{label} {words} {value}"


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def describe_rules(rules: Any, segment_names: dict | None = None) -> str:
    """Return the whole tree in words, groups in parentheses: "Stage is at risk and (A or B)"."""
    if not is_group(rules):
        return describe_condition(rules, segment_names) if isinstance(rules, dict) else ""
    joiner = " or " if rules.get("op") == "or" else " and "
    parts = []
    for child in rules.get("rules") or []:
        text = describe_rules(child, segment_names)
        parts.append(f"({text})" if is_group(child) and len(child.get("rules") or []) > 1 else text)
    return joiner.join(part for part in parts if part)
