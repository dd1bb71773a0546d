"""Lifecycle refreshes as they run in production: the page's button through a real Celery worker on Redis, the
incremental refresh queued by new orders (API, CSV import, a saved order), and the nightly beat entry.

Histories the tests start from are written with bulk_create, which sends no signal, so the only refreshes that
run are the ones under test.
"""

import datetime as dt
import time
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from crm_site.celery import app as celery_app
from crm_site.models import BackgroundJob, Role
from crm_site.tenancy import platform_scope, tenant_scope
from customers.models import Customer, ImportRun, Order
from customers.signals import orders_changed
from lifecycle import tasks
from lifecycle.apps import NIGHTLY_REFRESH, ensure_nightly_refresh
from lifecycle.models import CustomerMetrics, LifecycleEvent, LifecycleRun
from lifecycle.runs import refresh_workspace
from tests.api_helpers import api, api_key  # noqa: F401 (fixtures)
from tests.factories import CustomerFactory, OrderFactory, WorkspaceFactory

DAY = dt.timedelta(days=1)
INCREMENTAL, FULL = tasks.refresh_customers_job.name, tasks.refresh_workspace_job.name


def bulk_history(workspace, external_id, *days_ago, total="50.00"):
    """A customer and their orders, written in bulk (no signal: nothing is queued)."""
    now = timezone.now()
    with tenant_scope(workspace):
        person = Customer.objects.create(external_id=external_id, email=f"{external_id.lower()}@example.org",
                                         first_name=external_id, last_name="Shopper", first_seen_at=now - 500 * DAY)
        Order.objects.bulk_create([
            Order(tenant=workspace, customer=person, external_id=f"{external_id}-{days}", placed_at=now - days * DAY,
                  total=Decimal(total)) for days in days_ago])
    return person


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def metrics_of(person):
    with tenant_scope(person.tenant_id):
        return CustomerMetrics.objects.filter(customer=person).first()


def stage_of(person):
    metrics = metrics_of(person)
    return metrics.stage if metrics else None


def stage_events(person):
    with tenant_scope(person.tenant_id):
        return list(LifecycleEvent.objects.filter(customer=person, kind="stage").order_by("occurred_at", "id")
                    .values_list("from_value", "to_value", "reason"))


@pytest.fixture
def eager_celery():
    """Run queued tasks inline, for the paths where the transport is not what is tested."""
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


# --- The refresh button, through a real worker ----------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
def test_the_refresh_button_runs_a_refresh_on_a_real_worker_and_the_page_shows_it(celery_worker, member_client,
                                                                                    workspace):
    client = member_client(Role.MARKETER)
    at_risk = bulk_history(workspace, "C-RISK", 120, total="80.00")
    active = bulk_history(workspace, "C-ACTIVE", 90, 60, 30, 10)
    page = client.get(reverse("lifecycle:index", args=[workspace.slug])).content.decode()
    assert "Not computed yet" in page

    response = client.post(reverse("lifecycle:refresh", args=[workspace.slug]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and 'data-state="queued"' in response.content.decode()
    with tenant_scope(workspace):
        job_id = BackgroundJob.objects.get(kind="lifecycle refresh").pk

    def finished():
        with tenant_scope(workspace):
            job = BackgroundJob.objects.get(pk=job_id)
        return job if job.is_finished else None

    job = wait_for(finished, "the refresh job")
    assert job.state == BackgroundJob.State.DONE, job.message
    assert job.result == {"customers": 2, "rows_written": 2, "events_written": job.result["events_written"],
                          "model_kind": "rules"}
    partial = client.get(reverse("job_progress", args=[workspace.slug, job_id])).content.decode()
    assert "(100%)" in partial and "2 customers changed" in partial and "hx-get" not in partial

    assert (stage_of(at_risk), stage_of(active)) == ("at_risk", "active")
    page = client.get(reverse("lifecycle:index", args=[workspace.slug])).content.decode()
    assert "Rule-based predictions" in page
    assert 'data-stage="at_risk">\n    <div class="card-body"><div class="text-body-secondary small">At risk</div>' \
           '<div class="fs-3" data-count>1<' in page
    assert f'id="job-{job_id}" data-state="done"' in page


# --- Incremental refresh after new orders -------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
def test_an_order_from_the_api_refreshes_its_customer_on_the_worker(celery_worker, api, workspace):
    lapsed = bulk_history(workspace, "C-1", 500, 400)
    untouched = bulk_history(workspace, "C-2", 400)
    refresh_workspace(workspace)
    assert stage_of(lapsed) == "lapsed"
    computed_before = metrics_of(untouched).computed_at

    response = api.post("orders", {"external_id": "O-NEW", "customer_external_id": "C-1",
                                   "placed_at": timezone.now().isoformat(), "total": "30.00"})
    assert response.status_code == 201

    wait_for(lambda: stage_of(lapsed) == "active", "the incremental refresh")
    assert stage_events(lapsed)[-1] == ("lapsed", "active", "last order 0 days ago; usual gap 250 days")
    assert metrics_of(lapsed).order_count == 3
    assert metrics_of(untouched).computed_at == computed_before
    with tenant_scope(workspace):
        assert LifecycleRun.objects.count() == 1  # incremental: no new full run


@pytest.mark.redis
@pytest.mark.postgres
def test_a_csv_order_import_refreshes_its_customers_on_the_worker(celery_worker, member_client, workspace):
    client = member_client(Role.MARKETER)
    lapsed = bulk_history(workspace, "C1", 400)
    prospect = bulk_history(workspace, "C2")
    refresh_workspace(workspace)
    assert (stage_of(lapsed), stage_of(prospect)) == ("lapsed", "prospect")

    today = timezone.now().date().isoformat()
    content = f"order_id,customer_id,date,total\nO1,C1,{today},20\nO2,C2,{today},35\n"
    client.post(reverse("customers:import_start", args=[workspace.slug]),
                {"kind": "orders", "file": SimpleUploadedFile("orders.csv", content.encode())})
    with tenant_scope(workspace):
        run = ImportRun.objects.get()
    assert run.mapping == {"order_id": "order_external_id", "customer_id": "customer_external_id",
                           "date": "placed_at", "total": "total"}
    mapping = {f"column_{index}": run.mapping[column] for index, column in enumerate(run.header)}
    response = client.post(reverse("customers:import_detail", args=[workspace.slug, run.pk]),
                           {"mode": "reject", "day_first": "1", "default_region": "", **mapping})
    assert response.status_code == 302

    wait_for(lambda: stage_of(prospect) == "onboarding" and stage_of(lapsed) == "active", "the import's refresh")
    assert stage_events(prospect)[-1] == ("prospect", "onboarding", "first purchase 0 days ago; 1 order")
    assert stage_events(lapsed)[-1][:2] == ("lapsed", "active")


@pytest.mark.django_db(transaction=True)
def test_an_order_saved_in_a_form_or_admin_refreshes_its_customer(workspace, eager_celery):
    person = bulk_history(workspace, "C-1", 400)
    refresh_workspace(workspace)
    assert stage_of(person) == "lapsed"
    OrderFactory(tenant=workspace, customer=person, placed_at=timezone.now() - 2 * DAY)  # post_save, then commit
    assert stage_of(person) == "active"
    assert stage_events(person)[-1][:2] == ("lapsed", "active")


@pytest.mark.django_db(transaction=True)
@pytest.mark.redis
def test_a_rolled_back_order_queues_nothing(workspace, broker_queues):
    person = bulk_history(workspace, "C-1", 400)
    with pytest.raises(RuntimeError), tenant_scope(workspace):
        OrderFactory(tenant=workspace, customer=person)
        raise RuntimeError("the request failed")
    assert broker_queues.tasks("lifecycle") == []
    OrderFactory(tenant=workspace, customer=person)
    assert broker_queues.tasks("lifecycle") == [(INCREMENTAL, [workspace.pk, [person.pk]])]


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db
def test_an_api_batch_announces_the_customers_whose_orders_changed(api, workspace, broker_queues,
                                                                    django_capture_on_commit_callbacks):
    ann, bob, cay = (bulk_history(workspace, external_id) for external_id in ("C-1", "C-2", "C-3"))
    with tenant_scope(workspace):
        Order.objects.bulk_create([Order(tenant=workspace, customer=cay, external_id="O-3", total=Decimal("5.00"),
                                         placed_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC), currency="EUR")])
    announced = []

    def receiver(sender, tenant_id, customer_ids, **kwargs):
        announced.append((tenant_id, customer_ids))

    orders_changed.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post("orders/batch", {"orders": [
                {"external_id": "O-1", "customer_external_id": "C-1", "placed_at": "2025-02-01T10:00:00Z",
                 "total": "10.00"},
                {"external_id": "O-2", "customer_external_id": "C-2", "placed_at": "2025-02-01T10:00:00Z",
                 "total": "12.00"},
                {"external_id": "O-3", "customer_external_id": "C-3", "placed_at": "2025-01-01T00:00:00Z",
                 "total": "5.00"},  # unchanged
            ]})
    finally:
        orders_changed.disconnect(receiver)
    assert response.status_code == 200
    assert [status["status"] for status in response.json()["results"]] == ["created", "created", "unchanged"]
    assert announced == [(workspace.pk, sorted([ann.pk, bob.pk]))]
    assert broker_queues.tasks("lifecycle") == [(INCREMENTAL, [workspace.pk, sorted([ann.pk, bob.pk])])]


@pytest.mark.django_db
def test_after_a_refresh_task_the_page_reads_the_heavy_charts_from_the_cache(member_client, workspace):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    bulk_history(workspace, "C-1", 40, 10, total="80.00")
    bulk_history(workspace, "C-2", 300, total="20.00")
    tasks.refresh_workspace_job.apply(args=(workspace.pk,)).get()
    client = member_client(Role.VIEWER)
    with CaptureQueriesContext(connection) as queries:
        page = client.get(reverse("lifecycle:index", args=[workspace.slug])).content.decode()
    assert "The top 20% of the 2 buying customers bring" in page
    statements = " ".join(query["sql"] for query in queries.captured_queries)
    assert "NTILE" not in statements  # the Pareto curve
    assert 'AS "b0"' not in statements  # the CLV histogram
    assert "customers_order" not in statements  # the cohorts


@pytest.mark.django_db
def test_a_queued_refresh_of_a_closed_or_deleted_workspace_does_nothing(workspace):
    person = bulk_history(workspace, "C-1", 10)
    workspace.is_active = False
    workspace.save()
    tasks.refresh_customers_job.apply(args=(workspace.pk, [person.pk])).get()
    assert metrics_of(person) is None
    tasks.refresh_customers_job.apply(args=(workspace.pk + 1000, [person.pk])).get()


@pytest.mark.redis
@pytest.mark.django_db
def test_many_customers_at_once_queue_one_full_refresh_instead(workspace, monkeypatch, broker_queues):
    monkeypatch.setattr(tasks, "INCREMENTAL_BATCH", 2)
    tasks.queue_customer_refresh(workspace.pk, [5, 3, 1, 3, 4])
    assert broker_queues.tasks("lifecycle") == [(INCREMENTAL, [workspace.pk, [1, 3]]),
                                                (INCREMENTAL, [workspace.pk, [4, 5]])]
    broker_queues.client.flushdb()
    monkeypatch.setattr(tasks, "FULL_REFRESH_ABOVE", 3)
    tasks.queue_customer_refresh(workspace.pk, [5, 3, 1, 4])
    assert broker_queues.tasks("lifecycle") == [(FULL, [workspace.pk])]


@pytest.mark.django_db
def test_a_broker_outage_never_fails_the_order_that_queued_the_refresh(workspace, broker_down, caplog):
    tasks.queue_customer_refresh(workspace.pk, [7])
    assert "could not queue the refresh of 1 customers of workspace" in caplog.text


# --- Nightly ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_nightly_beat_entry_exists_after_migrate_and_names_a_registered_task():
    from django_celery_beat.models import PeriodicTask

    entry = PeriodicTask.objects.get(name=NIGHTLY_REFRESH)
    assert entry.enabled
    assert (entry.crontab.minute, entry.crontab.hour, str(entry.crontab.timezone)) == ("15", "3", "UTC")
    assert entry.task in celery_app.tasks
    assert celery_app.tasks[entry.task].apply().get() == 0  # it runs: no workspace yet, nothing queued


@pytest.mark.django_db
def test_migrating_again_keeps_an_admins_change_to_the_schedule():
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    entry = PeriodicTask.objects.get(name=NIGHTLY_REFRESH)
    entry.crontab = CrontabSchedule.objects.create(minute="0", hour="1")
    entry.save()
    ensure_nightly_refresh()
    assert PeriodicTask.objects.filter(name=NIGHTLY_REFRESH).count() == 1
    assert PeriodicTask.objects.get(name=NIGHTLY_REFRESH).crontab.hour == "1"


@pytest.mark.django_db(transaction=True)
def test_the_nightly_task_refreshes_every_active_workspace(eager_celery):
    shops = [WorkspaceFactory(), WorkspaceFactory()]
    closed = WorkspaceFactory(is_active=False)
    people = {shop.pk: CustomerFactory(tenant=shop, first_seen_at=timezone.now() - 400 * DAY)
              for shop in (*shops, closed)}
    assert tasks.refresh_everywhere() == 2
    for shop in shops:
        assert stage_of(people[shop.pk]) == "prospect"
        with tenant_scope(shop):
            assert LifecycleRun.objects.count() == 1
    assert stage_of(people[closed.pk]) is None


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_large_refresh_leaves_fresh_planner_statistics_so_sorted_lists_stay_fast(workspace, monkeypatch):
    from django.db import connection

    from lifecycle import runs

    for _ in range(4):
        OrderFactory(tenant=workspace, customer=CustomerFactory(tenant=workspace))

    def estimated_rows():
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'lifecycle_customermetrics'")
            return cursor.fetchone()[0]

    # Earlier tests may have left any estimate (reltuples outlives their rows): compare with it, not with a number.
    before = estimated_rows()
    monkeypatch.setattr(runs, "ANALYZE_AFTER_ROWS", 1_000)
    refresh_workspace(workspace)
    assert estimated_rows() == before  # a small write-back leaves statistics to autovacuum
    monkeypatch.setattr(runs, "ANALYZE_AFTER_ROWS", 5)
    for _ in range(5):
        CustomerFactory(tenant=workspace)
    refresh_workspace(workspace)  # five new rows written: the threshold
    with platform_scope():
        stored = CustomerMetrics.objects.count()  # every workspace's rows, as ANALYZE counts them
    assert stored == 9
    assert estimated_rows() == stored


@pytest.mark.postgres
@pytest.mark.django_db
def test_metrics_pages_keep_room_for_the_rows_a_nightly_refresh_rewrites():
    # A rewritten row whose indexed columns did not change stays on its page without index updates only when
    # the page has room for the new version (bench/lifecycle.py reports the share of such updates).
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'lifecycle_customermetrics'")
        assert "fillfactor=80" in cursor.fetchone()[0]
