"""Site-wide pages: home redirect, dashboard, workspace settings, job progress, health, error pages."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template import loader

from crm_site.forms import WorkspaceSettingsForm
from crm_site.models import BackgroundJob, Membership
from crm_site.tenancy import requires_role


@login_required
def home(request):
    """Send the user to the workspace they used last, else their first one."""
    memberships = Membership.objects.filter(user=request.user, workspace__is_active=True).select_related("workspace")
    last = request.session.get("last_workspace")
    chosen = next((m for m in memberships if m.workspace.slug == last), None) or memberships.first()
    if chosen is None:
        return render(request, "no_workspace.html", status=200)
    return redirect("dashboard", workspace_slug=chosen.workspace.slug)


def dashboard(request, workspace_slug):
    """The workspace's headline numbers (kept briefly, never every order counted per view) and lifecycle cards."""
    from lifecycle import analytics

    run = analytics.latest_run()
    totals = analytics.shop_totals(run=run)
    context = {
        "section": "dashboard",
        "customer_count": totals["customers"],
        "email_opt_in_count": totals["email_opt_ins"],
        "order_count": totals["orders"],
        "revenue": totals["revenue"],
        "recent_jobs": BackgroundJob.objects.all()[:5],
        "lifecycle": analytics.stage_summary(workspace_slug, stamp=analytics.live_stamp(run)),
        "pareto": analytics.revenue_concentration(workspace_slug, run=run),
    }
    return render(request, "dashboard.html", context)


@requires_role("admin")
def workspace_settings(request, workspace_slug):
    workspace = request.workspace
    form = WorkspaceSettingsForm(request.POST or None, instance=workspace)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Workspace settings saved.")
        return redirect("workspace_settings", workspace_slug=workspace.slug)
    status = 400 if request.method == "POST" else 200
    return render(request, "settings/workspace.html", {"section": "settings", "form": form}, status=status)


def job_progress(request, workspace_slug, job_id):
    """The progress bar of one background job; htmx polls it until the job finishes."""
    job = get_object_or_404(BackgroundJob.objects, pk=job_id)
    if request.headers.get("Accept") == "application/json":
        return JsonResponse(
            {"state": job.state, "progress": job.progress, "total": job.total, "percent": job.percent,
             "message": job.message}
        )
    return render(request, "partials/job_progress.html", {"job": job})


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok", content_type="text/plain")


def bad_request(request, exception):
    return render(request, "400.html", status=400)


def permission_denied(request, exception):
    return render(request, "403.html", {"exception": str(exception) if str(exception) else ""}, status=403)


def page_not_found(request, exception):
    return render(request, "404.html", status=404)


def server_error(request):
    # No request context: the error may come from a context processor or the database.
    return HttpResponse(loader.get_template("500.html").render(), status=500)
