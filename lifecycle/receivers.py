"""Lifecycle listens to purchases and sign-up dates: a saved or deleted order, a customer saved with another first
seen than their metrics row's copy, or a bulk change announced by customers (orders, first seen) queues an
incremental refresh of the customers concerned once the transaction that changed them commits.

First seen matters twice: it is the sign-up date of the onboarding stage, and the customer list sorts customers
with a lifecycle filter by the metrics row's copy of it (lifecycle.listing), so the copy must follow it.
"""

from django.db import transaction
from django.db.models.signals import post_delete, post_save

from customers.models import Customer, Order
from customers.signals import first_seen_changed, orders_changed
from lifecycle.models import CustomerMetrics


def _queue_after_commit(tenant_id: int, customer_ids) -> None:
    from lifecycle.tasks import queue_customer_refresh

    customer_ids = list(customer_ids)
    transaction.on_commit(lambda: queue_customer_refresh(tenant_id, customer_ids))


def order_saved_or_deleted(sender, instance: Order, raw=False, **kwargs):
    if raw or instance.customer_id is None:  # fixtures loading: no side effects
        return
    _queue_after_commit(instance.tenant_id, [instance.customer_id])


def customer_saved(sender, instance: Customer, created=False, raw=False, update_fields=None, **kwargs):
    # A new customer has no metrics row yet (the first refresh writes it); a form edit or the admin may move
    # first seen: one indexed look-up tells whether the row's copy now differs.
    if raw or created or (update_fields is not None and "first_seen_at" not in update_fields):
        return
    # Scoped by the customer's own workspace: a save may happen outside a tenant scope (a shell, a command).
    stale_copy = (CustomerMetrics._base_manager.filter(tenant_id=instance.tenant_id, customer_id=instance.pk)
                  .exclude(first_seen_at=instance.first_seen_at))
    if stale_copy.exists():
        _queue_after_commit(instance.tenant_id, [instance.pk])


def customers_changed_in_bulk(sender, tenant_id: int, customer_ids, **kwargs):
    _queue_after_commit(tenant_id, customer_ids)


def connect() -> None:
    """Connect the receivers (called once from the app config)."""
    post_save.connect(order_saved_or_deleted, sender=Order, dispatch_uid="lifecycle.order_saved")
    post_delete.connect(order_saved_or_deleted, sender=Order, dispatch_uid="lifecycle.order_deleted")
    post_save.connect(customer_saved, sender=Customer, dispatch_uid="lifecycle.customer_saved")
    orders_changed.connect(customers_changed_in_bulk, dispatch_uid="lifecycle.orders_changed")
    first_seen_changed.connect(customers_changed_in_bulk, dispatch_uid="lifecycle.first_seen_changed")
