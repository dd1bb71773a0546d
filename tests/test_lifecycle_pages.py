"""The Lifecycle page, the Dashboard's lifecycle numbers and the lifecycle settings, on hand-built histories.

Histories are real orders (or, for the month-by-month charts, hand-built runs and transition events) refreshed
as of now; every number on the page is checked against what the history implies, and every link is followed
to the customer list to count the customers behind it.
"""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from crm_site.models import BackgroundJob, Role
from crm_site.tenancy import tenant_scope
from lifecycle.models import CustomerMetrics, LifecycleEvent, LifecyclePolicy, LifecycleRun
from lifecycle.runs import refresh_workspace
from tests.factories import CustomerFactory, OrderFactory

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)


def lifecycle_url(workspace):
    return reverse("lifecycle:index", args=[workspace.slug])


def settings_url(workspace):
    return reverse("lifecycle:settings", args=[workspace.slug])


def customer(workspace, signed_up_days_ago=400, **fields):
    return CustomerFactory(tenant=workspace, first_seen_at=timezone.now() - signed_up_days_ago * DAY, **fields)


def buy(person, days_ago=None, total="50.00", at=None):
    placed_at = at if at is not None else timezone.now() - days_ago * DAY
    return OrderFactory(tenant=person.tenant, customer=person, placed_at=placed_at, total=Decimal(total))


def history(workspace, *days_ago, total="50.00", **fields):
    person = customer(workspace, **fields)
    for days in days_ago:
        buy(person, days, total=total)
    return person


def html_of(response) -> str:
    assert response.status_code == 200
    return response.content.decode()


def metric(html, name) -> str:
    """The number a card shows, e.g. metric(html, "top20-share") == "80.0%"."""
    match = re.search(rf'data-metric="{name}">\s*<div class="card-body"><div[^>]*>[^<]*</div><div class="fs-\d">([^<]+)<',
                      html)
    return match.group(1).strip()


def metric_link(html, name) -> str:
    return re.search(rf'href="([^"]+)" data-metric="{name}"', html).group(1).replace("&amp;", "&")


def stage_card(html, stage) -> tuple[str, str]:
    """The (link, count) of a stage card."""
    match = re.search(rf'href="([^"]+)" data-stage="{stage}">\s*<div class="card-body"><div[^>]*>[^<]*</div>'
                      rf'<div class="fs-\d" data-count>([^<]+)<', html)
    return match.group(1).replace("&amp;", "&"), match.group(2)


def customers_behind(client, url) -> list[str]:
    """Follow a chart's link to the customer list; return the names in its table."""
    html = html_of(client.get(url))
    table = html[html.index('id="customer-table"'):]
    return re.findall(r'<td><a href="/w/[^"]+/customers/\d+/">([^<]+)</a>', table)


def named(workspace, name, *days_ago, total="50.00", **fields):
    first, last = name.split()
    return history(workspace, *days_ago, total=total, first_name=first, last_name=last, **fields)


# --- Before the first refresh -------------------------------------------------------------------------


def test_before_the_first_refresh_the_page_says_not_computed_yet(marketer_client, workspace):
    customer(workspace)
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    assert "Not computed yet: run a refresh to compute stages and metrics." in html
    assert stage_card(html, "prospect")[1] == "0"
    assert metric(html, "top20-share") == "0.0%"
    assert 'id="lifecycle-charts" type="application/json"' in html


# --- Stage counts and at-risk revenue -----------------------------------------------------------------


@pytest.fixture
def stages_shop(workspace):
    """Two at-risk one-time buyers (75 and 40 in the last 12 months), one active, one prospect, one lapsed."""
    shop = {
        "at_risk": [named(workspace, "Ann Risk", 100, total="75.00"), named(workspace, "Ben Risk", 200, total="40.00")],
        "active": [named(workspace, "Cai Active", 90, 60, 30, 5)],
        "prospect": [named(workspace, "Dee Prospect")],
        "lapsed": [named(workspace, "Eve Lapsed", 400, total="900.00")],
    }
    refresh_workspace(workspace)
    return shop


def test_stage_cards_count_each_stage_and_link_to_its_customers(marketer_client, workspace, stages_shop):
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    expected = {"prospect": ["Dee Prospect"], "onboarding": [], "active": ["Cai Active"],
                "at_risk": ["Ann Risk", "Ben Risk"], "lapsed": ["Eve Lapsed"]}
    for stage, names in expected.items():
        url, count = stage_card(html, stage)
        assert count == str(len(names)), stage
        assert sorted(customers_behind(marketer_client, url)) == names, stage


def test_at_risk_revenue_is_the_12_month_revenue_of_at_risk_customers(marketer_client, workspace, stages_shop):
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    assert metric(html, "at-risk-revenue") == "115.00"  # 75 + 40; the lapsed 900 is older than 12 months
    url = metric_link(html, "at-risk-revenue")
    assert customers_behind(marketer_client, url) == ["Ann Risk", "Ben Risk"]  # biggest spender first


def test_flags_link_to_their_customers(marketer_client, workspace):
    with tenant_scope(workspace):
        LifecyclePolicy.objects.create(reward_rules=[{"key": "third", "kind": "nth_order", "n": 3}])
    named(workspace, "Rae Reward", 60, 40, 20, total="10.00")
    named(workspace, "Hal Heavy", 5, total="990.00")
    refresh_workspace(workspace)
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    assert metric(html, "heavy-users") == "1"
    assert customers_behind(marketer_client, metric_link(html, "heavy-users")) == ["Hal Heavy"]
    assert metric(html, "reward-due") == "1"
    assert customers_behind(marketer_client, metric_link(html, "reward-due")) == ["Rae Reward"]


# --- Revenue concentration and CLV ----------------------------------------------------------------------


def test_top_20_percent_share_of_revenue_and_its_customers(marketer_client, workspace):
    named(workspace, "Ada Top", 10, total="400.00")
    named(workspace, "Bea Top", 12, total="400.00")
    for number in range(8):
        named(workspace, f"Small Buyer{number}", 11, total="25.00")
    customer(workspace)  # no purchase: not part of the curve
    refresh_workspace(workspace)
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    assert metric(html, "top20-share") == "80.0%"  # 800 of 1,000
    assert "The top 20% of the 10 buying customers bring" in html
    assert sorted(customers_behind(marketer_client, metric_link(html, "top20-share"))) == ["Ada Top", "Bea Top"]


def test_top_20_percent_share_is_read_off_the_curve_when_customers_do_not_split_evenly(marketer_client, workspace):
    for total in ("600.00", "200.00", "100.00", "100.00"):  # top 20% of 4 customers = 0.8 of the first
        history(workspace, 10, total=total)
    refresh_workspace(workspace)
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    assert metric(html, "top20-share") == "48.0%"  # 0.8 × 600 of 1,000


def test_clv_histogram_counts_buyers_per_bin_and_links_to_them(marketer_client, workspace):
    for number in range(3):
        named(workspace, f"Mid Value{number}", 20, total="30.00")
    named(workspace, "Big Value", 20, total="120.00")
    customer(workspace)  # prospects have no predicted value
    refresh_workspace(workspace)
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    table = html[html.index('id="clv-table"'):]
    rows = dict((label, count) for _, label, count in
                re.findall(r'<tr><td><a href="([^"]+)">([^<]+)</a></td><td class="table-numeric">([^<]+)</td></tr>',
                           table[:table.index("</table>")]))
    assert rows["25–50"] == "3" and rows["100–250"] == "1" and rows["0–10"] == "0"
    link = re.search(r'<a href="([^"]+)">25–50</a>', table).group(1).replace("&amp;", "&")
    assert sorted(customers_behind(marketer_client, link)) == ["Mid Value0", "Mid Value1", "Mid Value2"]


# --- Month by month: cohorts, flow and churn -------------------------------------------------------------


def month_start(months_back: int) -> dt.datetime:
    """The first instant (UTC) of the month ``months_back`` months before this one."""
    today = timezone.now()
    year, month = today.year, today.month - months_back
    while month < 1:
        year, month = year - 1, month + 12
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


def test_retention_cohort_cells_are_the_share_of_the_cohort_ordering_each_month(marketer_client, workspace):
    cohort = month_start(3)
    a, b, c, d = (named(workspace, f"Cohort Member{n}") for n in "ABCD")
    for person in (a, b, c, d):
        buy(person, at=cohort + 9 * DAY)
    buy(a, at=month_start(2) + 9 * DAY)  # a and b come back the next month, a once more the month after
    buy(b, at=month_start(2) + 12 * DAY)
    buy(b, at=month_start(2) + 13 * DAY)  # twice in a month is one customer ordering
    buy(a, at=month_start(1) + 9 * DAY)
    later = named(workspace, "Later Joiner")
    buy(later, at=month_start(1) + 2 * DAY)
    refresh_workspace(workspace)

    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    row = re.search(rf'<tr data-cohort="{cohort:%Y-%m}">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r'<td class="table-numeric">(\d+)</td>', row).group(1) == "4"
    cells = re.findall(r'<td(?: class="([^"]*)")? data-offset="(\d+)">([^<]*)</td>', row)
    assert [share for _, _, share in cells] == ["100%", "50%", "25%", "0%"]  # the current month ends the row
    assert cells[0][0] == "bg-success bg-opacity-100 text-white" and cells[3][0] == ""
    link = re.search(r'<a href="([^"]+)">' + f"{cohort:%Y-%m}", row).group(1).replace("&amp;", "&")
    assert len(customers_behind(marketer_client, link)) == 4
    joiner_row = re.search(rf'<tr data-cohort="{month_start(1):%Y-%m}">(.*?)</tr>', html, re.S).group(1)
    assert re.findall(r'data-offset="\d+">([^<]*)</td>', joiner_row) == ["100%", "0%"]


def test_cohorts_are_months_of_the_workspace_zone_and_their_links_agree(marketer_client, workspace):
    workspace.time_zone = "America/Los_Angeles"
    workspace.save()
    # 03:00 UTC on the 1st is still the evening of the previous month in Los Angeles.
    person = named(workspace, "Late Evening")
    buy(person, at=month_start(2) + dt.timedelta(hours=3))
    refresh_workspace(workspace)
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    previous = re.search(rf'<tr data-cohort="{month_start(3):%Y-%m}">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r'<td class="table-numeric">(\d+)</td>', previous).group(1) == "1"
    link = re.search(r'<a href="([^"]+)">', previous).group(1).replace("&amp;", "&")
    assert customers_behind(marketer_client, link) == ["Late Evening"]
    following = re.search(rf'<tr data-cohort="{month_start(2):%Y-%m}">(.*?)</tr>', html, re.S).group(1)
    link = re.search(r'<a href="([^"]+)">', following).group(1).replace("&amp;", "&")
    assert customers_behind(marketer_client, link) == []


def stage_event(workspace, person, to_value, at, from_value="at_risk"):
    with tenant_scope(workspace):
        LifecycleEvent.objects.create(customer=person, kind="stage", from_value=from_value, to_value=to_value,
                                      reason="hand-built", occurred_at=at)


def run_at(workspace, at, **stage_counts):
    with tenant_scope(workspace):
        LifecycleRun.objects.create(started_at=at, finished_at=at, stage_counts=stage_counts)


def test_churn_rate_is_lapses_in_the_month_over_customers_alive_before_it(marketer_client, workspace, other_workspace):
    people = [customer(workspace) for _ in range(4)]
    run_at(workspace, month_start(2) - dt.timedelta(hours=2), active=8, at_risk=2, lapsed=5)
    run_at(workspace, month_start(1) - dt.timedelta(hours=2), active=6, onboarding=1, at_risk=2, lapsed=6)
    stage_event(workspace, people[0], "lapsed", month_start(2) + 9 * DAY)
    for person in people[1:]:
        stage_event(workspace, person, "lapsed", month_start(1) + 9 * DAY)
    stage_event(workspace, customer(workspace), "lapsed", month_start(1) + 9 * DAY, from_value="")  # first seen lapsed
    stage_event(other_workspace, customer(other_workspace), "lapsed", month_start(1) + 9 * DAY)

    html = html_of(marketer_client.get(lifecycle_url(workspace)))

    def churn_row(months_back):
        row = re.search(rf'<tr data-month="{month_start(months_back):%Y-%m}">(.*?)</tr>', html, re.S).group(1)
        return re.findall(r'<td class="table-numeric">([^<]+)</td>', row)

    assert churn_row(2) == ["1", "10", "10.00"]  # 1 of 8 active + 2 at risk
    assert churn_row(1) == ["3", "9", "33.33"]


def test_stage_flow_counts_customers_moving_into_each_stage_per_month(marketer_client, workspace):
    people = [customer(workspace) for _ in range(3)]
    stage_event(workspace, people[0], "at_risk", month_start(1) + 3 * DAY, from_value="active")
    stage_event(workspace, people[1], "at_risk", month_start(1) + 4 * DAY, from_value="active")
    stage_event(workspace, people[2], "active", month_start(2) + 4 * DAY, from_value="onboarding")
    stage_event(workspace, customer(workspace), "prospect", month_start(1) + 4 * DAY, from_value="")  # first seen
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    table = html[html.index('id="flow-table"'):]
    header = re.findall(r'<th class="table-numeric">([^<]+)</th>', table[:table.index("</thead>")])
    rows = {label: re.findall(r'<td class="table-numeric">(\d+)</td>', cells) for label, cells in
            re.findall(r'<tr><td><a href="[^"]+">([^<]+)</a></td>(.*?)</tr>', table[:table.index("</table>")])}
    assert rows["At risk"][header.index(f"{month_start(1):%Y-%m}")] == "2"
    assert rows["Active"][header.index(f"{month_start(2):%Y-%m}")] == "1"
    assert sum(int(count) for counts in rows.values() for count in counts) == 3  # a first classification is no move


# --- What the page says about the model -------------------------------------------------------------------


def test_the_page_says_predictions_are_rule_based_and_why(marketer_client, workspace):
    history(workspace, 30, 10)
    refresh_workspace(workspace)
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    assert 'data-model="rules"' in html
    assert "Rule-based predictions: only 1 repeat customers; the BG/NBD model needs" in html


def test_the_page_names_the_bgnbd_model_when_it_was_fitted(marketer_client, workspace):
    with tenant_scope(workspace):
        LifecycleRun.objects.create(started_at=dt.datetime(2026, 3, 2, 3, 15, tzinfo=dt.UTC), customers=2357,
                                    repeat_customers=1200, model_kind="bgnbd",
                                    model_params={"bgnbd": {"r": 0.24, "alpha": 4.41, "a": 0.79, "b": 2.43}})
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    assert 'data-model="bgnbd"' in html
    assert "Predictions from a BG/NBD model fitted on 2,357 customers (1,200 repeat buyers) on 2026-03-02" in html


# --- Workspaces and query counts ---------------------------------------------------------------------------


def test_another_workspaces_customers_never_show(marketer_client, workspace, other_workspace):
    named(workspace, "Our Customer", 100, total="75.00")
    for _ in range(3):
        history(other_workspace, 100, total="500.00")
    history(other_workspace, 20, 10, total="900.00")
    refresh_workspace(workspace)
    refresh_workspace(other_workspace)
    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    assert stage_card(html, "at_risk")[1] == "1"
    assert stage_card(html, "active")[1] == "0"
    assert metric(html, "at-risk-revenue") == "75.00"
    assert "The top 20% of the 1 buying customers" in html
    assert customers_behind(marketer_client, stage_card(html, "at_risk")[0]) == ["Our Customer"]
    dashboard = html_of(marketer_client.get(reverse("dashboard", args=[workspace.slug])))
    assert stage_card(dashboard, "at_risk")[1] == "1" and metric(dashboard, "at-risk-revenue") == "75.00"


def test_a_member_of_another_workspace_cannot_open_this_one(member_client, workspace, other_workspace):
    client = member_client(Role.OWNER, ws=other_workspace)
    assert client.get(lifecycle_url(workspace)).status_code == 404
    assert client.post(reverse("lifecycle:refresh", args=[workspace.slug])).status_code == 404


# The request's own (session, user, membership, scope: 8, and the session write of a first visit: 3) and the
# page's 12: the latest run, the refresh job, and one aggregate per chart or summary (10), whatever the customers.
PAGE_QUERIES = 23


def populate(workspace, customers):
    for number in range(customers):
        history(workspace, 200 + number, 100 + number, number + 1, total=f"{10 + number}.00")
    refresh_workspace(workspace)


def test_lifecycle_page_queries_do_not_grow_with_customers(marketer_client, workspace,
                                                            django_assert_max_num_queries):
    populate(workspace, 3)
    with django_assert_max_num_queries(PAGE_QUERIES):
        html_of(marketer_client.get(lifecycle_url(workspace)))
    populate(workspace, 12)
    with django_assert_max_num_queries(PAGE_QUERIES):
        html_of(marketer_client.get(lifecycle_url(workspace)))


def test_dashboard_shows_lifecycle_numbers_in_few_queries(marketer_client, workspace, stages_shop,
                                                          django_assert_max_num_queries):
    with django_assert_max_num_queries(18):
        html = html_of(marketer_client.get(reverse("dashboard", args=[workspace.slug])))
    assert stage_card(html, "at_risk")[1] == "2"
    assert metric(html, "at-risk-revenue") == "115.00"
    assert metric(html, "top20-share") == "59.3%"  # 0.8 × (900 of 1,215), the top quarter being Eve
    assert sorted(customers_behind(marketer_client, stage_card(html, "at_risk")[0])) == ["Ann Risk", "Ben Risk"]
    assert f'href="{lifecycle_url(workspace)}" id="lifecycle-page-link"' in html


# --- Kept numbers follow the data ---------------------------------------------------------------------------


def test_at_risk_revenue_follows_an_incremental_refresh_made_after_the_page_was_read(marketer_client, workspace,
                                                                                     stages_shop):
    from lifecycle import tasks

    assert metric(html_of(marketer_client.get(lifecycle_url(workspace))), "at-risk-revenue") == "115.00"
    ben = stages_shop["at_risk"][1]
    buy(ben, 195, total="5.00")  # still overdue, no flag switched: no transition, only her revenue changes
    tasks.refresh_customers_job.apply(args=(workspace.pk, [ben.pk])).get()

    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    assert metric(html, "at-risk-revenue") == "120.00"
    assert stage_card(html, "at_risk")[1] == "2"
    dashboard = html_of(marketer_client.get(reverse("dashboard", args=[workspace.slug])))
    assert metric(dashboard, "at-risk-revenue") == "120.00"


def test_a_recorded_transition_shows_in_the_counts_at_the_next_view(marketer_client, workspace, stages_shop):
    html_of(marketer_client.get(lifecycle_url(workspace)))
    ann = stages_shop["at_risk"][0]
    with tenant_scope(workspace):
        CustomerMetrics.objects.filter(customer=ann).update(stage="lapsed")
    stage_event(workspace, ann, "lapsed", timezone.now(), from_value="at_risk")

    html = html_of(marketer_client.get(lifecycle_url(workspace)))
    assert stage_card(html, "at_risk")[1] == "1" and stage_card(html, "lapsed")[1] == "2"
    assert re.search(r"<td>At risk</td><td><a [^>]+>Lapsed</a></td><td class=\"table-numeric\">1</td>", html)


def dashboard_number(html, name) -> str:
    return re.search(rf'data-metric="{name}">([^<]+)<', html).group(1)


def test_dashboard_counts_new_customers_and_orders_at_once(marketer_client, workspace, other_workspace):
    first = history(workspace, 30, 10, total="100.00", email_opt_in=True)
    dashboard = reverse("dashboard", args=[workspace.slug])
    html = html_of(marketer_client.get(dashboard))
    assert [dashboard_number(html, name) for name in ("customers", "email-opt-ins", "orders", "revenue")] == \
        ["1", "1", "2", "200"]

    buy(first, 1, total="25.00")
    history(workspace, 3, total="75.00", email_opt_in=False)
    history(other_workspace, 3, total="999.00")
    html = html_of(marketer_client.get(dashboard))
    assert [dashboard_number(html, name) for name in ("customers", "email-opt-ins", "orders", "revenue")] == \
        ["2", "1", "4", "300"]


def test_after_a_cache_loss_the_pages_show_the_run_s_charts_without_counting_the_orders(marketer_client, workspace,
                                                                                      stages_shop):
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from lifecycle import tasks

    tasks.refresh_workspace_job.apply(args=(workspace.pk,)).get()  # the nightly task: the run, then its charts
    lifecycle_before = html_of(marketer_client.get(lifecycle_url(workspace)))
    cache.clear()

    with CaptureQueriesContext(connection) as queries:
        html = html_of(marketer_client.get(lifecycle_url(workspace)))
        dashboard = html_of(marketer_client.get(reverse("dashboard", args=[workspace.slug])))
    orders_read = [query["sql"] for query in queries if "customers_order" in query["sql"]]
    # The one read of orders: those added since the run, through the primary key.
    assert len(orders_read) == 1 and '"customers_order"."id" >' in orders_read[0], orders_read
    assert html[html.index('id="cohort-table"'):] == lifecycle_before[lifecycle_before.index('id="cohort-table"'):]
    assert metric(html, "top20-share") == metric(dashboard, "top20-share") == "59.3%"
    assert [dashboard_number(dashboard, name) for name in ("customers", "orders", "revenue")] == ["5", "7", "1,215"]

    buy(stages_shop["prospect"][0], 2, total="10.00")  # after the run: counted at once
    dashboard = html_of(marketer_client.get(reverse("dashboard", args=[workspace.slug])))
    assert [dashboard_number(dashboard, name) for name in ("customers", "orders", "revenue")] == ["5", "8", "1,225"]


def test_right_after_the_refresh_task_the_pages_count_no_customers_again(marketer_client, workspace, stages_shop):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from lifecycle import tasks

    tasks.refresh_workspace_job.apply(args=(workspace.pk,)).get()
    with CaptureQueriesContext(connection) as queries:
        html = html_of(marketer_client.get(lifecycle_url(workspace)))
        dashboard = html_of(marketer_client.get(reverse("dashboard", args=[workspace.slug])))
    assert not [query["sql"] for query in queries if "lifecycle_customermetrics" in query["sql"]]
    assert stage_card(html, "at_risk")[1] == stage_card(dashboard, "at_risk")[1] == "2"
    assert metric(html, "at-risk-revenue") == "115.00"


# --- Refresh button and roles ---------------------------------------------------------------------------------


def test_viewers_see_no_refresh_button_and_cannot_refresh(member_client, workspace):
    viewer = member_client(Role.VIEWER)
    html = html_of(viewer.get(lifecycle_url(workspace)))
    assert 'id="refresh-form"' not in html and 'id="lifecycle-settings-link"' not in html
    assert viewer.post(reverse("lifecycle:refresh", args=[workspace.slug])).status_code == 403
    with tenant_scope(workspace):
        assert not BackgroundJob.objects.exists()


@pytest.mark.redis
def test_refresh_queues_one_job_and_the_page_shows_its_progress(marketer_client, workspace,
                                                                django_capture_on_commit_callbacks, broker_queues):
    from lifecycle import tasks

    def queued():
        return broker_queues.tasks("lifecycle")

    url = reverse("lifecycle:refresh", args=[workspace.slug])
    with django_capture_on_commit_callbacks(execute=True):
        partial = marketer_client.post(url, HTTP_HX_REQUEST="true")
    assert partial.status_code == 200
    with tenant_scope(workspace):
        job = BackgroundJob.objects.get()
    assert 'data-state="queued"' in partial.content.decode() and f"/jobs/{job.pk}/" in partial.content.decode()
    assert queued() == [(tasks.refresh_workspace_job.name, [workspace.pk, job.pk])]
    # A second click while it runs shows the same job instead of starting another.
    with django_capture_on_commit_callbacks(execute=True):
        response = marketer_client.post(url, follow=True)
    assert "A lifecycle refresh is already under way." in response.content.decode()
    assert queued() == [(tasks.refresh_workspace_job.name, [workspace.pk, job.pk])]
    assert f'id="job-{job.pk}"' in response.content.decode()


def test_get_on_refresh_is_not_allowed(marketer_client, workspace):
    assert marketer_client.get(reverse("lifecycle:refresh", args=[workspace.slug])).status_code == 405


# --- Settings -------------------------------------------------------------------------------------------------


def policy_post(**changes):
    data = {
        "onboarding_days": "30", "at_risk_gap_multiplier": "2.0", "at_risk_min_days": "14",
        "at_risk_p_alive": "0.3", "one_time_buyer_at_risk_days": "90", "lapsed_days": "365",
        "lapsed_p_alive": "0.1", "heavy_user_revenue_share": "0.8", "reinforce_window_days": "7",
        "gross_margin_percent": "100",
        "rules-TOTAL_FORMS": "2", "rules-INITIAL_FORMS": "1", "rules-MIN_NUM_FORMS": "0", "rules-MAX_NUM_FORMS": "20",
        "rules-0-key": "fifth_order", "rules-0-kind": "nth_order", "rules-0-label": "Fifth order", "rules-0-n": "5",
        "rules-1-key": "", "rules-1-kind": "", "rules-1-label": "", "rules-1-n": "",
    }
    data.update(changes)
    return data


def stored_policy(workspace) -> LifecyclePolicy:
    with tenant_scope(workspace):
        return LifecyclePolicy.objects.get()


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MARKETER])
def test_only_admins_open_or_change_lifecycle_settings(member_client, workspace, role):
    client = member_client(role)
    assert client.get(settings_url(workspace)).status_code == 403
    assert client.post(settings_url(workspace), policy_post(onboarding_days="5")).status_code == 403
    with tenant_scope(workspace):
        assert not LifecyclePolicy.objects.filter(onboarding_days=5).exists()


def test_admin_sees_the_defaults_and_the_reward_rules(member_client, workspace):
    html = html_of(member_client(Role.ADMIN).get(settings_url(workspace)))
    assert 'name="onboarding_days" value="30"' in html
    assert 'name="rules-0-key" value="vip"' in html and 'name="rules-2-key" value="anniversary"' in html
    assert 'name="rules-3-key"' in html and 'name="rules-4-key"' not in html  # one empty form to add a rule


def test_admin_saves_thresholds_and_reward_rules(member_client, workspace):
    client = member_client(Role.OWNER)
    response = client.post(settings_url(workspace), policy_post(
        onboarding_days="45", lapsed_days="300", **{
            "rules-1-key": "big_spender", "rules-1-kind": "spend_threshold", "rules-1-amount": "500"}), follow=True)
    assert "Lifecycle settings saved. They apply from the next refresh." in response.content.decode()
    policy = stored_policy(workspace)
    assert (policy.onboarding_days, policy.lapsed_days) == (45, 300)
    assert policy.reward_rules == [
        {"key": "fifth_order", "kind": "nth_order", "label": "Fifth order", "n": 5},
        {"key": "big_spender", "kind": "spend_threshold", "label": "Total spend reaches an amount", "amount": 500.0},
    ]


def test_admin_deletes_a_reward_rule(member_client, workspace):
    client = member_client(Role.ADMIN)
    client.post(settings_url(workspace), policy_post(**{"rules-0-DELETE": "on"}))
    assert stored_policy(workspace).reward_rules == []


@pytest.mark.parametrize(("changes", "message"), [
    ({"lapsed_days": "60"}, "Must be longer than the one-time buyer&#x27;s at-risk days."),
    ({"at_risk_p_alive": "1.5"}, "Must be between 0 and 1."),
    ({"lapsed_p_alive": "0.5"}, "Must not be above the at-risk P(alive)."),
    ({"onboarding_days": "abc"}, "Enter a whole number."),
    ({"rules-1-key": "fifth_order", "rules-1-kind": "anniversary"},
     "Rule 2: the key &#x27;fifth_order&#x27; is used twice."),
    ({"rules-0-n": ""}, "Rule 1 (fifth_order): needs a positive number (n)."),
    ({"rules-1-key": "Not A Slug!", "rules-1-kind": "vip_entry"}, "Enter a valid “slug”"),
])
def test_bad_settings_re_render_with_the_errors_and_change_nothing(member_client, workspace, changes, message):
    client = member_client(Role.ADMIN)
    response = client.post(settings_url(workspace), policy_post(**changes))
    assert response.status_code == 400
    html = response.content.decode()
    assert "The settings were not saved: please correct the fields marked below." in html
    assert message in html
    with tenant_scope(workspace):
        assert not LifecyclePolicy.objects.exclude(reward_rules__0__key="vip").exists()


def test_saved_thresholds_apply_to_the_next_refresh(member_client, workspace):
    person = history(workspace, 40)  # a one-time buyer 40 days ago: active under the defaults
    refresh_workspace(workspace)
    with tenant_scope(workspace):
        assert CustomerMetrics.objects.get(customer=person).stage == "active"
    member_client(Role.ADMIN).post(settings_url(workspace), policy_post(one_time_buyer_at_risk_days="30"))
    refresh_workspace(workspace)
    with tenant_scope(workspace):
        assert CustomerMetrics.objects.get(customer=person).stage == "at_risk"
