"""The import through a real Celery worker on Redis: queued by the mapping page, progress reported as it goes."""

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from crm_site.models import BackgroundJob
from crm_site.tenancy import tenant_scope
from customers import importing, tasks
from customers.models import Customer, ImportRun

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def wait_for_job(workspace, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with tenant_scope(workspace):
            job = BackgroundJob.objects.get(pk=job_id)
        if job.is_finished:
            return job
        time.sleep(0.1)
    raise AssertionError(f"the import job did not finish in {timeout}s (state {job.state}: {job.message})")


def test_a_real_worker_runs_the_import_and_reports_progress(celery_worker, marketer_client, workspace, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_ROWS", 500)
    reported = []
    original = tasks.report_progress

    def recording(job_id, **changes):
        reported.append(changes)
        original(job_id, **changes)

    monkeypatch.setattr(tasks, "report_progress", recording)
    rows = "".join(f"C{n},person{n}@example.com\n" for n in range(2000)) + "C9999,broken@\n"
    marketer_client.post(
        reverse("customers:import_start", args=[workspace.slug]),
        {"kind": "customers", "file": SimpleUploadedFile("people.csv", ("id,email\n" + rows).encode())},
    )
    with tenant_scope(workspace):
        run = ImportRun.objects.get()
    url = reverse("customers:import_detail", args=[workspace.slug, run.pk])
    response = marketer_client.post(url, {"mode": "skip", "day_first": "1", "default_region": "",
                                          "column_0": "external_id", "column_1": "email"})
    assert response.status_code == 302
    with tenant_scope(workspace):
        job_id = ImportRun.objects.get().job_id
    job = wait_for_job(workspace, job_id)
    assert job.state == BackgroundJob.State.DONE, job.message
    progress = [change["progress"] for change in reported if "progress" in change]
    assert progress[:4] == [500, 1000, 1500, 2000] and progress[-1] == 2001
    assert all(change.get("total", 2001) == 2001 for change in reported)
    partial = marketer_client.get(reverse("job_progress", args=[workspace.slug, job_id])).content.decode()
    assert "(100%)" in partial and 'data-state="done"' in partial and "hx-get" not in partial
    page = marketer_client.get(url).content.decode()
    assert 'id="count-created">2,000<' in page
    assert "line 2002, column email: &#x27;broken@&#x27; is not a valid e-mail address" in page
    with tenant_scope(workspace):
        assert Customer.objects.count() == 2000
