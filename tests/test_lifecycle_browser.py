"""In a real browser: the Lifecycle page draws its charts (Chart.js from static files, data from json_script)
without tripping the CSP, clicking a bar or a point opens the customers behind it, and the Refresh button runs a
refresh on a real worker, shows its progress and reloads with the result."""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.utils import timezone

from crm_site.models import Role
from crm_site.tenancy import tenant_scope
from customers.models import Customer, Order
from lifecycle.runs import refresh_workspace
from tests.factories import MembershipFactory, UserFactory, WorkspaceFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHARTS = ("stages", "flow", "pareto", "churn", "clv")


def csp_violations(page) -> list[str]:
    return [text for text in page.console_errors if "Content Security Policy" in text]


def shop_with_histories(slug="acme"):
    """A workspace with two at-risk one-time buyers, one active repeat buyer and one prospect (orders in bulk,
    so nothing is queued), and a member who signs in."""
    acme = WorkspaceFactory(name="Acme Coffee", slug=slug)
    user = UserFactory(username="mara")
    MembershipFactory(workspace=acme, user=user, role=Role.MARKETER)
    now = timezone.now()
    with tenant_scope(acme):
        def person(name, *days_ago, total="50.00"):
            first, last = name.split()
            customer = Customer.objects.create(first_name=first, last_name=last, first_seen_at=now - dt.timedelta(400))
            Order.objects.bulk_create([Order(tenant=acme, customer=customer, external_id=f"{first}-{days}",
                                             placed_at=now - dt.timedelta(days), total=Decimal(total))
                                       for days in days_ago])

        person("Ann Risk", 100, total="75.00")
        person("Ben Risk", 200, total="40.00")
        person("Cai Active", 90, 60, 30, 5)
        person("Dee Prospect")
    return acme, user


def painted(page, chart) -> bool:
    """True when the chart's canvas has a size and something drawn on it."""
    return page.evaluate("""(name) => {
        const canvas = document.querySelector(`canvas[data-chart=${name}]`);
        if (!canvas.width || !canvas.height) return false;
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] !== 0) return true; }
        return false;
    }""", chart)


def click_element(page, chart, dataset, index):
    """Click the middle of a bar (or a point) of a chart, where a marketer would."""
    page.locator(f"canvas[data-chart={chart}]").scroll_into_view_if_needed()
    spot = page.evaluate("""([name, dataset, index]) => {
        const element = document.querySelector(`canvas[data-chart=${name}]`).chart.getDatasetMeta(dataset).data[index];
        const bottom = element.base === undefined ? element.y : (element.y + element.base) / 2;
        return {x: element.x, y: bottom};
    }""", [chart, dataset, index])
    box = page.locator(f"canvas[data-chart={chart}]").bounding_box()
    page.mouse.click(box["x"] + spot["x"], box["y"] + spot["y"])


def test_the_charts_are_drawn_and_a_bar_opens_the_customers_behind_it(page, login):
    acme, user = shop_with_histories()
    refresh_workspace(acme)

    login(user)
    page.wait_for_url("**/w/acme/")
    page.goto("/w/acme/lifecycle/")
    for chart in CHARTS:
        page.locator(f"canvas[data-chart={chart}][data-drawn=true]").wait_for()
        assert painted(page, chart), chart
    assert csp_violations(page) == []

    click_element(page, "stages", 0, 3)  # the "At risk" bar
    page.wait_for_url("**/w/acme/customers/?stage=at_risk")
    assert sorted(page.locator("#customer-table tbody td:first-child a").all_inner_texts()) == ["Ann Risk", "Ben Risk"]

    page.go_back()
    page.locator("canvas[data-chart=pareto][data-drawn=true]").wait_for()
    click_element(page, "pareto", 0, 1)  # the first point: the top third of the 3 buyers
    page.wait_for_url(re.compile(r"/w/acme/customers/\?spend_min=200\.00&sort=-spend$"))
    assert page.locator("#customer-table tbody td:first-child a").all_inner_texts() == ["Cai Active"]
    assert csp_violations(page) == []


@pytest.mark.redis
@pytest.mark.postgres
def test_the_refresh_button_shows_progress_and_reloads_with_the_result(celery_worker, page, login):
    acme, user = shop_with_histories()

    login(user)
    page.wait_for_url("**/w/acme/")
    page.goto("/w/acme/lifecycle/")
    assert page.locator("#model-status").inner_text().startswith("Not computed yet")
    assert page.locator("[data-stage=at_risk] [data-count]").inner_text() == "0"

    page.get_by_role("button", name="Refresh now").click()
    page.locator("#refresh-status .job-progress").wait_for()
    page.locator("#refresh-status .job-progress[data-state=done]").wait_for(timeout=60_000)
    page.wait_for_load_state("load")
    page.locator("[data-stage=at_risk] [data-count]").filter(has_text="2").wait_for()
    assert page.locator("#model-status").inner_text().startswith("Rule-based predictions")
    assert page.locator("[data-stage=active] [data-count]").inner_text() == "1"
    assert csp_violations(page) == []
