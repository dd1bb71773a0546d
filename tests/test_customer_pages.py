"""Customer pages: the searchable, filterable, sortable list with keyset pages, a customer's page, forms and notes."""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from crm_site.models import Role
from crm_site.tenancy import tenant_scope
from customers import listing
from customers.models import ConsentEvent, Customer, Interaction
from lifecycle.models import CustomerMetrics, LifecycleEvent
from tests.factories import CustomerFactory, OrderFactory, OrderLineFactory, ProductFactory

pytestmark = pytest.mark.django_db

NOW = timezone.now()


def list_url(workspace="acme", **params):
    from urllib.parse import urlencode

    url = reverse("customers:list", args=[workspace])
    return f"{url}?{urlencode(params)}" if params else url


def detail_url(customer, workspace="acme"):
    return reverse("customers:detail", args=[workspace, customer.pk])


def names_in(response) -> list[str]:
    """The customer names in the list table, top to bottom, as a user reads them."""
    html = response.content.decode()
    table = html[html.index('id="customer-table"'):]
    return re.findall(r'<td><a href="/w/[^"]+/customers/\d+/">([^<]+)</a>', table)


def count_text(response) -> str:
    html = response.content.decode()
    return re.search(r'id="customer-count">([^<]+)</p>', html).group(1).strip()


def link(response, rel) -> str | None:
    match = re.search(rf'rel="{rel}" href="([^"]+)"', response.content.decode())
    return match.group(1).replace("&amp;", "&") if match else None


def make_customers(workspace, specs):
    """Create customers in bulk from dicts of field values; returns them in the given order."""
    with tenant_scope(workspace):
        return Customer.objects.bulk_create([Customer(tenant=workspace, **spec) for spec in specs])


def give_metrics(workspace, customer, **values):
    with tenant_scope(workspace):
        return CustomerMetrics.objects.create(customer=customer, **values)


# --- Search ---------------------------------------------------------------------------------------------


@pytest.fixture
def shop(workspace):
    """Four customers a marketer can tell apart by name, e-mail, phone and external id."""
    return {
        customer.first_name: customer
        for customer in make_customers(workspace, [
            dict(first_name="Ann", last_name="Lindqvist", email="ann.lindqvist@example.org", phone="+4930123456",
                 external_id="SHOP-1001", email_opt_in=True),
            dict(first_name="Bo", last_name="Li", email="bo@mail.example", phone="+4640111222", external_id="SHOP-1002"),
            dict(first_name="Carla", last_name="Moreno", email="carla@example.org", phone="", external_id="X-77",
                 sms_opt_in=True),
            dict(first_name="Dev", last_name="Patel", email="dev.patel@shop.example", phone="+441632960961",
                 external_id="", email_opt_in=True, sms_opt_in=True),
        ])
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("lindq", ["Ann Lindqvist"]),           # part of a last name
        ("LINDQVIST ann", ["Ann Lindqvist"]),   # every term must match, case does not matter
        ("dev.pat", ["Dev Patel"]),             # the start of an e-mail
        ("+49 30 123 456", ["Ann Lindqvist"]),  # a phone number typed with spaces
        ("0049 301", ["Ann Lindqvist"]),        # the start of a number, with 00 for +
        ("SHOP-1002", ["Bo Li"]),               # a whole external id
        ("li", ["Bo Li", "Ann Lindqvist"]),     # a short term matches the start of a name
        ("ca", ["Carla Moreno"]),               # ... or of a first name / e-mail
        ("nobody", []),
    ],
)
def test_search_finds_customers_by_name_email_phone_and_external_id(marketer_client, shop, query, expected):
    response = marketer_client.get(list_url(q=query, sort="name"))
    assert response.status_code == 200
    assert names_in(response) == expected


def test_search_treats_like_wildcards_literally(marketer_client, shop):
    response = marketer_client.get(list_url(q="%_%"))
    assert names_in(response) == []
    assert "No customers match" in response.content.decode()


def test_list_filters_by_consent(marketer_client, shop):
    response = marketer_client.get(list_url(email_consent="yes", sort="name"))
    assert names_in(response) == ["Ann Lindqvist", "Dev Patel"]
    response = marketer_client.get(list_url(email_consent="yes", sms_consent="yes"))
    assert names_in(response) == ["Dev Patel"]
    response = marketer_client.get(list_url(email_consent="no", sort="name"))
    assert names_in(response) == ["Bo Li", "Carla Moreno"]
    assert count_text(response).startswith("2 customers match")


def test_list_filters_by_stage_spend_and_last_order_from_lifecycle_metrics(marketer_client, workspace, shop):
    give_metrics(workspace, shop["Ann"], stage="active", revenue=Decimal("420.00"),
                 last_order_at=NOW - dt.timedelta(days=3))
    give_metrics(workspace, shop["Bo"], stage="at_risk", revenue=Decimal("80.00"),
                 last_order_at=NOW - dt.timedelta(days=95))
    give_metrics(workspace, shop["Carla"], stage="prospect", revenue=Decimal("0"))

    assert names_in(marketer_client.get(list_url(stage="at_risk"))) == ["Bo Li"]
    assert names_in(marketer_client.get(list_url(spend_min="100"))) == ["Ann Lindqvist"]
    assert names_in(marketer_client.get(list_url(spend_min="50", spend_max="100"))) == ["Bo Li"]
    since = (NOW - dt.timedelta(days=30)).date().isoformat()
    assert names_in(marketer_client.get(list_url(last_order_min=since))) == ["Ann Lindqvist"]
    before = (NOW - dt.timedelta(days=30)).date().isoformat()
    assert names_in(marketer_client.get(list_url(last_order_max=before))) == ["Bo Li"]


def test_a_bad_filter_value_is_reported_and_ignored_not_a_500(marketer_client, shop):
    response = marketer_client.get(list_url(spend_min="lots", last_order_min="31/02/2024", stage="royalty",
                                            sort="name"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Ignored:" in body and "Total spend from" in body and "Stage" in body
    assert names_in(response) == ["Bo Li", "Ann Lindqvist", "Carla Moreno", "Dev Patel"]


def test_list_shows_the_stage_and_spend_columns_or_not_computed_yet(marketer_client, workspace, shop):
    give_metrics(workspace, shop["Ann"], stage="at_risk", revenue=Decimal("1234.50"))
    body = marketer_client.get(list_url(q="lindqvist")).content.decode()
    assert "At risk" in body and "1,234.50" in body
    body = marketer_client.get(list_url(q="moreno")).content.decode()
    assert "not computed yet" in body


# --- Sorting --------------------------------------------------------------------------------------------


def test_sort_by_name_and_reverse_it_from_the_column_header(marketer_client, shop):
    response = marketer_client.get(list_url(sort="name"))
    assert names_in(response) == ["Bo Li", "Ann Lindqvist", "Carla Moreno", "Dev Patel"]
    # The header link of the active column reverses the order.
    reverse_link = re.search(r'href="(\?[^"]*sort=-name[^"]*)"', response.content.decode()).group(1)
    response = marketer_client.get(list_url() + reverse_link.replace("&amp;", "&"))
    assert names_in(response) == ["Dev Patel", "Carla Moreno", "Ann Lindqvist", "Bo Li"]


def test_default_order_is_newest_first_seen(marketer_client, workspace):
    make_customers(workspace, [
        dict(first_name="Old", last_name="Timer", first_seen_at=NOW - dt.timedelta(days=400)),
        dict(first_name="New", last_name="Comer", first_seen_at=NOW - dt.timedelta(days=1)),
    ])
    assert names_in(marketer_client.get(list_url())) == ["New Comer", "Old Timer"]
    assert names_in(marketer_client.get(list_url(sort="first_seen"))) == ["Old Timer", "New Comer"]


def test_sort_by_spend_puts_customers_without_metrics_last(marketer_client, workspace, shop):
    give_metrics(workspace, shop["Carla"], revenue=Decimal("10"), last_order_at=NOW - dt.timedelta(days=50))
    give_metrics(workspace, shop["Ann"], revenue=Decimal("900"), last_order_at=NOW - dt.timedelta(days=200))
    give_metrics(workspace, shop["Bo"], revenue=Decimal("50"), last_order_at=None)
    names = names_in(marketer_client.get(list_url(sort="-spend")))
    assert names == ["Ann Lindqvist", "Bo Li", "Carla Moreno", "Dev Patel"]
    names = names_in(marketer_client.get(list_url(sort="spend")))
    assert names[:3] == ["Carla Moreno", "Bo Li", "Ann Lindqvist"] and names[3] == "Dev Patel"
    names = names_in(marketer_client.get(list_url(sort="-last_order")))
    assert names[:2] == ["Carla Moreno", "Ann Lindqvist"]
    assert sorted(names[2:]) == ["Bo Li", "Dev Patel"]  # no last order: after everyone who has one


# --- Keyset pages ---------------------------------------------------------------------------------------


def walk_pages(client, **params):
    """Follow "Next" from the first page to the last; return the names per page and the last response."""
    pages = []
    response = client.get(list_url(**params))
    while True:
        pages.append(names_in(response))
        next_href = link(response, "next")
        if next_href is None:
            return pages, response
        response = client.get(list_url() + next_href)


@pytest.mark.parametrize("sort", ["name", "-name", "-first_seen", "first_seen", "-spend", "spend", "-last_order"])
def test_next_and_previous_pages_show_every_customer_once_in_order(marketer_client, workspace, monkeypatch, sort):
    monkeypatch.setattr(listing, "PAGE_SIZE", 4)
    customers = make_customers(workspace, [
        dict(first_name=f"P{n:02d}", last_name=["Smith", "Jones", "Smith", "Brown"][n % 4],
             first_seen_at=NOW - dt.timedelta(days=n % 5))  # ties, so the id must break them
        for n in range(15)
    ])
    for n, customer in enumerate(customers[:9]):  # some with metrics (ties in spend too), some without
        give_metrics(workspace, customer, revenue=Decimal(n % 3 * 10),
                     last_order_at=None if n % 4 == 0 else NOW - dt.timedelta(days=n % 3))

    pages, last = walk_pages(marketer_client, sort=sort)
    assert [len(page) for page in pages] == [4, 4, 4, 3]
    seen = [name for page in pages for name in page]
    assert sorted(seen) == sorted(str(customer) for customer in customers)
    one_page = listing.PAGE_SIZE
    monkeypatch.setattr(listing, "PAGE_SIZE", 100)
    assert seen == names_in(marketer_client.get(list_url(sort=sort)))
    monkeypatch.setattr(listing, "PAGE_SIZE", one_page)

    # Walking back with "Previous" shows the same pages in reverse.
    back = [names_in(last)]
    response = last
    while (previous_href := link(response, "prev")) is not None:
        response = marketer_client.get(list_url() + previous_href)
        back.append(names_in(response))
    assert back == list(reversed(pages))


def test_a_tampered_or_foreign_page_token_shows_the_first_page(marketer_client, workspace, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_SIZE", 2)
    make_customers(workspace, [dict(first_name=f"T{n}", last_name="Doe") for n in range(5)])
    first = names_in(marketer_client.get(list_url(sort="name")))
    for token in ["garbage", "eyJzIjoibmFtZSJ9", "%%%", "eyJzIjoibmFtZSIsImQiOjAsImciOjAsImsiOlsxLDIsM119"]:
        response = marketer_client.get(list_url(sort="name", after=token))
        assert response.status_code == 200
        assert names_in(response) == first
    # A token made for another order does not apply to this one.
    next_href = link(marketer_client.get(list_url(sort="name")), "next")
    token = re.search(r"after=([^&]+)", next_href).group(1)
    assert names_in(marketer_client.get(list_url(sort="-first_seen", after=token))) == names_in(
        marketer_client.get(list_url(sort="-first_seen")))


def test_count_is_exact_up_to_the_cap_then_an_estimate(marketer_client, workspace, monkeypatch):
    make_customers(workspace, [dict(first_name=f"C{n}", last_name="Count") for n in range(12)])
    assert count_text(marketer_client.get(list_url())).startswith("12 customers")
    monkeypatch.setattr(listing, "EXACT_COUNT_CAP", 10)
    text = count_text(marketer_client.get(list_url()))
    assert text.startswith(("about ", "more than 10 ")), text


def test_round_estimate_keeps_two_significant_digits():
    assert listing.round_estimate(987_654) == 990_000
    assert listing.round_estimate(12_345) == 12_000
    assert listing.round_estimate(42) == 42


# --- htmx -----------------------------------------------------------------------------------------------


def test_htmx_filter_request_gets_only_the_results_fragment(marketer_client, shop):
    response = marketer_client.get(list_url(q="moreno"), headers={"HX-Request": "true"})
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<div id="customer-results">')
    assert "<html" not in body and 'id="customer-filters"' not in body
    assert names_in(response) == ["Carla Moreno"]
    assert "HX-Request" in response["Vary"]
    # The same URL without htmx (a reload, a shared link, no JavaScript) is the whole page.
    full = marketer_client.get(list_url(q="moreno"))
    assert "<html" in full.content.decode() and names_in(full) == ["Carla Moreno"]
    # A history restore needs the whole page too.
    restore = marketer_client.get(list_url(q="moreno"), headers={"HX-Request": "true",
                                                                 "HX-History-Restore-Request": "true"})
    assert "<html" in restore.content.decode()


def test_filter_form_keeps_the_url_in_sync_and_works_without_javascript(marketer_client, shop):
    body = marketer_client.get(list_url()).content.decode()
    form = re.search(r'<form method="get"[^>]*id="customer-filters"[^>]*>', body, re.S).group(0)
    assert 'hx-push-url="true"' in form and 'hx-target="#customer-results"' in form
    assert 'action="/w/acme/customers/"' in form


# --- Query counts (no N+1) ------------------------------------------------------------------------------


def test_list_page_query_count_does_not_grow_with_the_rows(marketer_client, workspace, django_assert_max_num_queries):
    customers = make_customers(workspace, [dict(first_name=f"Q{n}", last_name="Many") for n in range(60)])
    for customer in customers[:30]:
        give_metrics(workspace, customer, revenue=Decimal("5"), stage="active")
    marketer_client.get(list_url())  # warm the session
    # About 11 are the request's own (session, user, membership, tenant scope); the list adds a count and
    # one query per page (two where customers with a spend end and those without begin).
    with django_assert_max_num_queries(15):
        response = marketer_client.get(list_url(sort="-spend", stage="active"))
    assert len(names_in(response)) == 30
    with django_assert_max_num_queries(15):
        response = marketer_client.get(list_url(sort="-spend"))
    assert len(names_in(response)) == 50


def test_detail_page_query_count_does_not_grow_with_orders_and_lines(marketer_client, workspace,
                                                                    django_assert_max_num_queries):
    customer = CustomerFactory(tenant=workspace, first_name="Ivy", last_name="Orders")
    product = ProductFactory(tenant=workspace, name="Beans")
    for n in range(12):
        order = OrderFactory(tenant=workspace, customer=customer, placed_at=NOW - dt.timedelta(days=n))
        for _ in range(3):
            OrderLineFactory(tenant=workspace, order=order, product=product, sku=product.sku)
    with tenant_scope(workspace):
        for n in range(25):
            Interaction.objects.create(customer=customer, kind="purchase", summary=f"Bought #{n}")
        for n in range(4):
            ConsentEvent.objects.create(customer=customer, channel="email", action="grant" if n % 2 else "withdraw",
                                        method="form", occurred_at=NOW - dt.timedelta(days=10 - n))
    marketer_client.get(detail_url(customer))
    # The request's own ~11, then the customer, orders (count, page, lines), timeline (count, page), consent
    # (count, page, current state) and the lifecycle panel (metrics, events): never one per order or line.
    with django_assert_max_num_queries(24):
        response = marketer_client.get(detail_url(customer))
    body = response.content.decode()
    assert body.count("Beans") == 30  # 10 orders on the first page, 3 lines each
    assert "12 orders" in body


# --- Customer page -------------------------------------------------------------------------------------


def test_customer_page_shows_profile_orders_with_lines_consent_and_timeline(marketer_client, workspace):
    customer = CustomerFactory(tenant=workspace, first_name="Lena", last_name="Berg", email="lena@example.org",
                               phone="+4930999888", attributes={"favourite_roast": "dark"})
    product = ProductFactory(tenant=workspace, name="Ethiopia Yirgacheffe", sku="ETH-250")
    order = OrderFactory(tenant=workspace, customer=customer, external_id="ORD-9", total=Decimal("31.80"),
                         refunded_amount=Decimal("15.90"), status="partially_refunded")
    OrderLineFactory(tenant=workspace, order=order, product=product, sku="ETH-250", quantity=2,
                     unit_price=Decimal("15.90"), line_total=Decimal("31.80"), returned_quantity=1)
    with tenant_scope(workspace):
        ConsentEvent.objects.create(customer=customer, channel="email", action="grant", method="double_opt_in",
                                    occurred_at=NOW - dt.timedelta(days=20), confirmed_at=NOW - dt.timedelta(days=20),
                                    source="footer form", wording_version="v3", ip_address="203.0.113.9")
        ConsentEvent.objects.create(customer=customer, channel="email", action="withdraw", method="unsubscribe",
                                    occurred_at=NOW - dt.timedelta(days=2))
        Interaction.objects.create(customer=customer, kind="click", summary="Clicked 'Autumn roasts'")

    body = marketer_client.get(detail_url(customer)).content.decode()
    for text in ["Lena Berg", "lena@example.org", "+4930999888", "favourite_roast", "dark",
                 "ORD-9", "Partially refunded", "Ethiopia Yirgacheffe", "1 returned", "15.90",
                 "Clicked &#x27;Autumn roasts&#x27;", "footer form", "v3", "203.0.113.9", "double_opt_in"]:
        assert text in body, text
    consent = body[body.index('id="consent"'):body.index('id="consent"') + 1500]
    assert "Withdrawn" in consent and "unsubscribe" in consent  # the latest event is the current state
    assert "No consent recorded" in consent  # SMS


def test_lifecycle_panel_says_not_computed_yet_then_shows_metrics_and_reasons(marketer_client, workspace):
    customer = CustomerFactory(tenant=workspace)
    body = marketer_client.get(detail_url(customer)).content.decode()
    assert "not computed yet" in body
    give_metrics(workspace, customer, stage="at_risk", revenue=Decimal("310.00"), order_count=7, p_alive=0.21,
                 usual_gap_days=30, days_since_last_order=94,
                 reason="last order 94 days ago; usual gap 30 days; P(alive) 0.21")
    with tenant_scope(workspace):
        LifecycleEvent.objects.create(customer=customer, kind="stage", from_value="active", to_value="at_risk",
                                      reason="last order 94 days ago; usual gap 30 days")
    body = marketer_client.get(detail_url(customer)).content.decode()
    assert "At risk" in body and "310.00" in body and "0.21" in body
    assert "last order 94 days ago; usual gap 30 days; P(alive) 0.21" in body
    assert "active → at_risk" in body
    assert "not computed yet" not in body


def test_orders_and_timeline_are_paginated_in_place(marketer_client, workspace):
    customer = CustomerFactory(tenant=workspace)
    with tenant_scope(workspace):
        Interaction.objects.bulk_create([
            Interaction(tenant=workspace, customer=customer, kind="open", summary=f"Opened mail {n:02d}",
                        occurred_at=NOW - dt.timedelta(hours=n))
            for n in range(30)
        ])
    body = marketer_client.get(detail_url(customer)).content.decode()
    assert "Opened mail 00" in body and "Opened mail 25" not in body
    fragment = marketer_client.get(detail_url(customer) + "?part=timeline&timeline_page=2",
                                   headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<section class="mb-4" id="timeline"')
    assert "Opened mail 25" in fragment and "Opened mail 00" not in fragment
    # Without JavaScript the link reloads the page at that page of the timeline.
    assert "Opened mail 25" in marketer_client.get(detail_url(customer) + "?timeline_page=2").content.decode()


def test_adding_a_note_puts_it_on_the_timeline_with_its_author(marketer_client, workspace):
    customer = CustomerFactory(tenant=workspace)
    url = reverse("customers:add_note", args=["acme", customer.pk])
    response = marketer_client.post(url, {"text": "Prefers decaf.\nCall after 5pm."}, follow=True)
    body = response.content.decode()
    assert "Note added." in body and "Prefers decaf.<br>Call after 5pm." in body
    assert f"by {marketer_client.user.username}" in body
    with tenant_scope(workspace):
        note = Interaction.objects.get(customer=customer, kind="note")
    assert note.author == marketer_client.user


def test_adding_a_note_with_htmx_returns_the_updated_timeline(marketer_client, workspace):
    customer = CustomerFactory(tenant=workspace)
    url = reverse("customers:add_note", args=["acme", customer.pk])
    fragment = marketer_client.post(url, {"text": "Asked for a refund"}, headers={"HX-Request": "true"})
    body = fragment.content.decode()
    assert body.lstrip().startswith('<section class="mb-4" id="timeline"') and "Asked for a refund" in body
    empty = marketer_client.post(url, {"text": "   "}, headers={"HX-Request": "true"}).content.decode()
    assert "Write the note first." in empty
    with tenant_scope(workspace):
        assert Interaction.objects.filter(kind="note").count() == 1


def test_an_empty_note_without_htmx_re_renders_the_page_with_a_message(marketer_client, workspace):
    customer = CustomerFactory(tenant=workspace)
    response = marketer_client.post(reverse("customers:add_note", args=["acme", customer.pk]), {"text": ""})
    assert response.status_code == 200
    assert "The note was not added" in response.content.decode()


# --- Create and edit -----------------------------------------------------------------------------------


def test_create_a_customer_normalises_email_and_phone(marketer_client, workspace):
    response = marketer_client.post(reverse("customers:create", args=["acme"]), {
        "first_name": "Mia", "last_name": "Koch", "email": "  Mia.Koch@Example.ORG ", "phone": "+49 (30) 1234-5678",
        "external_id": "C-1", "time_zone": "Europe/Berlin", "locale": "de-DE",
    }, follow=True)
    assert "Customer Mia Koch created." in response.content.decode()
    with tenant_scope(workspace):
        customer = Customer.objects.get(external_id="C-1")
    assert customer.email == "mia.koch@example.org"
    assert customer.phone == "+493012345678"
    assert customer.tenant_id == workspace.pk


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("email", "not-an-address", "valid email address"),
        ("phone", "+1 23", "phone number"),
        ("phone", "030 1234567", "no country code"),
        ("time_zone", "Mars/Olympus", "Unknown time zone"),
        ("locale", "german please", "language tag"),
    ],
)
def test_create_with_bad_input_re_renders_the_form_with_messages(marketer_client, workspace, field, value, message):
    data = {"first_name": "Bad", "last_name": "Input", "email": "bad@example.org", field: value}
    response = marketer_client.post(reverse("customers:create", args=["acme"]), data)
    assert response.status_code == 200
    body = response.content.decode()
    assert "The customer was not saved" in body and message in body
    assert 'value="Bad"' in body  # what was typed is kept
    with tenant_scope(workspace):
        assert not Customer.objects.exists()


def test_an_empty_customer_is_refused(marketer_client, workspace):
    response = marketer_client.post(reverse("customers:create", args=["acme"]), {})
    assert "Give at least a name, an e-mail address" in response.content.decode()


def test_duplicate_email_or_external_id_is_a_form_error_not_a_500(marketer_client, workspace, other_workspace):
    CustomerFactory(tenant=workspace, email="taken@example.org", external_id="EXT-1")
    CustomerFactory(tenant=other_workspace, email="elsewhere@example.org")
    url = reverse("customers:create", args=["acme"])
    response = marketer_client.post(url, {"first_name": "Dup", "email": "TAKEN@example.org"})
    assert response.status_code == 200
    assert "already has this e-mail address" in response.content.decode()
    response = marketer_client.post(url, {"first_name": "Dup", "external_id": "EXT-1"})
    assert "already has this external id" in response.content.decode()
    # Another workspace's customer does not count.
    response = marketer_client.post(url, {"first_name": "Fine", "email": "elsewhere@example.org"})
    assert response.status_code == 302


def test_edit_a_customer_keeps_their_own_email_and_saves_changes(marketer_client, workspace):
    customer = CustomerFactory(tenant=workspace, first_name="Old", email="same@example.org")
    url = reverse("customers:edit", args=["acme", customer.pk])
    assert 'value="same@example.org"' in marketer_client.get(url).content.decode()
    response = marketer_client.post(url, {"first_name": "New", "email": "same@example.org"}, follow=True)
    assert "Changes saved." in response.content.decode()
    assert "New" in response.content.decode()
    with tenant_scope(workspace):
        assert Customer.objects.get(pk=customer.pk).first_name == "New"


def test_an_erased_customer_cannot_be_edited(marketer_client, workspace):
    customer = CustomerFactory(tenant=workspace, erased_at=NOW)
    response = marketer_client.get(reverse("customers:edit", args=["acme", customer.pk]), follow=True)
    assert "can no longer be edited" in response.content.decode()


# --- Roles and workspaces -------------------------------------------------------------------------------


def test_viewer_sees_no_edit_buttons_and_cannot_write(member_client, workspace):
    client = member_client(Role.VIEWER)
    customer = CustomerFactory(tenant=workspace)
    assert 'id="new-customer"' not in client.get(list_url()).content.decode()
    body = client.get(detail_url(customer)).content.decode()
    assert 'id="edit-customer"' not in body and 'id="note-form"' not in body
    assert client.post(reverse("customers:create", args=["acme"]), {"first_name": "X"}).status_code == 403
    assert client.post(reverse("customers:edit", args=["acme", customer.pk]), {"first_name": "X"}).status_code == 403
    assert client.post(reverse("customers:add_note", args=["acme", customer.pk]), {"text": "x"}).status_code == 403


def test_marketer_sees_the_edit_buttons(marketer_client, workspace):
    customer = CustomerFactory(tenant=workspace)
    assert 'id="new-customer"' in marketer_client.get(list_url()).content.decode()
    body = marketer_client.get(detail_url(customer)).content.decode()
    assert 'id="edit-customer"' in body and 'id="note-form"' in body


@pytest.mark.parametrize("url_name", ["customers:detail", "customers:edit", "customers:add_note"])
def test_another_workspaces_customer_is_a_404(marketer_client, other_workspace, url_name):
    foreign = CustomerFactory(tenant=other_workspace)
    url = reverse(url_name, args=["acme", foreign.pk])
    assert marketer_client.get(url).status_code == 404
    assert marketer_client.post(url, {"first_name": "Hijack", "text": "x"}).status_code == 404


def test_the_list_never_shows_another_workspaces_customers(marketer_client, workspace, other_workspace):
    CustomerFactory(tenant=workspace, first_name="Mine", last_name="Own")
    CustomerFactory(tenant=other_workspace, first_name="Their", last_name="Own")
    assert names_in(marketer_client.get(list_url(q="own"))) == ["Mine Own"]


# --- The SQL stays index-friendly on PostgreSQL -----------------------------------------------------------


def _plan(queryset, *settings) -> str:
    with connection.cursor() as cursor:
        for setting in settings:
            cursor.execute(f"SET LOCAL {setting} = off")
    return queryset.explain()


@pytest.mark.postgres
def test_search_and_pages_use_their_indexes(workspace):
    make_customers(workspace, [dict(first_name=f"First{n}", last_name=f"Last{n % 97}", email=f"c{n}@example.org",
                                    first_seen_at=NOW - dt.timedelta(minutes=n)) for n in range(3000)])
    make_customers(workspace, [dict(first_name="Zoe", last_name="Quark", email="zq@example.org")])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE customers_customer")
    with tenant_scope(workspace):
        base = Customer.objects.all()
        # Row-level security lets only leakproof operators into an index scan: the prefix search must be one.
        plan = _plan(listing.search_customers(base, "qua"))
        assert "customer_last_name_prefix" in plan and "customer_email_prefix" in plan, plan
        assert "Seq Scan" not in plan, plan
        plan = _plan(listing.search_customers(base, "+4930"))
        assert "customer_phone_prefix" in plan, plan
    with tenant_scope(workspace):
        # A deep page seeks into the (tenant, first_seen_at, id) index: no sort, no offset.
        sort, descending = listing.find_sort("-first_seen")
        segment = listing._segments(Customer.objects.all(), sort)[0]
        page = listing.fetch_page(Customer.objects.all(), sort, descending, size=1000)
        after = listing._row_values(page.rows[-1], segment)
        plan = _plan(listing._after(listing._keyed(segment, descending), segment, after, descending)[:50])
        assert "customer_first_seen_order" in plan and "Sort" not in plan, plan
        assert "Index Cond: ((tenant_id = " in plan and "ROW(first_seen_at, id) <" in plan, plan
