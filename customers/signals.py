"""Signals the customers app sends, so higher apps (lifecycle) react to purchase changes without customers
importing them.

Single orders saved through the ORM already send Django's ``post_save``; bulk paths (CSV import, API batches)
skip it and send ``orders_changed`` instead, once per batch, after their transaction commits.
"""

from django.dispatch import Signal

# Sent with tenant_id (int) and customer_ids (iterable of int): the customers whose orders were created,
# changed or deleted in bulk.
orders_changed = Signal()


def send_orders_changed(tenant_id: int, customer_ids) -> None:
    """Announce that these customers' orders changed in bulk (call after the batch commits)."""
    customer_ids = sorted({int(pk) for pk in customer_ids})
    if customer_ids:
        orders_changed.send(sender=None, tenant_id=int(tenant_id), customer_ids=customer_ids)
