"""Customer pages: the searchable list, a customer's page (orders, consent, timeline, notes), create and edit.

With htmx the list's filter form and pager swap only the results (``customers/list.html#results``) and keep the
URL in sync; without JavaScript the same URLs render the whole page.
"""

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import IntegrityError, transaction
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers

from customers import listing
from customers.forms import CustomerForm, CustomerListForm, NoteForm
from customers.models import Channel, ConsentEvent, Customer, Interaction, OrderLine

ORDERS_PER_PAGE = 10
CONSENT_EVENTS_PER_PAGE = 20
TIMELINE_PER_PAGE = 20


def is_partial_request(request) -> bool:
    """True for an htmx request that swaps a fragment (not a history restore, which needs the whole page)."""
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def _render(request, template_name, context, partial=None, status=200):
    name = f"{template_name}#{partial}" if partial and is_partial_request(request) else template_name
    response = render(request, name, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


# --- List -------------------------------------------------------------------------------------------------


def _query_string(params, **changes) -> str:
    params = params.copy()
    for name in ("after", "before"):
        params.pop(name, None)
    for name, value in changes.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = value
    return params.urlencode()


def _headers(request, result: listing.CustomerListing) -> list[dict]:
    """The table's column headers, with the link that sorts by the column (reversing it when already sorted)."""
    headers = []
    for column in result.columns:
        header = {"label": column.label, "numeric": column.numeric, "href": None, "aria_sort": None}
        sort = listing._sorts.get(column.sort) if column.sort else None
        if sort is not None:
            active = sort.key == result.sort.key
            descending = not result.descending if active else sort.descending
            header["href"] = "?" + _query_string(request.GET, sort=("-" if descending else "") + sort.key)
            if active:
                header["aria_sort"] = "descending" if result.descending else "ascending"
        headers.append(header)
    return headers


def customer_list(request, workspace_slug):
    form = CustomerListForm(request.GET or None)
    result = listing.list_customers(form.values(), after=request.GET.get("after"), before=request.GET.get("before"))
    name_sort, _ = listing.find_sort("name")
    name_descending = not result.descending if result.sort.key == "name" else False
    context = {
        "section": "customers",
        "form": form,
        "result": result,
        "headers": _headers(request, result),
        "name_sort_href": "?" + _query_string(request.GET, sort=("-" if name_descending else "") + "name"),
        "name_aria_sort": (("descending" if result.descending else "ascending") if result.sort.key == "name" else None),
        "next_query": _query_string(request.GET, after=result.page.next_token) if result.page.has_next else None,
        "previous_query": (_query_string(request.GET, before=result.page.previous_token)
                           if result.page.has_previous else None),
        "first_query": _query_string(request.GET),
        "is_filtered": any(value not in (None, "") for name, value in form.values().items() if name != "sort"),
    }
    return _render(request, "customers/list.html", context, partial="results")


# --- Detail -----------------------------------------------------------------------------------------------


def current_consent(events: list[ConsentEvent]) -> list[dict]:
    """Return, per channel and purpose, the latest consent event (the current state), e-mail and SMS first.

    ``events`` must be newest first, as the ledger is ordered.
    """
    latest = {}
    for event in events:
        latest.setdefault((event.channel, event.purpose), event)
    states = []
    for channel, channel_label in Channel.choices:
        purposes = sorted(purpose for (event_channel, purpose) in latest if event_channel == channel)
        if not purposes:
            states.append({"channel": channel_label, "purpose": "marketing", "event": None})
        for purpose in purposes:
            states.append({"channel": channel_label, "purpose": purpose, "event": latest[(channel, purpose)]})
    return states


def _detail_context(request, customer) -> dict:
    orders = (
        customer.orders.order_by("-placed_at", "-id")
        .prefetch_related(Prefetch("lines", queryset=OrderLine.objects.select_related("product").order_by("id")))
    )
    timeline = Interaction.objects.filter(customer=customer).select_related("author").order_by("-occurred_at", "-id")
    ledger = ConsentEvent.objects.filter(customer=customer).order_by("-occurred_at", "-id")
    return {
        "section": "customers",
        "customer": customer,
        "orders_page": Paginator(orders, ORDERS_PER_PAGE).get_page(request.GET.get("orders_page")),
        "timeline_page": Paginator(timeline, TIMELINE_PER_PAGE).get_page(request.GET.get("timeline_page")),
        "consent_page": Paginator(ledger, CONSENT_EVENTS_PER_PAGE).get_page(request.GET.get("consent_page")),
        "note_form": NoteForm(),
    }


def _full_detail_context(request, customer) -> dict:
    context = _detail_context(request, customer)
    # The current state needs the whole (short) ledger of one customer, so only the full page loads it.
    context["consent_state"] = current_consent(
        list(ConsentEvent.objects.filter(customer=customer).order_by("-occurred_at", "-id")[:1000])
    )
    context["panels"] = [{"panel": panel, "data": panel.context(customer)} for panel in listing.detail_panels()]
    return context


def customer_detail(request, workspace_slug, customer_id):
    customer = get_object_or_404(Customer.objects, pk=customer_id)
    part = request.GET.get("part")
    if part in ("orders", "timeline", "consent_history") and is_partial_request(request):
        return _render(request, "customers/detail.html", _detail_context(request, customer), partial=part)
    return _render(request, "customers/detail.html", _full_detail_context(request, customer))


def customer_add_note(request, workspace_slug, customer_id):
    customer = get_object_or_404(Customer.objects, pk=customer_id)
    if request.method != "POST":
        return redirect("customers:detail", workspace_slug=workspace_slug, customer_id=customer.pk)
    form = NoteForm(request.POST)
    if form.is_valid():
        form.save(customer, request.user)
        if not is_partial_request(request):
            messages.success(request, "Note added.")
            return redirect(reverse("customers:detail", args=[workspace_slug, customer.pk]) + "#timeline")
        form = NoteForm()
    if is_partial_request(request):
        # The timeline with the new note, or with the form and its error (a 200, which htmx swaps in).
        context = _detail_context(request, customer)
        context["note_form"] = form
        return _render(request, "customers/detail.html", context, partial="timeline")
    messages.error(request, "The note was not added: " + " ".join(form.errors.get("text", [])))
    context = _full_detail_context(request, customer)
    context["note_form"] = form
    return _render(request, "customers/detail.html", context)


# --- Create and edit ----------------------------------------------------------------------------------------


def _save_customer(form: CustomerForm):
    """Save a valid form; a unique-key race the form could not see becomes a form error, not a 500."""
    try:
        with transaction.atomic():
            return form.save()
    except IntegrityError:
        form.add_error(None, "Another customer of this workspace already has this e-mail address or external id.")
        return None


def customer_create(request, workspace_slug):
    form = CustomerForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        if form.is_valid() and (customer := _save_customer(form)) is not None:
            messages.success(request, f"Customer {customer} created.")
            return redirect("customers:detail", workspace_slug=workspace_slug, customer_id=customer.pk)
        messages.error(request, "The customer was not saved: please correct the fields marked below.")
    return render(request, "customers/form.html", {"section": "customers", "form": form, "customer": None})


def customer_edit(request, workspace_slug, customer_id):
    customer = get_object_or_404(Customer.objects, pk=customer_id)
    if customer.erased_at is not None:
        messages.error(request, "This customer's personal data was erased; the profile can no longer be edited.")
        return redirect("customers:detail", workspace_slug=workspace_slug, customer_id=customer.pk)
    form = CustomerForm(request.POST if request.method == "POST" else None, instance=customer)
    if request.method == "POST":
        if form.is_valid() and _save_customer(form) is not None:
            messages.success(request, "Changes saved.")
            return redirect("customers:detail", workspace_slug=workspace_slug, customer_id=customer.pk)
        messages.error(request, "The changes were not saved: please correct the fields marked below.")
    return render(request, "customers/form.html", {"section": "customers", "form": form, "customer": customer})
