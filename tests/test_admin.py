"""Django admin: every model is there, searchable and filterable, for platform admins (superusers) across all
workspaces; workspace staff see none of it. Runs on PostgreSQL, where the superuser's view of every workspace
goes through the row-level security bypass of platform_scope()."""

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from crm_site.models import Role
from crm_site.tenancy import TenantModel, tenant_scope
from customers.models import Customer, Order, OrderLine
from tests.factories import CustomerFactory, MembershipFactory, OrderFactory, ProductFactory, UserFactory
from tests.isolation_registry import MODEL_MAKERS, make_object

OUR_APPS = ["crm_site", "customers", "lifecycle", "segments", "campaigns"]
REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label)


def _label(model):
    return model._meta.label


def admin_url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def test_every_model_of_our_apps_is_registered_in_admin():
    missing = [
        model._meta.label
        for label in OUR_APPS
        for model in apps.get_app_config(label).get_models()
        if not admin.site.is_registered(model)
    ]
    assert not missing, f"register these models in their app's admin.py (TenantAdmin or PlatformAdmin): {missing}"


def test_every_model_of_ours_is_for_superusers_only():
    from crm_site.admin import PlatformAdmin

    ours = [m for m in REGISTERED if m._meta.app_label in OUR_APPS]
    not_guarded = [m._meta.label for m in ours if not isinstance(admin.site._registry[m], PlatformAdmin)]
    assert not not_guarded, f"these admins must derive from crm_site.admin.TenantAdmin or PlatformAdmin: {not_guarded}"


def test_every_registered_model_has_a_maker_for_these_tests():
    missing = [model._meta.label for model in REGISTERED if model not in MODEL_MAKERS]
    assert not missing, f"add a maker for these models in tests/isolation_registry.py (@makes(Model)): {missing}"


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("model", REGISTERED, ids=_label)
def test_changelist_change_and_add_pages_load_for_a_superuser(admin_client, workspace, other_workspace, model):
    mine, theirs = make_object(model, workspace), make_object(model, other_workspace)

    response = admin_client.get(admin_url(model, "changelist"))
    assert response.status_code == 200
    shown = {row.pk for row in response.context["cl"].result_list}
    if issubclass(model, TenantModel):
        assert {mine.pk, theirs.pk} <= shown, "a superuser sees the rows of every workspace"

    for obj in (mine, theirs):
        response = admin_client.get(admin_url(model, "change", obj.pk))
        assert response.status_code == 200, f"change page of {model._meta.label} {obj.pk}"
    if admin.site._registry[model].has_add_permission(response.wsgi_request):
        assert admin_client.get(admin_url(model, "add")).status_code == 200


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("model", [m for m in REGISTERED if m._meta.app_label in OUR_APPS], ids=_label)
def test_changelist_queries_do_not_grow_with_rows(admin_client, workspace, other_workspace, model):
    for ws in (workspace, other_workspace):
        make_object(model, ws)
    url = admin_url(model, "changelist")
    admin_client.get(url)  # warm caches (content types, sessions)
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    for _ in range(3):
        for ws in (workspace, other_workspace):
            make_object(model, ws)
    with CaptureQueriesContext(connection) as many:
        admin_client.get(url)
    assert len(many) == len(few), f"{model._meta.label} changelist: N+1 ({len(few)} queries, then {len(many)})"


@pytest.mark.postgres
@pytest.mark.django_db
def test_superuser_searches_and_filters_customers_across_workspaces(admin_client, workspace, other_workspace):
    CustomerFactory(tenant=workspace, email="ann@acme.example")
    CustomerFactory(tenant=other_workspace, email="bob@globex.example")
    page = admin_client.get("/admin/customers/customer/").content.decode()
    assert "ann@acme.example" in page and "bob@globex.example" in page

    page = admin_client.get("/admin/customers/customer/?q=globex").content.decode()
    assert "bob@globex.example" in page and "ann@acme.example" not in page

    page = admin_client.get(f"/admin/customers/customer/?tenant__id__exact={workspace.pk}").content.decode()
    assert "ann@acme.example" in page and "bob@globex.example" not in page


@pytest.mark.postgres
@pytest.mark.django_db
def test_superuser_edits_a_customer_of_any_workspace(admin_client, other_workspace):
    customer = CustomerFactory(tenant=other_workspace, email="cid@globex.example", first_name="Cid")
    response = admin_client.post(
        admin_url(Customer, "change", customer.pk),
        {"external_id": customer.external_id, "email": "cid@globex.example", "first_name": "Sid",
         "first_seen_at_0": "2024-01-02", "first_seen_at_1": "10:00:00", "attributes": "{}"},
    )
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    with tenant_scope(other_workspace):
        assert Customer.objects.get(pk=customer.pk).first_name == "Sid"


@pytest.mark.postgres
@pytest.mark.django_db
def test_an_order_line_added_inline_belongs_to_the_orders_workspace(admin_client, other_workspace):
    order = OrderFactory(tenant=other_workspace)
    product = ProductFactory(tenant=other_workspace)
    data = {
        "customer": order.customer_id, "external_id": order.external_id,
        "placed_at_0": "2024-03-01", "placed_at_1": "12:00:00", "total": "10.00", "refunded_amount": "0",
        "currency": "EUR", "channel": "", "status": "placed",
        "lines-TOTAL_FORMS": "1", "lines-INITIAL_FORMS": "0", "lines-MIN_NUM_FORMS": "0", "lines-MAX_NUM_FORMS": "1000",
        "lines-0-product": product.pk, "lines-0-sku": product.sku, "lines-0-quantity": "2",
        "lines-0-unit_price": "5.00", "lines-0-line_total": "10.00", "lines-0-returned_quantity": "0",
    }
    response = admin_client.post(admin_url(Order, "change", order.pk), data)
    assert response.status_code == 302, response.context and response.context["inline_admin_formsets"][0].formset.errors
    with tenant_scope(other_workspace):
        line = OrderLine.objects.get(order=order)
    assert (line.tenant_id, line.quantity) == (other_workspace.pk, 2)


@pytest.mark.postgres
@pytest.mark.django_db
def test_linking_an_order_to_another_workspaces_customer_is_refused(admin_client, workspace, other_workspace):
    order = OrderFactory(tenant=workspace)
    stranger = CustomerFactory(tenant=other_workspace)
    response = admin_client.post(
        admin_url(Order, "change", order.pk),
        {"customer": stranger.pk, "external_id": order.external_id, "placed_at_0": "2024-03-01",
         "placed_at_1": "12:00:00", "total": "10.00", "refunded_amount": "0", "currency": "EUR", "status": "placed",
         "lines-TOTAL_FORMS": "0", "lines-INITIAL_FORMS": "0", "lines-MIN_NUM_FORMS": "0", "lines-MAX_NUM_FORMS": "1000"},
    )
    assert response.status_code == 200
    assert "belongs to another workspace" in response.content.decode()
    original_customer_id = order.customer_id
    with tenant_scope(workspace):
        order.refresh_from_db()
    assert order.customer_id == original_customer_id


@pytest.mark.postgres
@pytest.mark.django_db
def test_workspace_staff_with_every_permission_see_no_tenant_data_in_admin(client, workspace, other_workspace):
    staff = UserFactory(is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(content_type__app_label__in=OUR_APPS))
    MembershipFactory(workspace=workspace, user=staff, role=Role.OWNER)
    CustomerFactory(tenant=workspace, email="ann@acme.example")
    CustomerFactory(tenant=other_workspace, email="bob@globex.example")
    client.force_login(staff)

    index = client.get("/admin/")
    assert index.status_code == 200
    assert b"Customers" not in index.content and b"Workspaces" not in index.content
    for model in (Customer, Order):
        response = client.get(admin_url(model, "changelist"))
        assert response.status_code == 403
        assert b"@acme.example" not in response.content and b"@globex.example" not in response.content
    customer_id = CustomerFactory(tenant=workspace).pk
    assert client.get(admin_url(Customer, "change", customer_id)).status_code == 403


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_superuser_outside_admin_has_no_bypass_into_workspaces(admin_client, workspace):
    # Platform access is the admin only; a workspace's pages need a membership like anyone else's.
    assert admin_client.get(f"/w/{workspace.slug}/customers/").status_code == 404


@pytest.mark.postgres
@pytest.mark.django_db
def test_periodic_tasks_are_editable_in_admin(admin_client, workspace):
    from django_celery_beat.models import PeriodicTask

    task = make_object(PeriodicTask, workspace)
    response = admin_client.get(admin_url(PeriodicTask, "change", task.pk))
    assert response.status_code == 200
    assert b"nightly refresh" in response.content
