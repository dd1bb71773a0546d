"""The import pages: upload, preview and column mapping, progress and result, error download, export; roles and limits."""

import csv
import io
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from crm_site.models import BackgroundJob, Role
from crm_site.tenancy import tenant_scope
from customers.models import Customer, ImportRun
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def eager_celery():
    """Run queued tasks inline (the transport is tested with a real worker in test_import_worker)."""
    from crm_site.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def upload(client, workspace, content, kind="customers", name="people.csv"):
    data = content.encode() if isinstance(content, str) else content
    return client.post(
        reverse("customers:import_start", args=[workspace.slug]),
        {"kind": kind, "file": SimpleUploadedFile(name, data, content_type="text/csv")},
    )


def mapping_post(run, mode="skip", **overrides):
    data = {"mode": mode, "day_first": "1", "default_region": "DE"}
    for index, column in enumerate(run.header):
        data[f"column_{index}"] = run.mapping.get(column, "")
    data.update(overrides)
    return data


def only_run(workspace):
    with tenant_scope(workspace):
        return ImportRun.objects.get()


def test_upload_shows_a_preview_with_guessed_columns(marketer_client, workspace):
    response = upload(marketer_client, workspace, "Customer ID,E-Mail Address,Mobile,Vorname\nC1,ann@example.com,0301234567,Ann\n")
    run = only_run(workspace)
    assert response.status_code == 302 and response.url == reverse("customers:import_detail", args=[workspace.slug, run.pk])
    assert run.mapping == {"Customer ID": "external_id", "E-Mail Address": "email", "Mobile": "phone", "Vorname": "first_name"}
    page = marketer_client.get(response.url).content.decode()
    assert "ann@example.com" in page and 'id="import-preview"' in page
    assert '<option value="email" selected>' in page


def test_a_mapping_without_an_identifier_is_refused_with_a_reason(marketer_client, workspace):
    upload(marketer_client, workspace, "name,city\nAnn,Berlin\n")
    run = only_run(workspace)
    response = marketer_client.post(reverse("customers:import_detail", args=[workspace.slug, run.pk]), mapping_post(run))
    assert response.status_code == 400
    assert "Map a column to External id or E-mail" in response.content.decode()
    assert only_run(workspace).status == ImportRun.Status.UPLOADED


def test_mapping_runs_the_import_and_the_result_page_names_line_and_column(
    marketer_client, workspace, eager_celery, django_capture_on_commit_callbacks
):
    upload(marketer_client, workspace, "id,contact\nC1,ann@example.com\nC2,bob@\n")
    run = only_run(workspace)
    assert run.mapping["contact"] == ""  # not guessed: the user maps it
    url = reverse("customers:import_detail", args=[workspace.slug, run.pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = marketer_client.post(url, mapping_post(run, column_1="email"))
    assert response.status_code == 302
    page = marketer_client.get(url).content.decode()
    assert "line 3, column contact: &#x27;bob@&#x27; is not a valid e-mail address" in page
    assert 'id="count-created">1<' in page and 'id="count-errors">1<' in page
    run = only_run(workspace)
    with tenant_scope(workspace):
        job = BackgroundJob.objects.get(pk=run.job_id)
    assert (job.state, job.progress) == (BackgroundJob.State.DONE, 2)
    download = marketer_client.get(reverse("customers:import_errors", args=[workspace.slug, run.pk]))
    assert download["Content-Disposition"].startswith('attachment; filename="people-errors.csv"')
    rows = list(csv.DictReader(io.StringIO(b"".join(download.streaming_content).decode("utf-8-sig"))))
    assert [(row["id"], row["contact"], row["line"]) for row in rows] == [("C2", "bob@", "3")]


def test_a_started_import_cannot_be_started_twice(marketer_client, workspace, eager_celery,
                                                   django_capture_on_commit_callbacks):
    upload(marketer_client, workspace, "email\nann@example.com\n")
    run = only_run(workspace)
    url = reverse("customers:import_detail", args=[workspace.slug, run.pk])
    with django_capture_on_commit_callbacks(execute=True):
        marketer_client.post(url, mapping_post(run))
        marketer_client.post(url, mapping_post(run))
    with tenant_scope(workspace):
        assert Customer.objects.count() == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "The file is empty."),
        (b"email,name\r\n", "The file has a header row but no data rows."),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "The file contains NUL bytes"),
    ],
)
def test_unusable_files_are_refused_at_upload_with_a_clear_message(marketer_client, workspace, content, message):
    response = upload(marketer_client, workspace, content)
    assert response.status_code == 400
    assert message in response.content.decode()
    with tenant_scope(workspace):
        assert not ImportRun.objects.exists()


def test_a_file_over_the_size_limit_is_refused_before_it_is_stored(marketer_client, workspace, settings):
    settings.RAPPORT_IMPORT_MAX_BYTES = 1000
    response = upload(marketer_client, workspace, "email\n" + "someone@example.com\n" * 200)
    assert response.status_code == 400
    assert "larger than the limit of" in response.content.decode()
    with tenant_scope(workspace):
        assert not ImportRun.objects.exists()


def test_uploads_are_stored_privately_under_the_workspace_folder(marketer_client, workspace, settings):
    upload(marketer_client, workspace, "email\nann@example.com\n")
    run = only_run(workspace)
    assert run.stored_path.startswith(f"imports/{workspace.pk}/")
    assert (settings.MEDIA_ROOT / run.stored_path).exists()
    assert marketer_client.get(f"/media/{run.stored_path}").status_code == 404


def test_viewers_cannot_import_or_export(member_client, workspace):
    viewer = member_client(Role.VIEWER)
    assert viewer.get(reverse("customers:import_start", args=[workspace.slug])).status_code == 403
    assert upload(viewer, workspace, "email\nann@example.com\n").status_code == 403
    assert viewer.get(reverse("customers:export", args=[workspace.slug])).status_code == 403


def test_the_upload_page_lists_recent_imports_in_few_queries(marketer_client, workspace, django_assert_max_num_queries):
    for number in range(5):
        upload(marketer_client, workspace, f"email\nuser{number}@example.com\n", name=f"file{number}.csv")
    with django_assert_max_num_queries(12):  # session, user, membership, scope… and one for the runs
        page = marketer_client.get(reverse("customers:import_start", args=[workspace.slug])).content.decode()
    assert all(f"file{number}.csv" in page for number in range(5))


# --- Export ----------------------------------------------------------------------------------------


def test_export_streams_every_customer_with_formula_cells_escaped(marketer_client, workspace, other_workspace):
    CustomerFactory(tenant=workspace, external_id="C1", email="ann@example.com", first_name="=HYPERLINK(\"x\")",
                    last_name="@SUM(A1)", phone="+49301234567")
    with tenant_scope(workspace):  # more than one chunk of the streamed export
        Customer.objects.bulk_create(
            Customer(tenant=workspace, external_id=f"C{number}", email=f"c{number}@example.com")
            for number in range(2, 2600)
        )
    CustomerFactory(tenant=other_workspace, external_id="OTHER", email="other@example.com")
    response = marketer_client.get(reverse("customers:export", args=[workspace.slug]))
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    assert len(rows) == 2599 and "OTHER" not in {row["external_id"] for row in rows}
    ann = next(row for row in rows if row["external_id"] == "C1")
    assert (ann["first_name"], ann["last_name"], ann["phone"]) == ("'=HYPERLINK(\"x\")", "'@SUM(A1)", "+49301234567")
