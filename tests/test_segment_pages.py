"""Segment pages: the list, the builder's htmx answers, saving dynamic and frozen segments, upload and export."""

import csv
import io
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from crm_site.models import Role
from crm_site.tenancy import tenant_scope
from lifecycle.models import CustomerMetrics
from segments.models import Segment, SegmentMember
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def metrics(customer, **values):
    with tenant_scope(customer.tenant_id):
        return CustomerMetrics.objects.create(customer=customer, tenant_id=customer.tenant_id, **values)


def segment(workspace, **fields):
    with tenant_scope(workspace):
        return Segment.objects.create(**fields)


def builder_form(*conditions, op="and", **extra):
    """POST data of the builder form with one root group holding ``conditions`` (field, operator, value)."""
    data = {"node": ["r"], "r-kind": "group", "r-op": op, **extra}
    for index, (field, operator, value) in enumerate(conditions):
        prefix = f"r-{index}"
        data["node"].append(prefix)
        data.update({f"{prefix}-kind": "condition", f"{prefix}-field": field, f"{prefix}-operator": operator,
                     f"{prefix}-value": value})
    return data


@pytest.fixture
def shop(workspace):
    """Three customers: an at-risk big spender, an active one and a prospect without metrics."""
    ann = CustomerFactory(tenant=workspace, first_name="Ann", last_name="Archer", email="ann@example.org")
    bob = CustomerFactory(tenant=workspace, first_name="Bob", last_name="Baker", email="bob@example.org")
    cid = CustomerFactory(tenant=workspace, first_name="Cid", last_name="Cole", email="=cmd|' /C calc'!A0@example.org")
    metrics(ann, stage="at_risk", revenue=Decimal("480"), order_count=6)
    metrics(bob, stage="active", revenue=Decimal("60"), order_count=1)
    return {"ann": ann, "bob": bob, "cid": cid}


# --- The list -------------------------------------------------------------------------------------------


def test_a_new_workspace_lists_its_built_in_segments(marketer_client, workspace):
    response = marketer_client.get(f"/w/{workspace.slug}/segments/")
    page = response.content.decode()
    for name in ("Heavy users", "New customers", "At risk", "Lapsed", "Reward due", "One-time buyers", "Champions",
                 "Loyal", "Hibernating"):
        assert name in page
    assert page.count("Built-in") == 9


def test_the_list_costs_the_same_queries_for_many_segments(marketer_client, workspace, django_assert_max_num_queries):
    url = f"/w/{workspace.slug}/segments/"
    with CaptureQueriesContext(connection) as few:
        marketer_client.get(url)
    for number in range(15):
        segment(workspace, name=f"Regulars {number}", rules=builder_rules(("stage", "is", "active")))
    with django_assert_max_num_queries(len(few)):
        response = marketer_client.get(url)
    assert response.content.decode().count('hx-trigger="load"') == 24


def test_the_lazy_count_shows_how_many_are_in_a_segment(marketer_client, workspace, shop):
    at_risk = segment(workspace, name="Slipping", rules=builder_rules(("stage", "is", "at_risk")))
    response = marketer_client.get(f"/w/{workspace.slug}/segments/{at_risk.pk}/count/")
    assert '<span class="segment-count">1</span>' in response.content.decode()


def builder_rules(*conditions, op="and"):
    return {"op": op, "rules": [{"field": f, "operator": o, "value": v} for f, o, v in conditions]}


# --- The builder ------------------------------------------------------------------------------------------


def test_the_builder_preview_counts_and_samples_who_matches(marketer_client, workspace, shop):
    response = marketer_client.post(f"/w/{workspace.slug}/segments/builder/preview/",
                                    builder_form(("revenue", "gt", "100")))
    page = response.content.decode()
    assert '<span class="display-6" id="live-count">1</span>' in page
    assert f'href="/w/{workspace.slug}/customers/{shop["ann"].pk}/"' in page
    assert "Bob" not in page


def test_the_builder_preview_puts_each_message_next_to_its_condition(marketer_client, workspace, shop):
    response = marketer_client.post(
        f"/w/{workspace.slug}/segments/builder/preview/",
        builder_form(("revenue", "gt", "lots"), ("stage", "gte", "at_risk"), ("stage", "is", "at_risk")),
    )
    page = response.content.decode()
    assert "Fix the highlighted rules" in page
    assert 'id="error-r-0" role="alert" hx-swap-oob="true">“lots” is not a number.</div>' in page
    assert "“gte” does not apply to Lifecycle stage" in page
    assert 'id="error-r-2" role="alert" hx-swap-oob="true"></div>' in page


def test_changing_the_field_swaps_the_operators_and_value_widget(marketer_client, workspace, shop):
    data = builder_form(("stage", "is", "at_risk"), path="r-0", changed="field")
    data["r-0-field"] = "last_order_at"
    response = marketer_client.post(f"/w/{workspace.slug}/segments/builder/condition/", data)
    page = response.content.decode()
    assert page.lstrip().startswith('<div class="rule-condition')
    assert '<option value="in_last_days" selected>in the last … days</option>' in page
    assert 'type="number"' in page and 'min="1"' in page
    assert 'id="segment-preview" hx-swap-oob="innerHTML"' in page


def test_adding_and_removing_conditions_rerenders_the_tree(marketer_client, workspace, shop):
    url = f"/w/{workspace.slug}/segments/builder/tree/"
    added = marketer_client.post(url, builder_form(("stage", "is", "at_risk"), action="add-group:r"))
    assert 'id="node-r-1"' in added.content.decode() and 'id="node-r-1-0"' in added.content.decode()
    removed = marketer_client.post(url, builder_form(("stage", "is", "at_risk"), ("revenue", "gt", "5"),
                                                     action="remove:r-0"))
    page = removed.content.decode()
    assert 'id="node-r-1"' not in page
    assert '<option value="revenue" selected>' in page


def test_saving_a_dynamic_segment_stores_normalised_rules(marketer_client, workspace, shop):
    response = marketer_client.post(
        f"/w/{workspace.slug}/segments/new/",
        builder_form(("revenue", "gt", "100"), ("stage", "is", "at_risk"), name="Big and slipping", kind="dynamic"),
    )
    with tenant_scope(workspace):
        saved = Segment.objects.get(name="Big and slipping")
    assert response.status_code == 302 and response["Location"] == f"/w/{workspace.slug}/segments/{saved.pk}/"
    assert saved.rules == {"op": "and", "rules": [{"field": "revenue", "operator": "gt", "value": 100},
                                                  {"field": "stage", "operator": "is", "value": "at_risk"}]}
    assert saved.kind == "dynamic" and saved.created_by == marketer_client.user
    page = marketer_client.get(response["Location"]).content.decode()
    assert '<p class="lead" id="member-count">1 customer</p>' in page


def test_saving_invalid_rules_rerenders_the_builder_with_messages(marketer_client, workspace, shop):
    response = marketer_client.post(
        f"/w/{workspace.slug}/segments/new/",
        builder_form(("order_count", "gt", "1.5"), name="Broken", kind="dynamic"),
    )
    assert response.status_code == 400
    assert 'id="error-r-0" role="alert">Number of orders is a whole number.</div>' in response.content.decode()
    with tenant_scope(workspace):
        assert not Segment.objects.filter(name="Broken").exists()


def test_saving_as_frozen_snapshots_todays_members(marketer_client, workspace, shop):
    marketer_client.post(
        f"/w/{workspace.slug}/segments/new/",
        builder_form(("order_count", "gte", "1"), name="Buyers in June", kind="frozen"),
    )
    late = CustomerFactory(tenant=workspace, email="late@example.org")
    metrics(late, order_count=3)
    with tenant_scope(workspace):
        frozen = Segment.objects.get(name="Buyers in June")
        members = set(SegmentMember.objects.filter(segment=frozen).values_list("customer_id", flat=True))
    assert frozen.kind == "frozen" and frozen.frozen_at is not None
    assert members == {shop["ann"].pk, shop["bob"].pk}


def test_a_segment_cannot_include_itself_through_another(marketer_client, workspace):
    first = segment(workspace, name="First", rules=builder_rules(("stage", "is", "active")))
    second = segment(workspace, name="Second", rules=builder_rules(("segment", "in", first.pk)))
    response = marketer_client.post(
        f"/w/{workspace.slug}/segments/{first.pk}/edit/",
        builder_form(("segment", "in", str(second.pk)), name="First", kind="dynamic"),
    )
    assert response.status_code == 400
    assert "These segments include each other in a circle: “First” → “Second”" in response.content.decode()


def test_built_in_segments_are_copied_not_edited(marketer_client, workspace):
    with tenant_scope(workspace):
        heavy = Segment.objects.get(builtin_key="heavy_users")
    edit = marketer_client.get(f"/w/{workspace.slug}/segments/{heavy.pk}/edit/")
    assert edit.status_code == 302
    copied = marketer_client.post(f"/w/{workspace.slug}/segments/{heavy.pk}/copy/")
    with tenant_scope(workspace):
        copy = Segment.objects.get(name="Copy of Heavy users")
    assert copied["Location"] == f"/w/{workspace.slug}/segments/{copy.pk}/edit/"
    assert copy.rules == heavy.rules and not copy.is_builtin
    deleted = marketer_client.post(f"/w/{workspace.slug}/segments/{heavy.pk}/delete/", follow=True)
    assert "Built-in segments cannot be deleted." in deleted.content.decode()


def test_deleting_a_segment_another_refers_to_is_refused(marketer_client, workspace):
    first = segment(workspace, name="First", rules=builder_rules(("stage", "is", "active")))
    segment(workspace, name="Second", rules=builder_rules(("segment", "not_in", first.pk)))
    response = marketer_client.post(f"/w/{workspace.slug}/segments/{first.pk}/delete/", follow=True)
    assert "Segments “Second” refer to this one" in response.content.decode()


def test_a_viewer_sees_segments_but_cannot_build(member_client, workspace, shop):
    viewer = member_client(Role.VIEWER)
    assert viewer.get(f"/w/{workspace.slug}/segments/").status_code == 200
    assert viewer.get(f"/w/{workspace.slug}/segments/new/").status_code == 403
    assert viewer.post(f"/w/{workspace.slug}/segments/builder/preview/", builder_form()).status_code == 403


# --- Frozen lists: snapshots, upload, export ------------------------------------------------------------------


def test_freezing_a_dynamic_segment_makes_a_dated_snapshot(marketer_client, workspace, shop):
    dynamic = segment(workspace, name="Slipping", rules=builder_rules(("stage", "is", "at_risk")))
    marketer_client.post(f"/w/{workspace.slug}/segments/{dynamic.pk}/snapshot/")
    with tenant_scope(workspace):
        frozen = Segment.objects.get(name=f"Slipping — {timezone.localdate():%Y-%m-%d}")
        assert list(SegmentMember.objects.filter(segment=frozen).values_list("customer_id", flat=True)) == [
            shop["ann"].pk]


def test_uploading_a_list_makes_a_frozen_segment_and_reports_unmatched_lines(marketer_client, workspace, shop):
    content = "email\nANN@example.org\n\n" + shop["bob"].external_id + "\nnobody@example.org\nC-unknown\nann@example.org\n"
    response = marketer_client.post(f"/w/{workspace.slug}/segments/upload/", {
        "name": "Fair visitors", "file": SimpleUploadedFile("fair.csv", content.encode(), content_type="text/csv"),
    })
    page = response.content.decode()
    assert "2 of 5 lines matched a customer; 1 repeated a customer already listed." in page
    assert "<td class=\"table-numeric\">5</td><td>nobody@example.org</td>" in page
    assert "<td class=\"table-numeric\">6</td><td>C-unknown</td>" in page
    with tenant_scope(workspace):
        fair = Segment.objects.get(name="Fair visitors")
        assert fair.kind == "frozen" and fair.source == "uploaded file fair.csv"
        assert set(SegmentMember.objects.filter(segment=fair).values_list("customer_id", flat=True)) == {
            shop["ann"].pk, shop["bob"].pk}


def test_an_upload_that_matches_nobody_is_refused_with_a_reason(marketer_client, workspace, shop):
    response = marketer_client.post(f"/w/{workspace.slug}/segments/upload/", {
        "name": "Nobody", "file": SimpleUploadedFile("x.csv", b"ghost@example.org\n", content_type="text/csv"),
    })
    assert response.status_code == 400
    assert "None of the 1 lines matched a customer" in response.content.decode()


def test_export_lists_members_with_formula_cells_escaped(marketer_client, workspace, shop):
    everyone = segment(workspace, name="Everyone", rules=builder_rules(("email", "contains", "@")))
    response = marketer_client.get(f"/w/{workspace.slug}/segments/{everyone.pk}/export.csv")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode("utf-8-sig"))))
    assert sorted(row["first_name"] for row in rows) == ["Ann", "Bob", "Cid"]
    cid = next(row for row in rows if row["first_name"] == "Cid")
    assert cid["email"] == "'=cmd|' /C calc'!A0@example.org"
    ann = next(row for row in rows if row["first_name"] == "Ann")
    assert (ann["stage"], ann["revenue"], ann["order_count"]) == ("at_risk", "480.00", "6")
