"""Idempotent upserts of customers and orders (with lines) by external id, for the JSON API.

Set-based: a batch of any size costs a fixed number of queries (look up what exists, bulk insert the
new rows, bulk update only the changed ones, append consent events, recompute derived flags). Records
arrive already validated by ``customers.api_payloads``; what only the database can tell (an e-mail that
belongs to someone else, an unknown customer) is reported as ``UpsertRejected`` before anything is
written, so a batch is all or nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.db.models import F, Min, OuterRef, Subquery
from django.db.models.functions import Least
from django.utils import timezone

from crm_site.tenancy import current_tenant_id
from customers import consent
from customers.models import ConsentEvent, Customer, Interaction, Order, OrderLine, Product
from customers.signals import send_first_seen_changed, send_orders_changed

CUSTOMER_FIELDS = ("email", "phone", "first_name", "last_name", "time_zone", "locale", "first_seen_at")
ORDER_FIELDS = ("customer_id", "placed_at", "total", "refunded_amount", "currency", "channel", "status")


class UpsertRejected(Exception):
    """Records the database refuses; ``errors`` maps record index -> field -> messages."""

    def __init__(self, errors: dict[int, dict[str, list[str]]]):
        super().__init__(f"{len(errors)} record(s) rejected")
        self.errors = errors


@dataclass(frozen=True)
class UpsertResult:
    """What an upsert did to one record: created, updated or unchanged."""

    external_id: str
    status: str
    id: int


def _duplicates(values, label: str) -> dict[int, dict[str, list[str]]]:
    counts = Counter(value for value in values if value)
    return {
        index: {label: [f"'{value}' appears more than once in this batch"]}
        for index, value in enumerate(values)
        if value and counts[value] > 1
    }


def _merge(errors: dict, more: dict) -> None:
    for index, fields in more.items():
        for name, messages in fields.items():
            errors.setdefault(index, {}).setdefault(name, []).extend(messages)


# --- Customers ------------------------------------------------------------------------------------


def upsert_customers(records: list[dict], *, method: str = "api", source: str = "") -> list[UpsertResult]:
    """Create or update customers by ``external_id``; return one result per record, in order.

    Absent fields keep their stored values; ``attributes`` are merged (a None value removes the key). An
    e-mail held by a customer without external id (e.g. a newsletter subscriber) is adopted by the record;
    one held by a customer with another external id is a conflict. ``consent`` entries append a ledger
    event only when they change the current state, so replaying a request is harmless.
    Raises UpsertRejected when any record cannot be applied; nothing is written then.
    """
    external_ids = [record["external_id"] for record in records]
    errors: dict[int, dict[str, list[str]]] = {}
    _merge(errors, _duplicates(external_ids, "external_id"))
    _merge(errors, _duplicates([record.get("email", "") for record in records], "email"))

    existing = {c.external_id: c for c in Customer.objects.filter(external_id__in=external_ids)}
    emails = {record["email"] for record in records if record.get("email")}
    owners = {c.email: c for c in Customer.objects.filter(email__in=emails)} if emails else {}

    targets: list[Customer | None] = []
    for index, record in enumerate(records):
        customer = existing.get(record["external_id"])
        owner = owners.get(record.get("email") or "")
        if owner is not None and (customer is None or owner.pk != customer.pk):
            if customer is None and not owner.external_id and owner.erased_at is None:
                customer = owner  # adopt the id-less customer with this address
            else:
                holder = f"external_id '{owner.external_id}'" if owner.external_id else f"id {owner.pk}"
                errors.setdefault(index, {}).setdefault("email", []).append(
                    f"belongs to another customer ({holder})"
                )
        targets.append(customer)
    if errors:
        raise UpsertRejected(errors)

    tenant_id = current_tenant_id()
    now = timezone.now()
    statuses: list[str] = []
    new_customers: list[Customer] = []
    changed: dict[int, Customer] = {}
    changed_fields: set[str] = set()
    first_seen_moved: list[int] = []
    for record, customer in zip(records, targets):
        if customer is None:
            customer = Customer(tenant_id=tenant_id, external_id=record["external_id"])
            for name in CUSTOMER_FIELDS:
                if name in record:
                    setattr(customer, name, record[name])
            customer.attributes = {k: v for k, v in record.get("attributes", {}).items() if v is not None}
            new_customers.append(customer)
            statuses.append("created")
            continue
        fields = [name for name in CUSTOMER_FIELDS if name in record and getattr(customer, name) != record[name]]
        if "first_seen_at" in fields:
            first_seen_moved.append(customer.pk)
        if customer.external_id != record["external_id"]:
            fields.append("external_id")
        for name in fields:
            setattr(customer, name, record[name])
        if "attributes" in record:
            merged = {**customer.attributes, **record["attributes"]}
            merged = {k: v for k, v in merged.items() if v is not None}
            if merged != customer.attributes:
                customer.attributes = merged
                fields.append("attributes")
        if fields:
            customer.updated_at = now
            changed[customer.pk] = customer
            changed_fields.update(fields, {"updated_at"})
        statuses.append("updated" if fields else "unchanged")

    Customer.objects.bulk_create(new_customers)
    if changed:
        Customer.objects.bulk_update(list(changed.values()), sorted(changed_fields))
    if first_seen_moved:
        transaction.on_commit(lambda: send_first_seen_changed(tenant_id, first_seen_moved))  # bulk: no post_save
    customers = [target or new for target, new in _fill(targets, new_customers)]

    consent_changed = _append_customer_consent(records, customers, statuses, method=method, source=source)
    touched = {c.pk for c in new_customers} | set(changed) | consent_changed
    if touched:
        # Addresses may have changed too: the derived flag depends on them (suppressions).
        consent.recompute_derived_consent(touched)
    for index, customer in enumerate(customers):
        if statuses[index] == "unchanged" and customer.pk in consent_changed:
            statuses[index] = "updated"
    return [UpsertResult(c.external_id, status, c.pk) for c, status in zip(customers, statuses)]


def _fill(targets: list, new_customers: list):
    """Pair each target (None for a new record) with the next freshly created customer."""
    fresh = iter(new_customers)
    for target in targets:
        yield target, (next(fresh) if target is None else None)


def _append_customer_consent(records, customers, statuses, *, method: str, source: str) -> set[int]:
    """Append ledger events for the ``consent`` entries that change the current state; return those customers."""
    wanted = [
        (customer, channel, action)
        for record, customer in zip(records, customers)
        for channel, action in (record.get("consent") or {}).items()
        if action
    ]
    if not wanted:
        return set()
    existing_ids = [customer.pk for customer, status in zip(customers, statuses) if status != "created"]
    current = consent.latest_actions(existing_ids) if existing_ids else {}
    events = [
        ConsentEvent(customer=customer, channel=channel, action=action, method=method, source=source)
        for customer, channel, action in wanted
        if current.get((customer.pk, channel)) != action
    ]
    consent.append_consent_events(events)
    return {event.customer_id for event in events}


# --- Orders ---------------------------------------------------------------------------------------


def _line_rows(record: dict) -> list[tuple]:
    rows = []
    for line in record.get("lines", []):
        quantity = line.get("quantity", 1)
        line_total = line.get("line_total")
        if line_total is None:
            line_total = (line["unit_price"] * quantity).quantize(Decimal("0.01"))
        rows.append((line["sku"], quantity, line["unit_price"], line_total, line.get("returned_quantity", 0)))
    return rows


def _order_errors(index: int, record: dict) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if record.get("refunded_amount", Decimal(0)) > record["total"]:
        errors["refunded_amount"] = ["is larger than the order total"]
    for position, line in enumerate(record.get("lines", [])):
        if line.get("returned_quantity", 0) > line.get("quantity", 1):
            errors[f"lines.{position}.returned_quantity"] = ["is larger than the quantity"]
    return errors


def upsert_orders(records: list[dict], *, default_currency: str = "EUR") -> list[UpsertResult]:
    """Create or update orders and their lines by ``external_id``; return one result per record, in order.

    The customer is found by ``customer_external_id`` (it must exist). An upsert replaces every order
    field and all lines; a record equal to the stored order is 'unchanged' and writes nothing. New SKUs
    create products. New orders appear on the customer's timeline and move ``first_seen_at`` back to the
    earliest order. Raises UpsertRejected (nothing written) when any record cannot be applied.
    """
    external_ids = [record["external_id"] for record in records]
    errors: dict[int, dict[str, list[str]]] = {}
    _merge(errors, _duplicates(external_ids, "external_id"))
    for index, record in enumerate(records):
        record_errors = _order_errors(index, record)
        if record_errors:
            errors[index] = {**errors.get(index, {}), **record_errors}
    customer_ids = dict(
        Customer.objects.filter(external_id__in={r["customer_external_id"] for r in records}).values_list(
            "external_id", "pk"
        )
    )
    for index, record in enumerate(records):
        if record["customer_external_id"] not in customer_ids:
            errors.setdefault(index, {})["customer_external_id"] = [
                f"no customer has external_id '{record['customer_external_id']}'; upsert the customer first"
            ]
    if errors:
        raise UpsertRejected(errors)

    tenant_id = current_tenant_id()
    existing = {o.external_id: o for o in Order.objects.filter(external_id__in=external_ids)}
    stored_lines: dict[int, list[tuple]] = defaultdict(list)
    for order_id, *line in (
        OrderLine.objects.filter(order_id__in=[o.pk for o in existing.values()])
        .order_by("order_id", "id")
        .values_list("order_id", "sku", "quantity", "unit_price", "line_total", "returned_quantity")
    ):
        stored_lines[order_id].append(tuple(line))
    product_ids = _ensure_products(records, tenant_id)

    new_orders, changed_orders, statuses, line_rows = [], [], [], []
    for record in records:
        values = {
            "customer_id": customer_ids[record["customer_external_id"]],
            "placed_at": record["placed_at"],
            "total": record["total"],
            "refunded_amount": record.get("refunded_amount", Decimal("0.00")),
            "currency": record.get("currency") or default_currency,
            "channel": record.get("channel", ""),
            "status": record.get("status", Order.Status.PLACED),
        }
        lines = _line_rows(record)
        line_rows.append(lines)
        order = existing.get(record["external_id"])
        if order is None:
            order = Order(tenant_id=tenant_id, external_id=record["external_id"], **values)
            new_orders.append(order)
            statuses.append(("created", order))
            continue
        same = all(getattr(order, name) == value for name, value in values.items())
        if same and stored_lines.get(order.pk, []) == lines:
            statuses.append(("unchanged", order))
            continue
        for name, value in values.items():
            setattr(order, name, value)
        changed_orders.append(order)
        statuses.append(("updated", order))

    Order.objects.bulk_create(new_orders)
    if changed_orders:
        Order.objects.bulk_update(changed_orders, list(ORDER_FIELDS))
        OrderLine.objects.filter(order_id__in=[o.pk for o in changed_orders]).delete()
    OrderLine.objects.bulk_create(
        [
            OrderLine(
                tenant_id=tenant_id, order_id=order.pk, product_id=product_ids.get(sku), sku=sku,
                quantity=quantity, unit_price=unit_price, line_total=line_total, returned_quantity=returned,
            )
            for (status, order), lines in zip(statuses, line_rows)
            if status != "unchanged"
            for sku, quantity, unit_price, line_total, returned in lines
        ]
    )
    Interaction.objects.bulk_create(
        [
            Interaction(
                tenant_id=tenant_id, customer_id=order.customer_id, kind=Interaction.Kind.PURCHASE,
                occurred_at=order.placed_at, summary=f"Order {order.external_id}: {order.total} {order.currency}",
                details={"order_id": order.pk, "external_id": order.external_id, "total": str(order.total),
                         "currency": order.currency},
            )
            for order in new_orders
        ]
    )
    if new_orders:
        _pull_first_seen_back({order.customer_id for order in new_orders})
    touched = {order.customer_id for status, order in statuses if status != "unchanged"}
    transaction.on_commit(lambda: send_orders_changed(tenant_id, touched))  # bulk writes send no post_save
    return [UpsertResult(order.external_id, status, order.pk) for status, order in statuses]


def _ensure_products(records: list[dict], tenant_id: int) -> dict[str, int]:
    """Return product ids by SKU for every line, creating the products that do not exist yet."""
    first_line_by_sku = {}
    for record in records:
        for line in record.get("lines", []):
            first_line_by_sku.setdefault(line["sku"], line)
    if not first_line_by_sku:
        return {}
    known = dict(Product.objects.filter(sku__in=first_line_by_sku).values_list("sku", "pk"))
    missing = [
        Product(tenant_id=tenant_id, sku=sku, name=line.get("name") or sku, category=line.get("category", ""),
                price=line["unit_price"])
        for sku, line in first_line_by_sku.items()
        if sku not in known
    ]
    if missing:
        # A concurrent request may create the same SKU: keep theirs, then read every id back.
        Product.objects.bulk_create(missing, ignore_conflicts=True)
        known = dict(Product.objects.filter(sku__in=first_line_by_sku).values_list("sku", "pk"))
    return known


def _pull_first_seen_back(customer_ids: set[int]) -> None:
    """Set first_seen_at to the earliest order where an order predates it (one UPDATE)."""
    earliest = (
        Order.objects.filter(customer=OuterRef("pk")).values("customer").annotate(first=Min("placed_at")).values("first")
    )
    Customer.objects.filter(pk__in=customer_ids, first_seen_at__gt=Subquery(earliest)).update(
        first_seen_at=Least(F("first_seen_at"), Subquery(earliest))
    )
