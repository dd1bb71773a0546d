"""Pages of the CSV import (upload, mapping, progress and result, bad-rows download) and the customer export."""

from __future__ import annotations

import csv
import datetime as dt

from django.contrib import messages
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from crm_site.tenancy import requires_role, tenant_scope
from customers import importing
from customers.csv_reading import CsvFileError
from customers.import_forms import MappingForm, UploadForm, UploadSizeLimit
from customers.models import Customer, ImportRun
from customers.normalize import escape_formula

RECENT_IMPORTS = 20


@requires_role("marketer")
@csrf_exempt  # the CSRF check runs in _upload, after the size-limiting upload handler is installed
def import_start(request, workspace_slug):
    """Upload form and the recent imports; a valid upload goes on to its column mapping."""
    limit = importing.max_upload_bytes()
    size_limit = UploadSizeLimit(request, limit)
    if request.method == "POST":
        request.upload_handlers.insert(0, size_limit)
    return _upload(request, workspace_slug, size_limit)


@csrf_protect
def _upload(request, workspace_slug, size_limit):
    form = UploadForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        if size_limit.exceeded:
            form.add_error("file", f"The file is larger than the limit of {_megabytes(size_limit.limit)}. "
                                   "Split it into smaller files.")
        elif form.is_valid():
            try:
                run = importing.store_upload(form.cleaned_data["file"], form.cleaned_data["kind"], user=request.user)
            except CsvFileError as error:
                form.add_error("file", str(error))
            else:
                return redirect("customers:import_detail", workspace_slug=workspace_slug, import_id=run.pk)
        status = 400
    runs = ImportRun.objects.select_related("created_by").order_by("-created_at", "-id")[:RECENT_IMPORTS]
    context = {"section": "customers", "form": form, "runs": runs, "limit": _megabytes(importing.max_upload_bytes())}
    return render(request, "customers/import_start.html", context, status=status)


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):,.0f} MB"


@requires_role("marketer")
def import_detail(request, workspace_slug, import_id):
    """Mapping form while the run waits for it; afterwards the progress bar, then the counts and errors."""
    run = get_object_or_404(ImportRun.objects.select_related("job"), pk=import_id)
    if run.status != ImportRun.Status.UPLOADED:
        if request.method == "POST":
            messages.info(request, "This import was already started.")
            return redirect("customers:import_detail", workspace_slug=workspace_slug, import_id=run.pk)
        return render(request, "customers/import_result.html", {"section": "customers", "run": run,
                                                                  "job": run.job, "error_file": importing.error_report_path(run)})
    form = MappingForm(request.POST or None, run=run)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                importing.start_import(run, mapping=form.mapping(), mode=form.cleaned_data["mode"],
                                       options=form.options(), user=request.user)
            except CsvFileError as error:
                form.add_error(None, str(error))
            else:
                return redirect("customers:import_detail", workspace_slug=workspace_slug, import_id=run.pk)
        status = 400
    rows = importing.preview_rows(run)
    width = len(run.header)
    preview = [(record.line, record.cells[:width] + [""] * (width - len(record.cells))) for record in rows]
    context = {
        "section": "customers", "run": run, "form": form, "preview": preview,
        "file_missing": importing.upload_path(run) is None,
    }
    return render(request, "customers/import_mapping.html", context, status=status)


@requires_role("marketer")
def import_errors(request, workspace_slug, import_id):
    """Download the rows that could not be imported, with an ``error`` column."""
    run = get_object_or_404(ImportRun.objects, pk=import_id)
    path = importing.error_report_path(run)
    if path is None:
        raise Http404("No error report (it may have expired).")
    stem = run.original_name.rsplit(".", 1)[0] or "import"
    return FileResponse(path.open("rb"), as_attachment=True, filename=f"{stem}-errors.csv", content_type="text/csv")


# --- Export -------------------------------------------------------------------------------------------

EXPORT_COLUMNS = ["external_id", "email", "phone", "first_name", "last_name", "time_zone", "locale",
                  "email_opt_in", "sms_opt_in", "first_seen_at", "created_at"]
EXPORT_CHUNK = 2000


class _Echo:
    """A write() target for csv.writer that hands back the line instead of storing it."""

    def write(self, value):
        return value


def export_rows(workspace_id: int, chunk: int = EXPORT_CHUNK):
    """Yield the CSV lines of every (not erased) customer of a workspace, cells escaped against formulas.

    Each chunk is read in its own tenant scope (keyset on id): the response streams after the view's
    scope has ended, and no transaction stays open while the client reads.
    """
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow(EXPORT_COLUMNS)
    last_id = 0
    while True:
        with tenant_scope(workspace_id):
            rows = list(
                Customer.objects.filter(pk__gt=last_id, erased_at__isnull=True)
                .order_by("pk")
                .values_list("pk", *EXPORT_COLUMNS)[:chunk]
            )
        if not rows:
            return
        last_id = rows[-1][0]
        yield "".join(writer.writerow([_export_cell(value) for value in row[1:]]) for row in rows)


def _export_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return escape_formula(str(value))


@requires_role("marketer")
def customers_export(request, workspace_slug):
    """Stream every customer of the workspace as CSV (UTF-8 with BOM, so spreadsheets read accents)."""
    response = StreamingHttpResponse(export_rows(request.workspace.pk), content_type="text/csv; charset=utf-8")
    filename = f"customers-{request.workspace.slug}-{timezone.now():%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
