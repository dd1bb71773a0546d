"""Lifecycle listens to purchases: a saved or deleted order, or a bulk change announced by customers, queues an
incremental refresh of the customers concerned once the transaction that changed them commits.
"""

from django.db import transaction
from django.db.models.signals import post_delete, post_save

from customers.models import Order
from customers.signals import orders_changed


def _queue_after_commit(tenant_id: int, customer_ids) -> None:
    from lifecycle.tasks import queue_customer_refresh

    customer_ids = list(customer_ids)
    transaction.on_commit(lambda: queue_customer_refresh(tenant_id, customer_ids))


def order_saved_or_deleted(sender, instance: Order, raw=False, **kwargs):
    if raw or instance.customer_id is None:  # fixtures loading: no side effects
        return
    _queue_after_commit(instance.tenant_id, [instance.customer_id])


def orders_changed_in_bulk(sender, tenant_id: int, customer_ids, **kwargs):
    _queue_after_commit(tenant_id, customer_ids)


def connect() -> None:
    """Connect the receivers (called once from the app config)."""
    post_save.connect(order_saved_or_deleted, sender=Order, dispatch_uid="lifecycle.order_saved")
    post_delete.connect(order_saved_or_deleted, sender=Order, dispatch_uid="lifecycle.order_deleted")
    orders_changed.connect(orders_changed_in_bulk, dispatch_uid="lifecycle.orders_changed")
