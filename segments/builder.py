"""The browser builder's state: a rule tree read from form fields, edited (add, remove, change field), and
turned into nodes the templates display with their widgets and messages.

The form names every node by its path id (``r`` the root group, ``r-0-2`` the third rule of its first
group): a hidden ``node`` input per node, then ``<id>-kind`` (group/condition), ``<id>-op`` for groups and
``<id>-field``, ``-operator``, ``-key``, ``-value`` (and ``-value2`` for "between") for conditions. Values
stay as typed until the rules validate; ``normalize_rules`` stores them as numbers, lists and dates.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field as dataclass_field
from typing import Any

from segments.fields import Field, field_groups, get_field
from segments.rules import MAX_DEPTH, RuleError, clean_condition, is_group, path_id

DEFAULT_FIELD = "stage"


def new_condition(field_name: str = DEFAULT_FIELD) -> dict:
    """Return a fresh condition on ``field_name`` with its first operator and no value yet."""
    field = get_field(field_name) or get_field(DEFAULT_FIELD)
    operator = field.default_operator
    kind = field.value_kind(operator)
    value = True if kind == "bool" else field.choices[0][0] if kind == "choice" and field.choices else None
    return {"field": field.name, "operator": operator, "value": value}


def new_rules() -> dict:
    """Return the tree a new segment starts from: one condition in an AND group."""
    return {"op": "and", "rules": [new_condition()]}


def _parse_path(text: str) -> tuple[int, ...] | None:
    parts = text.split("-")
    if not parts or parts[0] != "r":
        return None
    try:
        return tuple(int(part) for part in parts[1:])
    except ValueError:
        return None


def rules_from_form(data) -> dict:
    """Return the rule tree the builder form describes (values as typed; validate before use)."""
    nodes: dict[tuple[int, ...], dict] = {}
    for raw_path in data.getlist("node"):
        path = _parse_path(raw_path)
        if path is None or path in nodes:
            continue
        prefix = path_id(path)
        if data.get(f"{prefix}-kind") == "group" or not path:
            nodes[path] = {"op": data.get(f"{prefix}-op", "and"), "rules": []}
        else:
            nodes[path] = _condition_from_form(data, prefix)
    root = nodes.get((), {"op": "and", "rules": []})
    if not is_group(root):
        root = {"op": "and", "rules": [root]}
    nodes[()] = root
    # Attach children in index order; a node whose parent is missing or not a group is dropped.
    for path in sorted((p for p in nodes if p), key=lambda p: (len(p), p)):
        parent = nodes.get(path[:-1])
        if parent is not None and is_group(parent):
            parent["rules"].append(nodes[path])
    return root


def _condition_from_form(data, prefix: str) -> dict:
    field_name = data.get(f"{prefix}-field", "")
    operator = data.get(f"{prefix}-operator", "")
    condition: dict[str, Any] = {"field": field_name, "operator": operator}
    field = get_field(field_name)
    if field is not None and field.needs_key:
        condition["key"] = data.get(f"{prefix}-key", "")
    kind = field.value_kind(operator) if field is not None and operator in field.operators else "text"
    if kind == "none":
        condition["value"] = None
    elif kind == "number_pair":
        condition["value"] = [data.get(f"{prefix}-value", ""), data.get(f"{prefix}-value2", "")]
    elif kind == "choices":
        condition["value"] = data.getlist(f"{prefix}-value")
    else:
        condition["value"] = data.get(f"{prefix}-value", "")
    return condition


def normalize_rules(rules: dict) -> dict:
    """Return a valid tree with every value in its canonical form (numbers, lists, ISO dates, booleans)."""
    if is_group(rules):
        return {"op": rules["op"], "rules": [normalize_rules(child) for child in rules["rules"]]}
    condition = clean_condition(rules)
    normalized: dict[str, Any] = {"field": condition.field.name, "operator": condition.operator,
                                  "value": condition.value}
    if condition.field.needs_key:
        normalized["key"] = condition.key
    return normalized


# --- Editing -----------------------------------------------------------------------------------------


def _node_at(rules: dict, path: tuple[int, ...]) -> dict | None:
    node = rules
    for index in path:
        if not is_group(node) or index >= len(node["rules"]):
            return None
        node = node["rules"][index]
    return node


def apply_action(rules: dict, action: str) -> dict:
    """Return a copy of ``rules`` after a builder action: ``add-condition:<id>``, ``add-group:<id>``, ``remove:<id>``.

    Unknown actions or paths leave the tree as it is.
    """
    rules = copy.deepcopy(rules)
    verb, _, target = action.partition(":")
    path = _parse_path(target)
    if path is None:
        return rules
    node = _node_at(rules, path)
    if verb == "add-condition" and is_group(node):
        node["rules"].append(new_condition())
    elif verb == "add-group" and is_group(node) and len(path) + 1 < MAX_DEPTH:
        node["rules"].append({"op": "or" if node.get("op") == "and" else "and", "rules": [new_condition()]})
    elif verb == "remove" and path:
        parent = _node_at(rules, path[:-1])
        if is_group(parent) and path[-1] < len(parent["rules"]):
            del parent["rules"][path[-1]]
    return rules


def change_condition(rules: dict, path: tuple[int, ...], changed: str) -> dict:
    """Return a copy of ``rules`` with the condition at ``path`` reset after its field or operator changed.

    A new field starts at its first operator with no value; a new operator keeps the value when it takes
    the same kind of value.
    """
    rules = copy.deepcopy(rules)
    node = _node_at(rules, path)
    if node is None or is_group(node):
        return rules
    field = get_field(node.get("field"))
    if field is None:
        return rules
    if changed == "field" or node.get("operator") not in field.operators:
        fresh = new_condition(field.name)
        node.clear()
        node.update(fresh)
        if field.needs_key:
            node["key"] = ""
    return rules


def changed_path(data) -> tuple[int, ...] | None:
    return _parse_path(data.get("path", ""))


# --- Display -----------------------------------------------------------------------------------------


@dataclass
class BuilderNode:
    """One node as the templates show it: its id, its widgets' current values and its message."""

    id: str
    path: tuple[int, ...]
    is_group: bool
    error: str = ""
    op: str = "and"
    children: list[BuilderNode] = dataclass_field(default_factory=list)
    field: Field | None = None
    field_name: str = ""
    operator: str = ""
    operators: list[tuple[str, str]] = dataclass_field(default_factory=list)
    value_kind: str = "none"
    key: str = ""
    value: Any = ""
    value2: Any = ""
    values: list = dataclass_field(default_factory=list)
    choices: list[tuple[str, str]] = dataclass_field(default_factory=list)
    depth: int = 0

    @property
    def can_add_group(self) -> bool:
        return self.is_group and self.depth + 1 < MAX_DEPTH

    def iter_ids(self):
        yield self.id
        for child in self.children:
            yield from child.iter_ids()


def builder_tree(rules: dict, errors: list[RuleError] = (), segment_choices: list[tuple[str, str]] = ()) -> BuilderNode:
    """Return the display tree of ``rules`` with each error attached to its node."""
    messages: dict[tuple[int, ...], str] = {}
    for error in errors:
        messages.setdefault(error.path, error.message)
    if not is_group(rules):
        rules = {"op": "and", "rules": []}
    return _display(rules, (), messages, list(segment_choices))


def _display(node: Any, path: tuple[int, ...], messages: dict, segment_choices: list) -> BuilderNode:
    if is_group(node):
        group = BuilderNode(id=path_id(path), path=path, is_group=True, op=node.get("op", "and"),
                            error=messages.get(path, ""), depth=len(path))
        for index, child in enumerate(node.get("rules") or []):
            group.children.append(_display(child, (*path, index), messages, segment_choices))
        return group
    node = node if isinstance(node, dict) else {}
    field = get_field(node.get("field"))
    shown = BuilderNode(id=path_id(path), path=path, is_group=False, error=messages.get(path, ""), depth=len(path))
    if field is None:
        return shown
    operator = node.get("operator") if node.get("operator") in field.operators else field.default_operator
    value = node.get("value")
    shown.field, shown.field_name, shown.operator = field, field.name, operator
    shown.operators = [(name, label) for name, (label, _) in field.operators.items()]
    shown.value_kind = field.value_kind(operator)
    shown.key = node.get("key") or ""
    if shown.value_kind == "number_pair":
        pair = value if isinstance(value, list) else [value, ""]
        shown.value, shown.value2 = (pair + ["", ""])[:2]
    elif isinstance(value, list):
        shown.values = [str(item) for item in value]
        shown.value = ", ".join(str(item) for item in value)
    elif isinstance(value, bool):
        shown.value = "true" if value else "false"
    else:
        shown.value = "" if value is None else value
    if shown.value_kind in ("choice", "choices"):
        shown.choices = list(field.choices)
    elif shown.value_kind == "segment":
        shown.choices = segment_choices
    return shown


def field_menu() -> list[tuple[str, list[tuple[str, str]]]]:
    """Return the field menu of the builder: groups of (name, label)."""
    return [(group, [(field.name, field.label) for field in fields]) for group, fields in field_groups()]
