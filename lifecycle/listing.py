"""What lifecycle adds to the customer list and page: stage, spend and last order, read from CustomerMetrics.

``customers`` cannot import lifecycle, so lifecycle registers its filters, sorts, columns and the customer-page
panel in the customer list registry (``customers.listing``) when the app is ready. Spend and last order come
from the denormalised, indexed metrics row, never from aggregating orders per request.
"""

import math

from django.db.models import F

from crm_site.tenancy import current_tenant_id
from customers import listing
from lifecycle.models import CustomerMetrics, LifecycleEvent, Stage

RECENT_EVENTS_SHOWN = 10
_STAGE_LABELS = dict(Stage.choices)


def with_metrics_in_scope(queryset):
    """Return ``queryset`` joined to metrics rows of the workspace in scope (so their tenant-led indexes apply)."""
    return queryset.filter(metrics__tenant_id=current_tenant_id())


def _metrics_in_scope():
    return CustomerMetrics.objects.filter(tenant_id=current_tenant_id())


# The customers a lifecycle filter shows all have a metrics row (customers never refreshed match none), and the
# row keeps a copy of the customer's first seen: sorted by first seen, the page walks a metrics index instead of
# every customer by first seen probing each one's metrics. With a stage, (tenant, stage, first_seen_at,
# customer) holds exactly the matches in order. A spend or last-order range walks (tenant, first_seen_at,
# customer) and skips the rows out of range, at most a window's worth of them: the newest customers are often
# all out of range (a last order 1-2 years ago), and then the matches, found by their range's own index, are
# sorted. The "First seen" column shows the customer's own value; a copy the write-back has not caught up with
# yet can only misplace a row, and an empty one (a row not refreshed since the copy exists) puts it last.
_FIRST_SEEN_KEY = ("metrics__first_seen_at", "metrics__customer_id")
_FIRST_SEEN_WINDOW = listing.WalkWindow(_metrics_in_scope, ("first_seen_at", "customer_id"))
BY_STAGE_SORTS = (listing.ListSort("first_seen", "First seen", _FIRST_SEEN_KEY, descending=True, nullable=True),)
BY_RANGE_SORTS = (listing.ListSort("first_seen", "First seen", _FIRST_SEEN_KEY, descending=True, nullable=True,
                                   window=_FIRST_SEEN_WINDOW),)


def _filter_stage(queryset, stage):
    return with_metrics_in_scope(queryset).filter(metrics__stage=stage)


def metrics_range(field: str, *, dates: bool = False):
    """Return the ``apply(queryset, low, high)`` of a from/to filter on the metrics row's ``field`` (both ends
    inclusive, None open); with ``dates`` the ends are days, from the start of ``low`` to the end of ``high``.
    """

    def apply(queryset, low, high):
        queryset = with_metrics_in_scope(queryset)
        if low is not None:
            queryset = queryset.filter(**{f"metrics__{field}__gte": listing.start_of_day(low) if dates else low})
        if high is not None:
            queryset = queryset.filter(**{f"metrics__{field}__lte": listing.end_of_day(high) if dates else high})
        return queryset

    return apply


def _spend_range(queryset, low, high):
    # In cents, so the range is one of the (tenant, revenue_cents, customer) index (see CustomerMetrics).
    return metrics_range("revenue_cents")(queryset, None if low is None else math.ceil(low * 100),
                                          None if high is None else math.floor(high * 100))


def _annotate_metrics(queryset):
    # The index (tenant, last_order_at, customer) carries these columns and first seen (migration 0010), so the
    # sorted matches of a last-order range come from it alone: a column read here belongs there too.
    return queryset.annotate(
        metrics_stage=F("metrics__stage"), metrics_revenue=F("metrics__revenue"),
        metrics_last_order_at=F("metrics__last_order_at"),
    )


def _stage_text(customer):
    return _STAGE_LABELS.get(customer.metrics_stage, "not computed yet") if customer.metrics_stage else "not computed yet"


def _spend_text(customer):
    return "—" if customer.metrics_revenue is None else f"{customer.metrics_revenue:,.2f}"


def _last_order_text(customer):
    return listing.format_date(customer.metrics_last_order_at) or "—"


def customer_panel_context(customer) -> dict:
    """Return the lifecycle panel's context: the customer's metrics row (None until computed) and recent events."""
    return {
        "metrics": CustomerMetrics.objects.filter(customer=customer).first(),
        "events": list(LifecycleEvent.objects.filter(customer=customer).order_by("-occurred_at", "-id")
                       [:RECENT_EVENTS_SHOWN]),
    }


def register() -> None:
    """Register lifecycle's filters, sorts, columns and panel in the customer list registry (idempotent)."""
    listing.register_choice_filter("stage", "Stage", Stage.choices, _filter_stage, order=10,
                                   sorts=BY_STAGE_SORTS)
    listing.register_range_filter("spend", "Total spend", "number", _spend_range, order=30,
                                  sorts=BY_RANGE_SORTS)
    listing.register_range_filter("last_order", "Last order", "date", metrics_range("last_order_at", dates=True),
                                  order=40, sorts=BY_RANGE_SORTS)
    # The metrics row's own customer id breaks ties, so one index on (tenant, revenue, customer) can walk it.
    listing.register_sort(listing.ListSort("spend", "Total spend", ("metrics__revenue", "metrics__customer_id"),
                                           descending=True, nullable=True, scope=with_metrics_in_scope, order=30))
    listing.register_sort(listing.ListSort("last_order", "Last order",
                                           ("metrics__last_order_at", "metrics__customer_id"),
                                           descending=True, nullable=True, scope=with_metrics_in_scope, order=40))
    listing.register_column(listing.ListColumn("stage", "Stage", _stage_text, annotate=_annotate_metrics, order=5))
    listing.register_column(listing.ListColumn("spend", "Total spend", _spend_text, annotate=_annotate_metrics,
                                               sort="spend", numeric=True, order=40))
    listing.register_column(listing.ListColumn("last_order", "Last order", _last_order_text,
                                               annotate=_annotate_metrics, sort="last_order", order=50))
    listing.register_detail_panel(listing.DetailPanel("lifecycle", "Lifecycle", "lifecycle/customer_panel.html",
                                                      customer_panel_context, order=10))
