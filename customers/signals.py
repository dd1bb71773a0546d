"""Signals the customers app sends, so higher apps (lifecycle) react to changes without customers importing them.

Single orders and customers saved through the ORM already send Django's ``post_save``; bulk paths (CSV import,
API batches) skip it and send these instead, once per batch, after their transaction commits.
"""

from django.dispatch import Signal

# Sent with tenant_id (int) and customer_ids (iterable of int): the customers whose orders were created,
# changed or deleted in bulk.
orders_changed = Signal()

# Sent with tenant_id (int) and customer_ids (iterable of int): the customers whose first_seen_at an import or
# an API batch moved (lifecycle keeps a copy of it, and a sign-up date decides the onboarding stage).
first_seen_changed = Signal()


def _send(signal: Signal, tenant_id: int, customer_ids) -> None:
    customer_ids = sorted({int(pk) for pk in customer_ids})
    if customer_ids:
        signal.send(sender=None, tenant_id=int(tenant_id), customer_ids=customer_ids)


def send_orders_changed(tenant_id: int, customer_ids) -> None:
    """Announce that these customers' orders changed in bulk (call after the batch commits)."""
    _send(orders_changed, tenant_id, customer_ids)


def send_first_seen_changed(tenant_id: int, customer_ids) -> None:
    """Announce that these customers' first_seen_at changed in bulk (call after the batch commits)."""
    _send(first_seen_changed, tenant_id, customer_ids)
