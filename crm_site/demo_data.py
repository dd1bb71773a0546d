"""Realistic synthetic shop data: the demo workspace of `make run`, and the histories bench/generate.py loads.

The simulation is set-based (numpy arrays over all customers, no per-customer loop) and deterministic for a
seed and an ``as_of`` moment. Each customer gets a kind and a purchase rhythm of their own:

* prospects signed up but never bought; one-time buyers bought once;
* repeat buyers order at their own usual gap (drawn from a log-normal: a few order weekly, most every one to
  three months) until today, so they are active;
* lapsing buyers had such a rhythm but stopped months ago, so the lifecycle engine finds them at risk or lapsed;
* newcomers made their first purchase in the last 30 days.

The propensity to buy is heavy-tailed, so the top fifth of the buyers brings roughly three quarters of the
revenue (a Pareto-like concentration, as in real shops).
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

DAY = 86_400
PERIOD_DAYS = 730  # two years of history

# Customer kinds in the simulation (not stored: the lifecycle engine has to find them from the orders).
PROSPECT, ONE_TIME, REPEAT, LAPSING, NEWCOMER = range(5)
KIND_NAMES = ("prospect", "one_time", "repeat", "lapsing", "newcomer")
DEFAULT_KIND_MIX = (0.08, 0.30, 0.42, 0.15, 0.05)


# --- Catalogue ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogueItem:
    sku: str
    name: str
    category: str
    price: Decimal
    popularity: float  # relative chance of being a line of an order
    consumable: bool = True  # bought in quantities and again and again


def _item(sku, name, category, price, popularity, consumable=True):
    return CatalogueItem(sku, name, category, Decimal(price), popularity, consumable)


COFFEE_CATALOGUE: tuple[CatalogueItem, ...] = (
    _item("BEAN-ETH-250", "Ethiopia Yirgacheffe, 250 g", "Coffee beans", "12.90", 9),
    _item("BEAN-COL-250", "Colombia Huila, 250 g", "Coffee beans", "10.90", 10),
    _item("BEAN-BRA-250", "Brazil Cerrado, 250 g", "Coffee beans", "9.90", 8),
    _item("BEAN-KEN-250", "Kenya Nyeri AA, 250 g", "Coffee beans", "14.50", 5),
    _item("BEAN-GUA-250", "Guatemala Antigua, 250 g", "Coffee beans", "11.90", 5),
    _item("BEAN-SUM-250", "Sumatra Mandheling, 250 g", "Coffee beans", "12.50", 4),
    _item("BEAN-DEC-250", "Swiss Water Decaf, 250 g", "Coffee beans", "11.50", 3),
    _item("BEAN-HOU-1K", "House Espresso, 1 kg", "Coffee beans", "29.90", 9),
    _item("BEAN-CRE-1K", "Crema Blend, 1 kg", "Coffee beans", "26.90", 6),
    _item("BEAN-GEI-100", "Panama Geisha, 100 g", "Coffee beans", "24.90", 1.5),
    _item("SUB-MONTH", "Roaster's Choice subscription, monthly", "Subscriptions", "29.00", 4),
    _item("SUB-ESP-1K", "Espresso subscription, 1 kg monthly", "Subscriptions", "34.00", 3),
    _item("SUB-GIFT-3M", "Gift subscription, 3 months", "Subscriptions", "84.00", 0.8, consumable=False),
    _item("EQ-GRIND-HAND", "Hand grinder", "Equipment", "89.00", 0.9, consumable=False),
    _item("EQ-GRIND-BURR", "Electric burr grinder", "Equipment", "249.00", 0.5, consumable=False),
    _item("EQ-ESPRESSO", "Home espresso machine", "Equipment", "649.00", 0.15, consumable=False),
    _item("EQ-KETTLE", "Gooseneck kettle", "Equipment", "59.00", 0.7, consumable=False),
    _item("EQ-AEROPRESS", "AeroPress", "Equipment", "39.90", 1.0, consumable=False),
    _item("EQ-FRENCH", "French press, 1 l", "Equipment", "34.90", 0.8, consumable=False),
    _item("EQ-V60", "V60 dripper", "Equipment", "24.90", 1.2, consumable=False),
    _item("ACC-FILTER", "Paper filters, 100 pcs", "Accessories", "6.90", 4),
    _item("ACC-SCALE", "Brewing scale with timer", "Accessories", "39.90", 0.8, consumable=False),
    _item("ACC-MUG", "Stoneware mug", "Accessories", "14.90", 1.5, consumable=False),
    _item("ACC-TAMPER", "Espresso tamper", "Accessories", "29.90", 0.4, consumable=False),
    _item("ACC-CANISTER", "Airtight canister", "Accessories", "19.90", 0.8, consumable=False),
    _item("ACC-DESCALE", "Descaling tablets", "Accessories", "12.90", 1.5),
    _item("TEA-SENCHA", "Japanese Sencha, 100 g", "Tea", "9.50", 1.5),
    _item("TEA-CHAI", "Masala Chai, 100 g", "Tea", "8.50", 1.2),
    _item("GIFT-25", "Gift card 25 EUR", "Gift cards", "25.00", 0.6, consumable=False),
    _item("GIFT-50", "Gift card 50 EUR", "Gift cards", "50.00", 0.4, consumable=False),
    _item("WORKSHOP-HB", "Home barista workshop", "Workshops", "79.00", 0.3, consumable=False),
)

TEA_CATALOGUE: tuple[CatalogueItem, ...] = (
    _item("TEA-DARJ-100", "Darjeeling First Flush, 100 g", "Black tea", "11.90", 6),
    _item("TEA-ASSAM-250", "Assam Breakfast, 250 g", "Black tea", "9.90", 8),
    _item("TEA-EARL-100", "Earl Grey Blue Flower, 100 g", "Black tea", "8.90", 7),
    _item("TEA-SENCHA-100", "Sencha Fukuyu, 100 g", "Green tea", "10.50", 6),
    _item("TEA-MATCHA-30", "Ceremonial Matcha, 30 g", "Green tea", "24.00", 3),
    _item("TEA-OOLONG-100", "Milk Oolong, 100 g", "Oolong", "13.90", 3),
    _item("TEA-ROOIBOS-250", "Rooibos Vanilla, 250 g", "Herbal", "7.90", 5),
    _item("TEA-CLUB", "Tea club, monthly box", "Subscriptions", "24.00", 3),
    _item("TW-POT-GLASS", "Glass teapot, 1 l", "Teaware", "32.00", 0.8, consumable=False),
    _item("TW-KYUSU", "Tokoname kyusu", "Teaware", "68.00", 0.3, consumable=False),
    _item("TW-STRAINER", "Fine strainer", "Teaware", "9.90", 1.2, consumable=False),
    _item("GIFT-TEA-30", "Gift card 30 EUR", "Gift cards", "30.00", 0.5, consumable=False),
)


# --- People ------------------------------------------------------------------------------------------

FIRST_NAMES = (
    "Anna", "Lukas", "Marie", "Jonas", "Sofia", "Elias", "Emma", "Noah", "Mia", "Leon", "Hannah", "Paul",
    "Lea", "Felix", "Clara", "Ben", "Ida", "Finn", "Lina", "Jan", "Zoe", "David", "Nora", "Tim", "Laura",
    "Oskar", "Julia", "Max", "Sara", "Tobias", "Amelie", "Niklas", "Chloé", "Mateo", "Aylin", "Can", "Ewa",
    "Piotr", "Giulia", "Marco", "Inès", "Hugo", "Freya", "Lars", "Sanne", "Daan", "Olivia", "James", "Amira",
    "Yusuf", "Mei", "Kenji", "Priya", "Arjun", "Fatima", "Omar", "Helena", "Jakob", "Rosa", "Matthias",
)
LAST_NAMES = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann",
    "Koch", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Braun", "Zimmermann", "Krüger",
    "Hartmann", "Lange", "Werner", "Krause", "Lehmann", "Köhler", "Maier", "Huber", "Gruber", "Bauer",
    "Rossi", "Bianchi", "Dubois", "Martin", "Jansen", "de Vries", "Nowak", "Kowalski", "Yılmaz", "Kaya",
    "Smith", "Taylor", "García", "Fernández", "Larsen", "Nielsen", "Andersson", "Novák", "Horvat", "Popescu",
    "Nguyen", "Tanaka", "Sharma", "Haddad", "O'Brien", "Costa", "Silva", "Keller", "Vogel", "Brandt",
)
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")  # reserved: a demo never mails a real inbox
TIME_ZONES = (
    ("Europe/Berlin", "de-DE", 0.55), ("Europe/Vienna", "de-AT", 0.12), ("Europe/Zurich", "de-CH", 0.08),
    ("Europe/Amsterdam", "nl-NL", 0.07), ("Europe/Paris", "fr-FR", 0.06), ("Europe/London", "en-GB", 0.06),
    ("America/New_York", "en-US", 0.04), ("Asia/Tokyo", "ja-JP", 0.02),
)
ACQUISITION_SOURCES = ("organic search", "instagram", "newsletter", "market stall", "friend referral", "podcast ad")
ORDER_CHANNELS = (("web", 0.76), ("store", 0.14), ("phone", 0.04), ("marketplace", 0.06))
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Version/17.4 Mobile Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
)


def ascii_slug(text: str) -> str:
    """Return ``text`` transliterated to lower-case ASCII letters, for the local part of demo e-mail addresses."""
    flat = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in flat.lower() if ch.isalnum())


# --- Customers and their rhythms ----------------------------------------------------------------------


@dataclass
class CustomerPlan:
    """Per-customer arrays (index = customer number) describing who buys, when, and how much."""

    as_of: int  # epoch seconds: "now" of the simulation
    kind: np.ndarray  # int8, one of PROSPECT … NEWCOMER
    first_seen: np.ndarray  # int64 epoch seconds: sign-up
    window_start: np.ndarray  # int64 epoch seconds: first purchase (prospects: sign-up)
    window_end: np.ndarray  # int64 epoch seconds: when the rhythm stops (as_of unless lapsing)
    purchase_rate: np.ndarray  # float: orders per year the customer tends to place
    basket_scale: np.ndarray  # float: how much the customer puts in a basket (1 = typical)
    order_count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.kind)


def epoch_seconds(moment: dt.datetime) -> int:
    """Return an aware datetime as whole seconds since the Unix epoch."""
    return int(moment.timestamp())


def _growth_biased(rng: np.random.Generator, low: np.ndarray | int, high: np.ndarray | int, size: int) -> np.ndarray:
    # A growing shop: more customers arrive recently than two years ago (density rising towards `high`).
    return (low + (np.asarray(high) - low) * rng.random(size) ** 0.75).astype(np.int64)


def plan_customers(rng: np.random.Generator, count: int, as_of: dt.datetime, *,
                   kind_mix: tuple[float, ...] = DEFAULT_KIND_MIX, period_days: int = PERIOD_DAYS) -> CustomerPlan:
    """Return a CustomerPlan for ``count`` customers over the ``period_days`` before ``as_of``."""
    now = epoch_seconds(as_of)
    start = now - period_days * DAY
    kind = rng.choice(len(kind_mix), size=count, p=np.asarray(kind_mix) / sum(kind_mix)).astype(np.int8)

    window_start = np.empty(count, dtype=np.int64)
    window_end = np.full(count, now, dtype=np.int64)
    for code, (low, high) in {
        PROSPECT: (start, now - DAY),
        ONE_TIME: (start, now - 2 * DAY),
        REPEAT: (start, now - 60 * DAY),
        LAPSING: (start, now - 240 * DAY),
        NEWCOMER: (now - 30 * DAY, now - 3600),
    }.items():
        members = np.flatnonzero(kind == code)
        window_start[members] = _growth_biased(rng, low, high, len(members))
    one_time = kind == ONE_TIME
    window_end[one_time] = window_start[one_time]
    # Lapsing buyers kept their rhythm for two months or more, then stopped at least four months ago.
    lapsing = np.flatnonzero(kind == LAPSING)
    stop_low = window_start[lapsing] + 60 * DAY
    window_end[lapsing] = stop_low + ((now - 120 * DAY - stop_low) * rng.random(len(lapsing))).astype(np.int64)

    # Many sign up at their first checkout; others browse a few days first.
    lead = np.where(rng.random(count) < 0.45, 0, rng.exponential(6 * DAY, count)).astype(np.int64)
    first_seen = np.where(kind == PROSPECT, window_start, np.maximum(window_start - lead, start))

    # Heavy-tailed propensity: median usual gap about two months, a few order every week or two.
    purchase_rate = np.clip(rng.lognormal(np.log(5.0), 1.1, count), 0.7, 60.0)
    # Frequent buyers also fill bigger baskets (espresso drinkers buy by the kilo).
    basket_scale = rng.lognormal(0.0, 0.5, count) * (purchase_rate / 5.0) ** 0.2
    return CustomerPlan(now, kind, first_seen.astype(np.int64), window_start, window_end, purchase_rate, basket_scale)


def allocate_orders(rng: np.random.Generator, plan: CustomerPlan, total_orders: int | None = None) -> np.ndarray:
    """Return the number of orders of each customer (also stored on the plan).

    With ``total_orders`` None each repeat buyer places about rate × years orders (Poisson); with a number the
    extra orders are shared out by a multinomial in proportion to the same rates, so the total is exact.
    """
    kind = plan.kind
    counts = np.zeros(len(plan), dtype=np.int64)
    counts[kind == ONE_TIME] = 1
    newcomer = kind == NEWCOMER
    counts[newcomer] = 1 + (rng.random(int(newcomer.sum())) < 0.25)
    repeaters = np.flatnonzero((kind == REPEAT) | (kind == LAPSING))
    counts[repeaters] = 2
    expected_extra = plan.purchase_rate[repeaters] * (plan.window_end[repeaters] - plan.window_start[repeaters]) / (
        365 * DAY
    )
    if total_orders is None:
        counts[repeaters] += rng.poisson(expected_extra)
    else:
        remaining = total_orders - int(counts.sum())
        if remaining < 0:
            raise ValueError(
                f"{total_orders:,} orders are too few for {len(plan):,} customers: the one-time, new and repeat "
                f"buyers alone place {int(counts.sum()):,}."
            )
        if remaining and len(repeaters):
            counts[repeaters] += rng.multinomial(remaining, expected_extra / expected_extra.sum())
        elif remaining:
            raise ValueError("No repeat buyers to take the extra orders: raise the number of customers.")
    plan.order_count = counts
    return counts


def schedule_orders(rng: np.random.Generator, plan: CustomerPlan, first: int = 0,
                    last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (customer number, placed_at epoch seconds) of every order of customers ``first``..``last``-1.

    Orders are sorted by customer, then time. A repeat buyer's orders fall on their own rhythm: evenly spaced
    over their active window with a little jitter, the next one due somewhere within one gap after the window.
    """
    last = len(plan) if last is None else last
    counts = plan.order_count[first:last]
    total = int(counts.sum())
    customer = np.repeat(np.arange(first, last, dtype=np.int64), counts)
    offsets = np.cumsum(counts) - counts
    nth = np.arange(total, dtype=np.int64) - np.repeat(offsets, counts)

    start = plan.window_start[customer].astype(np.float64)
    span = (plan.window_end[customer] - plan.window_start[customer]).astype(np.float64)
    # Where in its cycle the rhythm stands at the end of the window (0.3..1 of a gap since the last order).
    phase = 0.3 + 0.7 * _per_customer_uniform(rng, counts)
    gap = span / np.maximum(np.repeat(counts, counts) - 1 + phase, 1.0)
    jitter = np.where(nth > 0, rng.uniform(-0.3, 0.3, total), 0.0)
    moment = start + gap * (nth + jitter)
    # Shops sell in the daytime: move each order to a time of day around mid-afternoon.
    time_of_day = np.clip(rng.normal(14.5 * 3600, 3.5 * 3600, total), 7 * 3600, 22.9 * 3600)
    placed = (moment // DAY) * DAY + time_of_day
    placed = np.minimum(placed, plan.as_of - 60).astype(np.int64)
    return customer, placed


def _per_customer_uniform(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    return np.repeat(rng.random(len(counts)), counts)


@dataclass
class Baskets:
    """Order lines of a batch of orders: line arrays plus each order's total, in cents."""

    line_order: np.ndarray  # int64: position of the line's order in the batch
    product: np.ndarray  # int64: index into the catalogue
    quantity: np.ndarray  # int64
    unit_cents: np.ndarray  # int64
    order_total_cents: np.ndarray  # int64, one per order


def fill_baskets(rng: np.random.Generator, basket_scale: np.ndarray, catalogue: tuple[CatalogueItem, ...]) -> Baskets:
    """Return the lines of one order per element of ``basket_scale`` (the buying customer's basket size)."""
    orders = len(basket_scale)
    lines_per_order = np.minimum(1 + rng.poisson(0.55 * basket_scale), 6)
    line_order = np.repeat(np.arange(orders, dtype=np.int64), lines_per_order)
    popularity = np.array([item.popularity for item in catalogue], dtype=np.float64)
    product = rng.choice(len(catalogue), size=len(line_order), p=popularity / popularity.sum())
    consumable = np.array([item.consumable for item in catalogue])[product]
    quantity = np.where(consumable, 1 + rng.poisson(0.35 * basket_scale[line_order]), 1).astype(np.int64)
    prices = np.array([int(item.price * 100) for item in catalogue], dtype=np.int64)
    unit_cents = prices[product]
    order_total = np.bincount(line_order, weights=quantity * unit_cents, minlength=orders).astype(np.int64)
    return Baskets(line_order, product.astype(np.int64), quantity, unit_cents, order_total)


def pick_weighted(rng: np.random.Generator, options: tuple, size: int) -> np.ndarray:
    """Return ``size`` indexes into ``options`` (pairs whose last element is the weight), drawn by weight."""
    weights = np.array([option[-1] for option in options], dtype=np.float64)
    return rng.choice(len(options), size=size, p=weights / weights.sum())


def revenue_share_of_top(revenue_by_customer: np.ndarray, top_fraction: float = 0.2) -> float:
    """Return the share of revenue brought by the top ``top_fraction`` of the customers who bought anything."""
    buyers = np.sort(revenue_by_customer[revenue_by_customer > 0])[::-1]
    if not len(buyers):
        return 0.0
    top = max(1, int(round(len(buyers) * top_fraction)))
    return float(buyers[:top].sum() / buyers.sum())


# --- Writing a workspace's demo data through the ORM (SQLite or PostgreSQL) ----------------------------


@dataclass
class SeedSummary:
    """What ``seed_workspace`` wrote, for the command's output and for tests."""

    customers: int = 0
    products: int = 0
    orders: int = 0
    order_lines: int = 0
    consent_events: int = 0
    suppressions: int = 0
    interactions: int = 0
    revenue: Decimal = Decimal("0")
    top_fifth_revenue_share: float = 0.0

    def describe(self) -> str:
        return (
            f"{self.customers:,} customers, {self.products} products, {self.orders:,} orders "
            f"({self.order_lines:,} lines, revenue {self.revenue:,.2f}), {self.consent_events:,} consent events, "
            f"{self.suppressions} suppressions, {self.interactions:,} interactions; "
            f"top 20% of buyers bring {self.top_fifth_revenue_share:.0%} of revenue"
        )


def _moments(seconds: np.ndarray) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(int(value), dt.UTC) for value in seconds]


def _cents(value: int) -> Decimal:
    return Decimal(int(value)).scaleb(-2)


def seed_workspace(workspace, *, customers: int = 3000, seed: int = 2024, as_of: dt.datetime | None = None,
                   catalogue: tuple[CatalogueItem, ...] = COFFEE_CATALOGUE, note_author=None) -> SeedSummary:
    """Fill an empty workspace with customers, products, two years of orders, consent and a timeline.

    Returns a SeedSummary. Everything is bulk-inserted inside the workspace's scope (one transaction), and the
    same ``seed`` and ``as_of`` always give the same data.
    """
    from django.db.models import F

    from crm_site.tenancy import tenant_scope
    from customers.models import (
        Channel, ConsentEvent, Customer, Interaction, Order, OrderLine, Product, Suppression, suppression_hash,
    )

    as_of = (as_of or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    rng = np.random.default_rng(seed)
    plan = plan_customers(rng, customers, as_of)
    allocate_orders(rng, plan)
    order_customer, order_placed = schedule_orders(rng, plan)
    baskets = fill_baskets(rng, plan.basket_scale[order_customer], catalogue)
    # A buyer signed up no later than the first order.
    first_order = np.full(customers, np.iinfo(np.int64).max)
    np.minimum.at(first_order, order_customer, order_placed)
    first_seen = np.minimum(plan.first_seen, first_order)

    summary = SeedSummary()
    with tenant_scope(workspace):
        products = Product.objects.bulk_create(
            Product(tenant=workspace, sku=item.sku, name=item.name, category=item.category, price=item.price)
            for item in catalogue
        )
        summary.products = len(products)

        people = _customer_rows(rng, customers)
        consent = _consent_ledger(rng, customers, people["has_email"], people["has_phone"], first_seen, plan.as_of)
        customer_rows = Customer.objects.bulk_create(
            [
                Customer(
                    tenant=workspace, external_id=f"C{number + 1:06d}", email=people["email"][number],
                    phone=people["phone"][number], first_name=people["first_name"][number],
                    last_name=people["last_name"][number], time_zone=people["time_zone"][number],
                    locale=people["locale"][number], attributes=people["attributes"][number],
                    email_opt_in=bool(consent.email_opt_in[number]), sms_opt_in=bool(consent.sms_opt_in[number]),
                    first_seen_at=seen,
                )
                for number, seen in enumerate(_moments(first_seen))
            ],
            batch_size=1000,
        )
        customer_ids = np.array([row.pk for row in customer_rows], dtype=np.int64)
        summary.customers = len(customer_rows)

        summary.consent_events = len(
            ConsentEvent.objects.bulk_create(
                [
                    ConsentEvent(
                        tenant=workspace, customer_id=int(customer_ids[event.customer]), channel=event.channel,
                        action=event.action, occurred_at=event.occurred_at, method=event.method, source=event.source,
                        ip_address=event.ip_address, user_agent=event.user_agent, wording_version=event.wording,
                        confirmed_at=event.confirmed_at,
                    )
                    for event in consent.events
                ],
                batch_size=1000,
            )
        )
        suppressions = [
            Suppression(tenant=workspace, channel=channel, reason=reason, note=note,
                        value_hash=suppression_hash(channel, people["email"][number] if channel == Channel.EMAIL
                                                    else people["phone"][number]))
            for number, channel, reason, note in consent.suppressions
        ]
        summary.suppressions = len(Suppression.objects.bulk_create(suppressions, batch_size=1000))

        orders = _order_rows(rng, workspace, order_customer, order_placed, baskets, customer_ids)
        Order.objects.bulk_create(orders, batch_size=1000)
        summary.orders = len(orders)
        product_ids = [product.pk for product in products]
        lines = _order_lines(workspace, orders, baskets, catalogue, product_ids)
        OrderLine.objects.bulk_create(lines, batch_size=1000)
        summary.order_lines = len(lines)

        interactions = [
            Interaction(
                tenant=workspace, customer_id=order.customer_id, kind=Interaction.Kind.PURCHASE,
                occurred_at=order.placed_at,
                summary=f"Order {order.external_id}: {items} item{'s' if items != 1 else ''}, "
                f"{order.total} {order.currency}",
                details={"order_id": order.pk, "external_id": order.external_id, "total": str(order.total),
                         "channel": order.channel, "status": order.status},
            )
            for order, items in zip(orders, np.bincount(baskets.line_order, weights=baskets.quantity).astype(int))
        ]
        interactions += [
            Interaction(
                tenant=workspace, customer_id=int(customer_ids[event.customer]), kind=Interaction.Kind.CONSENT,
                occurred_at=event.occurred_at,
                summary=f"{'Subscribed to' if event.action == 'grant' else 'Unsubscribed from'} "
                f"{'e-mail' if event.channel == Channel.EMAIL else 'SMS'} marketing ({event.method})",
                details={"channel": event.channel, "action": event.action, "method": event.method},
            )
            for event in consent.events
        ]
        interactions += _staff_notes(rng, workspace, order_customer, baskets, customer_ids, plan.as_of, note_author)
        summary.interactions = len(Interaction.objects.bulk_create(interactions, batch_size=1000))

        # Records look as old as the history they hold, so "newest first" lists read naturally.
        Customer.objects.update(created_at=F("first_seen_at"))
        Order.objects.update(created_at=F("placed_at"))

    revenue_cents = np.bincount(order_customer, weights=baskets.order_total_cents, minlength=customers)
    summary.revenue = _cents(int(baskets.order_total_cents.sum()))
    summary.top_fifth_revenue_share = revenue_share_of_top(revenue_cents)
    return summary


def _customer_rows(rng: np.random.Generator, count: int) -> dict[str, list]:
    first_names = np.array(FIRST_NAMES, dtype=object)[rng.integers(len(FIRST_NAMES), size=count)]
    last_names = np.array(LAST_NAMES, dtype=object)[rng.integers(len(LAST_NAMES), size=count)]
    has_email = rng.random(count) < 0.95
    # Those who left no e-mail address (shop counter buyers) left a phone number.
    has_phone = (rng.random(count) < 0.55) | ~has_email
    domains = rng.integers(len(EMAIL_DOMAINS), size=count)
    phone_numbers = rng.integers(10_000_000, 99_999_999, size=count)
    zones = pick_weighted(rng, TIME_ZONES, count)
    sources = rng.integers(len(ACQUISITION_SOURCES), size=count)
    brews = rng.choice(("espresso", "filter", "french press", "aeropress", "moka pot"), size=count)
    return {
        "first_name": list(first_names),
        "last_name": list(last_names),
        "email": [
            f"{ascii_slug(first_names[n])}.{ascii_slug(last_names[n])}{n + 1}@{EMAIL_DOMAINS[domains[n]]}"
            if has_email[n] else ""
            for n in range(count)
        ],
        "phone": [f"+49151{phone_numbers[n]}" if has_phone[n] else "" for n in range(count)],
        "has_email": has_email,
        "has_phone": has_phone,
        "time_zone": [TIME_ZONES[zone][0] for zone in zones],
        "locale": [TIME_ZONES[zone][1] for zone in zones],
        "attributes": [
            {"acquisition": ACQUISITION_SOURCES[sources[n]], "favourite_brew": str(brews[n])} for n in range(count)
        ],
    }


@dataclass
class _ConsentRow:
    customer: int
    channel: str
    action: str
    occurred_at: dt.datetime
    method: str
    source: str
    ip_address: str | None
    user_agent: str
    wording: str
    confirmed_at: dt.datetime | None


@dataclass
class _Consent:
    events: list[_ConsentRow]
    email_opt_in: np.ndarray
    sms_opt_in: np.ndarray
    suppressions: list[tuple[int, str, str, str]]  # (customer number, channel, reason, note)


def _consent_ledger(rng: np.random.Generator, count: int, has_email: np.ndarray, has_phone: np.ndarray,
                    first_seen: np.ndarray, as_of: int) -> _Consent:
    """Grants at sign-up, some later withdrawals, and suppressions; the opt-in flags follow the latest event."""
    events: list[_ConsentRow] = []
    suppressions: list[tuple[int, str, str, str]] = []
    email_opt_in = np.zeros(count, dtype=bool)
    sms_opt_in = np.zeros(count, dtype=bool)
    ip_tails = rng.integers(1, 254, size=count)
    ip_nets = rng.choice(("192.0.2", "198.51.100", "203.0.113"), size=count)  # documentation ranges

    def moment(seconds) -> dt.datetime:
        return dt.datetime.fromtimestamp(int(min(seconds, as_of - 60)), dt.UTC)

    for channel, has_address, grant_rate, withdraw_rate, flags in (
        ("email", has_email, 0.70, 0.10, email_opt_in),
        ("sms", has_phone, 0.50, 0.08, sms_opt_in),
    ):
        granted = np.flatnonzero(has_address & (rng.random(count) < grant_rate))
        grant_at = first_seen[granted] + rng.integers(0, 3 * 3600, size=len(granted))
        methods = rng.choice(("double_opt_in", "form", "import"), size=len(granted), p=(0.6, 0.3, 0.1))
        withdraws = rng.random(len(granted)) < withdraw_rate
        withdraw_at = grant_at + ((as_of - grant_at) * rng.uniform(0.05, 0.95, len(granted))).astype(np.int64)
        complaint = rng.random(len(granted)) < (0.03 if channel == "email" else 0.0)
        for position, number in enumerate(granted):
            method = str(methods[position])
            granted_at = moment(grant_at[position])
            web = method != "import"
            events.append(_ConsentRow(
                int(number), channel, "grant", granted_at, method,
                "checkout" if method == "form" else ("newsletter sign-up" if web else "market stall list, 2023"),
                f"{ip_nets[number]}.{ip_tails[number]}" if web else None,
                USER_AGENTS[number % len(USER_AGENTS)] if web else "", "2024-03" if web else "paper-v1",
                granted_at + dt.timedelta(minutes=7) if method == "double_opt_in" else None,
            ))
            if withdraws[position] or complaint[position]:
                if channel == "sms":
                    how, source = "sms_keyword", "STOP"
                elif complaint[position]:
                    how, source = "complaint", "spam report via feedback loop"
                else:
                    how, source = "unsubscribe", "one-click unsubscribe link"
                events.append(_ConsentRow(int(number), channel, "withdraw", moment(withdraw_at[position]), how,
                                          source, None, "", "", None))
                if how in ("unsubscribe", "complaint"):
                    suppressions.append((int(number), channel, "complained" if how == "complaint" else "unsubscribed",
                                         source))
            else:
                flags[number] = True
    # Hard bounces: the address is dead whatever the consent says.
    bounced = np.flatnonzero(has_email & (rng.random(count) < 0.015))
    suppressed = {(number, channel) for number, channel, _, _ in suppressions}
    suppressions += [(int(n), "email", "bounced", "hard bounce: mailbox does not exist")
                     for n in bounced if (int(n), "email") not in suppressed]
    events.sort(key=lambda event: (event.occurred_at, event.customer))
    return _Consent(events, email_opt_in, sms_opt_in, suppressions)


def _order_rows(rng, workspace, order_customer, order_placed, baskets: Baskets, customer_ids) -> list:
    from customers.models import Order

    count = len(order_customer)
    channels = pick_weighted(rng, ORDER_CHANNELS, count)
    fate = rng.random(count)
    partial_share = rng.uniform(0.2, 0.6, count)
    orders = []
    for number, (customer, placed_at) in enumerate(zip(order_customer, _moments(order_placed))):
        total = _cents(baskets.order_total_cents[number])
        if fate[number] < 0.01:
            status, refunded = Order.Status.CANCELLED, Decimal("0")
        elif fate[number] < 0.025:
            status, refunded = Order.Status.REFUNDED, total
        elif fate[number] < 0.045:
            status, refunded = Order.Status.PARTIALLY_REFUNDED, (total * Decimal(partial_share[number])).quantize(
                Decimal("0.01"))
        else:
            status, refunded = Order.Status.PLACED, Decimal("0")
        orders.append(Order(
            tenant=workspace, customer_id=int(customer_ids[customer]), external_id=f"ORD-{100001 + number}",
            placed_at=placed_at, total=total, refunded_amount=refunded, currency=workspace.currency,
            channel=ORDER_CHANNELS[channels[number]][0], status=status,
        ))
    return orders


def _order_lines(workspace, orders, baskets: Baskets, catalogue, product_ids) -> list:
    from customers.models import Order, OrderLine

    lines = []
    returned_first_line = set()
    for order_position, product, quantity, unit_cents in zip(
        baskets.line_order, baskets.product, baskets.quantity, baskets.unit_cents
    ):
        order = orders[order_position]
        unit_price = _cents(unit_cents)
        returned = 0
        if order.status == Order.Status.REFUNDED:
            returned = int(quantity)
        elif order.status == Order.Status.PARTIALLY_REFUNDED and order_position not in returned_first_line:
            returned_first_line.add(order_position)
            returned = 1
        lines.append(OrderLine(
            tenant=workspace, order_id=order.pk, product_id=product_ids[product], sku=catalogue[product].sku,
            quantity=int(quantity), unit_price=unit_price, line_total=unit_price * int(quantity),
            returned_quantity=returned,
        ))
    return lines


STAFF_NOTES = (
    "Asked when the Panama Geisha is back in stock.",
    "Called about a grinder that stopped working; sent a replacement burr.",
    "Prefers lighter roasts; suggested the Kenya Nyeri.",
    "Runs a small office kitchen: interested in a monthly 5 kg order.",
    "Wrote a lovely review of the House Espresso.",
    "Delivery arrived damaged; refunded one bag.",
)


def _staff_notes(rng, workspace, order_customer, baskets: Baskets, customer_ids, as_of: int, author) -> list:
    """A handful of notes by the team on the best customers, so timelines show more than purchases."""
    from customers.models import Interaction

    revenue = np.bincount(order_customer, weights=baskets.order_total_cents, minlength=len(customer_ids))
    best = np.argsort(-revenue)[: max(1, len(customer_ids) // 100)]
    return [
        Interaction(
            tenant=workspace, customer_id=int(customer_ids[number]), kind=Interaction.Kind.NOTE,
            occurred_at=dt.datetime.fromtimestamp(as_of - int(rng.integers(1, 120)) * DAY, dt.UTC),
            summary=STAFF_NOTES[position % len(STAFF_NOTES)], author=author,
        )
        for position, number in enumerate(best)
    ]


def delete_workspace(workspace) -> None:
    """Delete a workspace and every row it owns, one statement per table (foreign keys are checked at commit).

    Set-based, unlike ``Workspace.delete()``, whose collector would load every order of a large workspace.
    """
    from django.apps import apps
    from django.db import connection, models

    from crm_site.models import Workspace
    from crm_site.tenancy import tenant_models, tenant_scope

    quote = connection.ops.quote_name
    with tenant_scope(workspace), connection.cursor() as cursor:
        # Only tables that exist: an app may have a model whose migration is not applied yet.
        existing = set(connection.introspection.table_names(cursor))
        owned = [model for model in tenant_models() if model._meta.db_table in existing]
        for model in owned:
            cursor.execute(f"DELETE FROM {quote(model._meta.db_table)} WHERE tenant_id = %s", [workspace.pk])
        for model in apps.get_models(include_auto_created=True):
            table = model._meta.db_table
            if model in owned or table not in existing:
                continue
            # Rows of other tables that point at the workspace or at its rows (memberships, many-to-many links).
            for fk in model._meta.concrete_fields:
                if not fk.is_relation:
                    continue
                if fk.related_model is Workspace:
                    where, params = f"{quote(fk.column)} = %s", [workspace.pk]
                elif fk.related_model in owned:
                    parent = quote(fk.related_model._meta.db_table)
                    where, params = f"{quote(fk.column)} IN (SELECT id FROM {parent} WHERE tenant_id = %s)", [
                        workspace.pk
                    ]
                else:
                    continue
                if fk.remote_field.on_delete is models.SET_NULL:
                    cursor.execute(f"UPDATE {quote(table)} SET {quote(fk.column)} = NULL WHERE {where}", params)
                else:
                    cursor.execute(f"DELETE FROM {quote(table)} WHERE {where}", params)
        cursor.execute(f"DELETE FROM {quote(Workspace._meta.db_table)} WHERE id = %s", [workspace.pk])
