"""The values a message template sees, built for a whole batch of recipients in a few queries.

Templates get plain values only (see campaigns.rendering.CONTEXT_VARIABLES): names, the last purchase,
cross-sell products bought by customers who bought the same things, a unique reward code and the
customer's own links. Values a batch's templates do not use are not computed.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.cache import cache
from django.db import connection
from django.db.models import F, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from jinja2.meta import find_undeclared_variables

from campaigns.models import Campaign, RewardCode
from campaigns.rendering import TEXT_ENV
from crm_site.tenancy import current_tenant_id
from customers import public_links
from customers.models import Customer, Order, OrderLine, Product

CROSS_SELL_COUNT = 3
AFFINITY_LOOKBACK = dt.timedelta(days=365)
AFFINITY_CACHE_SECONDS = 6 * 3600
REWARD_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I look-alikes


@dataclass(frozen=True)
class Recipient:
    """One (customer, campaign, channel) a context is built for; ``key`` is how the caller finds it again."""

    key: object
    customer: Customer
    campaign: Campaign
    channel: str


def template_variables(*sources: str) -> set[str]:
    """Return the context names the given templates use (so unused values are not computed)."""
    names: set[str] = set()
    for source in sources:
        try:
            names |= find_undeclared_variables(TEXT_ENV.parse(source or ""))
        except Exception:  # an invalid template fails at render time with its own message
            continue
    return names


def build_contexts(recipients: list[Recipient], *, used: set[str] | None = None,
                   now: dt.datetime | None = None) -> dict[object, dict]:
    """Return ``{recipient.key: context}`` for a batch, with a constant number of queries.

    ``used`` limits the work to the names the templates use (None = everything).
    """
    now = now or timezone.now()
    wants = (lambda name: True) if used is None else (lambda name: name in used)
    customer_ids = list({r.customer.pk for r in recipients})
    last_purchases = _last_purchases(customer_ids) if wants("last_purchase") else {}
    cross_sell = _cross_sell(customer_ids, now) if wants("products") else {}
    reward_codes: dict[tuple[int, int], str] = {}
    if wants("reward_code"):
        reward_codes = _reward_codes([(r.campaign, r.customer.pk) for r in recipients if r.campaign.issues_reward_codes])
    workspace_name = _workspace_name()
    today = timezone.localdate(now).isoformat()
    contexts = {}
    for recipient in recipients:
        customer = recipient.customer
        contexts[recipient.key] = {
            "first_name": customer.first_name or "",
            "last_name": customer.last_name or "",
            "full_name": customer.full_name,
            "last_purchase": last_purchases.get(customer.pk),
            "products": cross_sell.get(customer.pk, []),
            "reward_code": reward_codes.get((recipient.campaign.pk, customer.pk), ""),
            "workspace_name": workspace_name,
            "links": customer_links(customer, recipient.channel) if wants("links") else {},
            "today": today,
        }
    return contexts


def customer_links(customer: Customer, channel: str) -> dict[str, str]:
    """Return the customer's own public links: one-click unsubscribe for the channel, and the preference centre."""
    return {"unsubscribe": public_links.unsubscribe_url(customer, channel),
            "preferences": public_links.preference_url(customer)}


def _workspace_name() -> str:
    from crm_site.models import Workspace

    return Workspace.objects.filter(pk=current_tenant_id()).values_list("name", flat=True).first() or ""


def _last_purchases(customer_ids: list[int]) -> dict[int, dict]:
    """Return each customer's latest order as {product, date, total} (two queries for the batch)."""
    if not customer_ids:
        return {}
    latest = Order.objects.filter(customer=OuterRef("pk")).order_by("-placed_at", "-pk").values("pk")[:1]
    order_ids = [
        pk for pk in Customer.objects.filter(pk__in=customer_ids).annotate(last_order=Subquery(latest))
        .values_list("last_order", flat=True) if pk
    ]
    top_line = (
        OrderLine.objects.filter(order=OuterRef("pk")).order_by("-line_total", "pk")
        .annotate(label=Coalesce(F("product__name"), F("sku"))).values("label")[:1]
    )
    rows = Order.objects.filter(pk__in=order_ids).annotate(product=Subquery(top_line)).values_list(
        "customer_id", "product", "placed_at", "total"
    )
    return {
        customer_id: {"product": product or "", "date": timezone.localdate(placed_at).isoformat(),
                      "total": f"{total:.2f}"}
        for customer_id, product, placed_at, total in rows
    }


def product_affinities(now: dt.datetime | None = None) -> dict[int, list[tuple[int, int]]]:
    """Return {product id: [(other product id, customers who bought both), …]} for the workspace, best first.

    One aggregate query over the last year's order lines, cached for a few hours per workspace.
    """
    tenant_id = current_tenant_id()
    key = f"rapport:affinities:{tenant_id}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    since = (now or timezone.now()) - AFFINITY_LOOKBACK
    line, order = OrderLine._meta.db_table, Order._meta.db_table
    sql = f"""
        SELECT a.product_id, b.product_id, COUNT(DISTINCT oa.customer_id) AS buyers
        FROM {line} a
        JOIN {order} oa ON oa.id = a.order_id
        JOIN {order} ob ON ob.customer_id = oa.customer_id AND ob.tenant_id = oa.tenant_id
        JOIN {line} b ON b.order_id = ob.id
        WHERE a.tenant_id = %s AND b.tenant_id = %s AND oa.placed_at >= %s AND ob.placed_at >= %s
          AND a.product_id IS NOT NULL AND b.product_id IS NOT NULL AND a.product_id <> b.product_id
        GROUP BY a.product_id, b.product_id
    """
    affinities: dict[int, list[tuple[int, int]]] = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(sql, [tenant_id, tenant_id, since, since])
        for base, other, buyers in cursor.fetchall():
            affinities[base].append((other, buyers))
    result = {base: sorted(pairs, key=lambda pair: (-pair[1], pair[0]))[:20] for base, pairs in affinities.items()}
    cache.set(key, result, AFFINITY_CACHE_SECONDS)
    return result


def _cross_sell(customer_ids: list[int], now: dt.datetime) -> dict[int, list[dict]]:
    """Return up to three products per customer that customers with the same purchases also bought."""
    if not customer_ids:
        return {}
    bought: dict[int, set[int]] = defaultdict(set)
    for customer_id, product_id in (
        OrderLine.objects.filter(order__customer_id__in=customer_ids, product__isnull=False)
        .values_list("order__customer_id", "product_id").distinct()
    ):
        bought[customer_id].add(product_id)
    if not bought:
        return {}
    affinities = product_affinities(now)
    picks: dict[int, list[int]] = {}
    for customer_id, own in bought.items():
        scores: Counter = Counter()
        for product_id in own:
            for other, buyers in affinities.get(product_id, ()):
                if other not in own:
                    scores[other] += buyers
        picks[customer_id] = [pid for pid, _ in sorted(scores.items(), key=lambda s: (-s[1], s[0]))[:CROSS_SELL_COUNT]]
    wanted = {pid for pids in picks.values() for pid in pids}
    products = {
        p.pk: {"name": p.name, "category": p.category, "price": f"{p.price:.2f}"}
        for p in Product.objects.filter(pk__in=wanted).only("name", "category", "price")
    }
    return {customer_id: [products[pid] for pid in pids if pid in products] for customer_id, pids in picks.items()}


def new_reward_code(prefix: str = "") -> str:
    """Return a fresh random reward code such as ``WELCOME-7KQ2M9XH``."""
    body = "".join(secrets.choice(REWARD_ALPHABET) for _ in range(8))
    return f"{prefix.upper()}-{body}" if prefix else body


def _reward_codes(pairs: Iterable[tuple[Campaign, int]]) -> dict[tuple[int, int], str]:
    """Return {(campaign id, customer id): code}, creating the missing codes in bulk (unique per workspace)."""
    pairs = list(pairs)
    if not pairs:
        return {}
    campaigns = {campaign.pk: campaign for campaign, _ in pairs}
    wanted = {(campaign.pk, customer_id) for campaign, customer_id in pairs}
    customer_ids = {customer_id for _, customer_id in wanted}

    def existing():
        return {
            (campaign_id, customer_id): code
            for campaign_id, customer_id, code in RewardCode.objects.filter(
                campaign_id__in=campaigns, customer_id__in=customer_ids
            ).values_list("campaign_id", "customer_id", "code")
        }

    codes = existing()
    for _attempt in range(3):  # a clash with an existing code is dropped by the unique key; try again
        missing = wanted - codes.keys()
        if not missing:
            break
        RewardCode.objects.bulk_create(
            [
                RewardCode(tenant_id=current_tenant_id(), campaign_id=campaign_id, customer_id=customer_id,
                           code=new_reward_code(campaigns[campaign_id].reward_code_prefix))
                for campaign_id, customer_id in missing
            ],
            ignore_conflicts=True,
        )
        codes = existing()
    return {pair: code for pair, code in codes.items() if pair in wanted}
