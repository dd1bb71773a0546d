"""Built-in segments every workspace starts with: value and lifecycle groups a marketer asks for on day one.

They are ordinary dynamic segments marked ``is_builtin`` (read-only in the UI; copy one to change it),
created when a workspace is created (post_save signal), for existing workspaces by a data migration and
by ``manage.py ensure_builtin_segments``. The RFM ones read ``CustomerMetrics.rfm_segment`` as lifecycle
labels it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinSegment:
    key: str
    name: str
    description: str
    rules: dict


def _one(field: str, operator: str, value) -> dict:
    return {"op": "and", "rules": [{"field": field, "operator": operator, "value": value}]}


BUILTIN_SEGMENTS: tuple[BuiltinSegment, ...] = (
    BuiltinSegment("heavy_users", "Heavy users",
                   "The top customers who together bring in most of the trailing-12-month revenue (about the top 20%).",
                   _one("is_heavy_user", "is", True)),
    BuiltinSegment("new", "New customers", "In onboarding: a first purchase or sign-up within the onboarding window.",
                   _one("stage", "is", "onboarding")),
    BuiltinSegment("at_risk", "At risk",
                   "Overdue against their own buying rhythm, or unlikely to still be a customer (low P(alive)).",
                   _one("stage", "is", "at_risk")),
    BuiltinSegment("lapsed", "Lapsed", "No order for longer than the workspace's lapsed threshold.",
                   _one("stage", "is", "lapsed")),
    BuiltinSegment("reward_due", "Reward due", "A reward rule fired and the reward has not been given yet.",
                   _one("is_reward_due", "is", True)),
    BuiltinSegment("one_time_buyers", "One-time buyers", "Exactly one order so far.", _one("order_count", "eq", 1)),
    BuiltinSegment("champions", "Champions", "RFM: bought recently, buy often and spend the most.",
                   _one("rfm_segment", "is", "champions")),
    BuiltinSegment("loyal", "Loyal", "RFM: buy regularly and respond to attention.", _one("rfm_segment", "is", "loyal")),
    BuiltinSegment("hibernating", "Hibernating", "RFM: last order long ago, few orders, low spend.",
                   _one("rfm_segment", "is", "hibernating")),
)


def install_builtin_segments(segment_model, tenant_id: int) -> int:
    """Create the missing built-in segments of a workspace and refresh the definitions of existing ones.

    ``segment_model`` is the Segment class (the historical one inside a migration). The caller provides the
    tenant scope (or RLS bypass). Returns how many segments were created.
    """
    existing = {
        segment.builtin_key: segment
        for segment in segment_model._base_manager.filter(tenant_id=tenant_id, is_builtin=True)
    }
    missing = []
    for definition in BUILTIN_SEGMENTS:
        segment = existing.get(definition.key)
        if segment is None:
            missing.append(segment_model(
                tenant_id=tenant_id, builtin_key=definition.key, is_builtin=True, kind="dynamic",
                name=definition.name, description=definition.description, rules=definition.rules,
            ))
        elif (segment.name, segment.description, segment.rules) != (definition.name, definition.description,
                                                                     definition.rules):
            segment.name, segment.description, segment.rules = definition.name, definition.description, definition.rules
            segment.save(update_fields=["name", "description", "rules", "updated_at"])
    segment_model._base_manager.bulk_create(missing)
    return len(missing)


def ensure_builtin_segments(workspace) -> int:
    """Create (or refresh) the built-in segments of ``workspace``; returns how many were created."""
    from crm_site.tenancy import tenant_scope
    from segments.models import Segment

    with tenant_scope(workspace):
        return install_builtin_segments(Segment, workspace.pk)
