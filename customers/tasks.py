"""Celery tasks of the customers app: thin wrappers that enter the workspace and call one domain function."""

from celery import shared_task

from crm_site.jobs import report_progress, run_job, tenant_task
from crm_site.tenancy import tenant_transaction
from customers import importing
from customers.models import ImportRun


@tenant_task(atomic=False)
def run_csv_import(import_id: int, job_id: int) -> None:
    """Run a mapped CSV import, reporting progress on its BackgroundJob; the ImportRun keeps the outcome."""
    with tenant_transaction():
        run = ImportRun.objects.get(pk=import_id)
    if run.status not in (ImportRun.Status.QUEUED, ImportRun.Status.RUNNING):
        return  # a redelivered message for an import that already finished

    def work(job_id: int) -> dict:
        rows_expected = max(run.line_count - 1, 0)

        def progress(rows: int, message: str) -> None:
            report_progress(job_id, progress=rows, total=max(rows_expected, rows), message=message)

        try:
            outcome = importing.run_import(run, progress)
        except Exception as error:
            importing.mark_failed(run, f"The import stopped on an unexpected error ({type(error).__name__}); "
                                       "nothing was written.")
            raise
        with tenant_transaction():  # the task body runs outside a transaction: the database needs the tenant
            run.refresh_from_db()
        report_progress(job_id, message=run.get_status_display())
        return {"import_id": run.pk, "status": run.status, "created": outcome.created, "updated": outcome.updated,
                "skipped": outcome.skipped, "errors": outcome.error_rows}

    run_job(job_id, work)


@shared_task(name="customers.tasks.purge_import_files")
def purge_import_files() -> int:
    """Delete uploads and error reports past their retention period, in every workspace; return the count."""
    return importing.purge_expired_files(None)
