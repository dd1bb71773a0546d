"""Segment pages: the list, a segment's page, the htmx rule builder with its live count, CSV upload and export."""

from __future__ import annotations

import csv

from django.contrib import messages
from django.http import HttpResponseNotAllowed, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from crm_site.tenancy import requires_role, tenant_scope
from customers.normalize import escape_formula
from segments import builder
from segments.audience import (
    InvalidRules, RuleError, count_customers, customers_matching, segment_members, validate_rules,
)
from segments.editing import SegmentInUse, copy_segment, delete_segment, save_segment
from segments.forms import SegmentForm, UploadForm
from segments.models import Segment
from segments.rules import describe_rules
from segments.snapshots import UploadError, freeze_copy, frozen_segment_from_upload, write_snapshot

SAMPLE_SIZE = 10


def _segment(segment_id) -> Segment:
    return get_object_or_404(Segment.objects, pk=segment_id)


def _segment_names() -> dict[int, str]:
    return dict(Segment.objects.values_list("pk", "name"))


def _segment_choices(editing: Segment | None) -> list[tuple[str, str]]:
    segments = Segment.objects.order_by("-is_builtin", "name")
    if editing is not None and editing.pk:
        segments = segments.exclude(pk=editing.pk)
    return [(str(pk), name) for pk, name in segments.values_list("pk", "name")]


def index(request, workspace_slug):
    """Every segment of the workspace, built-in first; counts load lazily (one request per row)."""
    segments = list(Segment.objects.order_by("-is_builtin", "name", "pk"))
    return render(request, "segments/index.html", {"section": "segments", "segments": segments})


def member_count(request, workspace_slug, segment_id):
    """The member count of one segment, as a small fragment (the list page loads these with htmx)."""
    segment = _segment(segment_id)
    try:
        count = count_customers(segment_members(segment))
    except InvalidRules as invalid:
        return render(request, "segments/partials/count.html", {"error": str(invalid)})
    return render(request, "segments/partials/count.html", {"count": count, "segment": segment})


def detail(request, workspace_slug, segment_id):
    segment = _segment(segment_id)
    errors: list[RuleError] = []
    count, sample = None, []
    try:
        members = segment_members(segment)
        count = count_customers(members)
        sample = list(members.order_by("-pk")[:SAMPLE_SIZE])
    except InvalidRules as invalid:
        errors = invalid.errors
    has_rules = bool(segment.rules and segment.rules.get("rules"))
    context = {
        "section": "segments", "segment": segment, "count": count, "sample": sample, "errors": errors,
        "has_rules": has_rules,
        "rules_in_words": describe_rules(segment.rules, _segment_names()) if has_rules else "",
    }
    return render(request, "segments/detail.html", context)


# --- The builder ---------------------------------------------------------------------------------------


def _builder_page(request, segment: Segment, rules: dict, form: SegmentForm, errors=(), status=200):
    preview = {"errors": list(errors)} if errors else _preview_context(rules, segment)
    tree = builder.builder_tree(rules, preview.get("errors", ()), _segment_choices(segment))
    context = {
        "section": "segments", "segment": segment, "form": form, "tree": tree, "field_menu": builder.field_menu(),
        "preview": preview,
    }
    return render(request, "segments/builder.html", context, status=status)


def _save_from_builder(request, segment: Segment):
    form = SegmentForm(request.POST, instance=segment)
    rules = builder.rules_from_form(request.POST)
    errors = validate_rules(rules, segment=segment if segment.pk else None)
    if not form.is_valid() or errors:
        return _builder_page(request, segment, rules, form, errors, status=400)
    segment = form.save(commit=False)
    try:
        save_segment(segment, rules, user=request.user)
    except InvalidRules as invalid:
        return _builder_page(request, segment, rules, form, invalid.errors, status=400)
    if segment.is_frozen:
        messages.success(request, f"Saved “{segment.name}” with a snapshot of {segment.members.count():,} customers.")
    else:
        messages.success(request, f"Saved “{segment.name}”.")
    return redirect("segments:detail", workspace_slug=request.workspace.slug, segment_id=segment.pk)


@requires_role("marketer")
def create(request, workspace_slug):
    """The builder for a new segment; POST saves it (dynamic or frozen)."""
    segment = Segment(tenant=request.workspace)
    if request.method == "POST":
        return _save_from_builder(request, segment)
    return _builder_page(request, segment, builder.new_rules(), SegmentForm(instance=segment))


@requires_role("marketer")
def edit(request, workspace_slug, segment_id):
    """The builder for an existing dynamic segment (built-ins are copied, not edited)."""
    segment = _segment(segment_id)
    if segment.is_builtin or segment.is_frozen:
        messages.info(request, "Built-in segments and frozen lists cannot be edited; make a copy to change the rules.")
        return redirect("segments:detail", workspace_slug=workspace_slug, segment_id=segment.pk)
    if request.method == "POST":
        return _save_from_builder(request, segment)
    return _builder_page(request, segment, segment.rules, SegmentForm(instance=segment))


def _editing_segment(request) -> Segment | None:
    """The segment a builder request edits (for cycle detection), from the form's ``segment`` field."""
    segment_id = request.POST.get("segment", "")
    if segment_id.isdigit():
        return Segment.objects.filter(pk=int(segment_id)).first()
    return None


def _preview_context(rules: dict, segment: Segment | None) -> dict:
    """The live count and sample for a tree, or its errors."""
    editing = segment if segment is not None and segment.pk else None
    errors = validate_rules(rules, segment=editing)
    if errors:
        return {"errors": errors}
    try:
        members = customers_matching(rules, segment=editing)
        return {"count": count_customers(members), "sample": list(members.order_by("-pk")[:SAMPLE_SIZE]),
                "rules_in_words": describe_rules(rules, _segment_names())}
    except InvalidRules as invalid:
        return {"errors": invalid.errors}


def _preview_response(request, rules: dict, *, with_tree: bool = False, path=None):
    """Render the builder's answer to an htmx request.

    The main part is the preview (count and sample), one condition (``path``: its field or operator
    changed, so its widgets change) or the whole tree (``with_tree``: added or removed nodes); the preview
    and every other node's message are swapped in out of band, so messages sit next to their condition.
    """
    segment = _editing_segment(request)
    preview = _preview_context(rules, segment)
    tree = builder.builder_tree(rules, preview.get("errors", ()), _segment_choices(segment))
    node = _find(tree, path) if path is not None else None
    if path is not None and node is None:
        with_tree = True
    main_ids = set(tree.iter_ids()) if with_tree else set(node.iter_ids()) if node is not None else set()
    context = {
        "preview": preview, "tree": tree, "node": node, "with_tree": with_tree, "field_menu": builder.field_menu(),
        "segment": segment,
        "node_errors": [(each.id, each.error) for each in _walk(tree) if each.id not in main_ids],
    }
    return render(request, "segments/partials/builder_update.html", context)


def _walk(tree: builder.BuilderNode):
    yield tree
    for child in tree.children:
        yield from _walk(child)


@requires_role("marketer")
@require_POST
def builder_preview(request, workspace_slug):
    """htmx: the live count and sample for the rules in the builder form."""
    return _preview_response(request, builder.rules_from_form(request.POST))


@requires_role("marketer")
@require_POST
def builder_condition(request, workspace_slug):
    """htmx: one condition re-rendered after its field or operator changed (new widgets), plus the preview."""
    path = builder.changed_path(request.POST)
    rules = builder.rules_from_form(request.POST)
    if path is None:
        return _preview_response(request, rules, with_tree=True)
    rules = builder.change_condition(rules, path, request.POST.get("changed", "field"))
    return _preview_response(request, rules, path=path)


@requires_role("marketer")
@require_POST
def builder_tree(request, workspace_slug):
    """htmx: the whole tree after adding or removing a condition or group, plus the preview."""
    rules = builder.apply_action(builder.rules_from_form(request.POST), request.POST.get("action", ""))
    return _preview_response(request, rules, with_tree=True)


def _find(tree: builder.BuilderNode, path) -> builder.BuilderNode | None:
    if tree.path == path:
        return tree
    for child in tree.children:
        found = _find(child, path)
        if found is not None:
            return found
    return None


# --- Actions on a segment ------------------------------------------------------------------------------
# The segment is looked up before the method is checked, so another workspace's id is a 404 whatever the method.


@requires_role("marketer")
def copy(request, workspace_slug, segment_id):
    """Copy a segment (say, a built-in) into a new dynamic one and open it in the builder."""
    original = _segment(segment_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    duplicate = copy_segment(original, user=request.user)
    messages.success(request, f"Copied “{original.name}”: change the rules and save.")
    return redirect("segments:edit", workspace_slug=workspace_slug, segment_id=duplicate.pk)


@requires_role("marketer")
def snapshot(request, workspace_slug, segment_id):
    """Freeze who is in a segment now: a new frozen copy, or a fresh snapshot of a frozen segment's rules."""
    segment = _segment(segment_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        if segment.is_frozen and not segment.is_builtin and segment.rules.get("rules"):
            count = write_snapshot(segment, segment.rules)
            messages.success(request, f"New snapshot: {count:,} customers as of now.")
            target = segment
        else:
            target = freeze_copy(segment, user=request.user)
            messages.success(request, f"Froze {target.members.count():,} customers into “{target.name}”.")
    except InvalidRules as invalid:
        messages.error(request, f"The rules need fixing first: {invalid}")
        target = segment
    return redirect("segments:detail", workspace_slug=workspace_slug, segment_id=target.pk)


@requires_role("marketer")
def delete(request, workspace_slug, segment_id):
    segment = _segment(segment_id)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        delete_segment(segment)
    except SegmentInUse as reason:
        messages.error(request, f"“{segment.name}” was not deleted: {reason}")
        return redirect("segments:detail", workspace_slug=workspace_slug, segment_id=segment.pk)
    messages.success(request, f"Deleted “{segment.name}”.")
    return redirect("segments:index", workspace_slug=workspace_slug)


@requires_role("marketer")
def upload(request, workspace_slug):
    """Make a frozen segment from an uploaded list of shop customer ids or e-mail addresses."""
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload_file = form.cleaned_data["file"]
        try:
            segment, report = frozen_segment_from_upload(
                form.cleaned_data["name"], upload_file.read(), filename=upload_file.name,
                description=form.cleaned_data["description"], user=request.user,
            )
        except UploadError as error:
            form.add_error("file", str(error))
        else:
            return render(request, "segments/upload_report.html",
                          {"section": "segments", "segment": segment, "report": report})
    status = 400 if request.method == "POST" else 200
    return render(request, "segments/upload.html", {"section": "segments", "form": form}, status=status)


EXPORT_COLUMNS = ["id", "external_id", "email", "phone", "first_name", "last_name", "locale", "time_zone",
                  "email_opt_in", "sms_opt_in", "metrics__stage", "metrics__revenue", "metrics__order_count",
                  "metrics__last_order_at"]
EXPORT_HEADER = ["id", "external_id", "email", "phone", "first_name", "last_name", "locale", "time_zone",
                 "email_opt_in", "sms_opt_in", "stage", "revenue", "order_count", "last_order_at"]
EXPORT_CHUNK = 2000


class _Echo:
    def write(self, value):
        return value


def export_lines(workspace_id: int, segment_id: int, chunk: int = EXPORT_CHUNK):
    """Yield the CSV lines of a segment's members, keyset-paged; each chunk in its own tenant scope.

    The response streams after the view's scope has ended, and no transaction stays open while the client
    reads. A dynamic segment is evaluated per chunk (it may move a little while a large export streams).
    """
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow(EXPORT_HEADER)
    last_id = 0
    now = timezone.now()
    while True:
        with tenant_scope(workspace_id):
            segment = Segment.objects.get(pk=segment_id)
            rows = list(segment_members(segment, now=now).filter(pk__gt=last_id).order_by("pk")
                        .values_list(*EXPORT_COLUMNS)[:chunk])
        if not rows:
            return
        last_id = rows[-1][0]
        yield "".join(writer.writerow([_export_cell(value) for value in row]) for row in rows)


def _export_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return escape_formula(str(value))


@requires_role("marketer")
def export(request, workspace_slug, segment_id):
    """Stream a segment's members as CSV (UTF-8 with BOM; cells that look like formulas are escaped)."""
    segment = _segment(segment_id)
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET"])
    try:
        segment_members(segment)
    except InvalidRules as invalid:
        messages.error(request, f"The rules need fixing before an export: {invalid}")
        return redirect("segments:detail", workspace_slug=workspace_slug, segment_id=segment.pk)
    response = StreamingHttpResponse(export_lines(request.workspace.pk, segment.pk),
                                     content_type="text/csv; charset=utf-8")
    filename = f"segment-{segment.pk}-{timezone.now():%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
