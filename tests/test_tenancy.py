"""Tenants never see each other: the scoped manager fails closed, and PostgreSQL row-level security is the second wall."""

import pytest
from django.db import IntegrityError, connection, transaction

from crm_site.tenancy import TenantScopeError, platform_scope, tenant_models, tenant_scope
from customers.models import Customer
from tests.factories import CustomerFactory


@pytest.mark.django_db
def test_unscoped_query_of_a_tenant_model_raises():
    with pytest.raises(TenantScopeError):
        Customer.objects.count()


@pytest.mark.django_db
def test_saving_a_tenant_row_outside_any_scope_raises():
    with pytest.raises(TenantScopeError):
        Customer(email="nobody@example.org").save()


@pytest.mark.django_db
def test_scope_shows_only_the_workspace_rows(workspace, other_workspace):
    mine = CustomerFactory(tenant=workspace, email="ann@example.org")
    CustomerFactory(tenant=other_workspace, email="bob@example.org")
    with tenant_scope(workspace):
        assert list(Customer.objects.values_list("email", flat=True)) == ["ann@example.org"]
        assert not Customer.objects.filter(email="bob@example.org").exists()
        # A row created in scope belongs to the workspace in scope.
        created = Customer.objects.create(email="cid@example.org")
    assert created.tenant_id == workspace.pk
    with tenant_scope(other_workspace):
        assert not Customer.objects.filter(pk=mine.pk).exists()
    with platform_scope():
        assert Customer.objects.count() == 3


@pytest.mark.django_db
def test_nested_scopes_restore_the_outer_workspace(workspace, other_workspace):
    CustomerFactory(tenant=workspace)
    with tenant_scope(workspace):
        with tenant_scope(other_workspace):
            assert Customer.objects.count() == 0
        assert Customer.objects.count() == 1


@pytest.mark.django_db
def test_same_email_is_allowed_in_two_workspaces_but_not_twice_in_one(workspace, other_workspace):
    CustomerFactory(tenant=workspace, email="same@example.org")
    CustomerFactory(tenant=other_workspace, email="same@example.org")
    with pytest.raises(IntegrityError), transaction.atomic():
        CustomerFactory(tenant=workspace, email="same@example.org")


def _raw_emails():
    with connection.cursor() as cursor:
        cursor.execute("SELECT email FROM customers_customer ORDER BY email")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.postgres
@pytest.mark.django_db
def test_database_role_is_subject_to_row_level_security(is_superuser_db):
    assert not is_superuser_db, "the app must connect as a role without SUPERUSER/BYPASSRLS, or RLS is void"


@pytest.mark.postgres
@pytest.mark.django_db
def test_raw_sql_with_no_tenant_set_returns_no_rows(workspace, other_workspace):
    CustomerFactory(tenant=workspace, email="ann@example.org")
    CustomerFactory(tenant=other_workspace, email="bob@example.org")
    with transaction.atomic():
        assert _raw_emails() == []
    with tenant_scope(workspace):
        assert _raw_emails() == ["ann@example.org"]
    with tenant_scope(other_workspace):
        assert _raw_emails() == ["bob@example.org"]
    # The setting is transaction-local: after the scope nothing is visible again.
    assert _raw_emails() == []


@pytest.mark.postgres
@pytest.mark.django_db
def test_cross_tenant_insert_is_rejected_by_the_database(workspace, other_workspace):
    from django.db.utils import ProgrammingError

    with pytest.raises(ProgrammingError, match="row-level security"), tenant_scope(workspace):
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO customers_customer (tenant_id, external_id, email, phone, first_name, last_name,"
                " time_zone, locale, attributes, email_opt_in, sms_opt_in, first_seen_at, created_at, updated_at)"
                " VALUES (%s, '', 'x@example.org', '', '', '', '', '', '{}', false, false, now(), now(), now())",
                [other_workspace.pk],
            )


@pytest.mark.postgres
@pytest.mark.django_db
def test_every_tenant_table_has_forced_row_level_security_and_tenant_led_indexes():
    models = tenant_models()
    assert len(models) >= 9
    with connection.cursor() as cursor:
        for model in models:
            table = model._meta.db_table
            cursor.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = %s", [table])
            assert cursor.fetchone() == (True, True), f"{table} lacks ENABLE + FORCE ROW LEVEL SECURITY"
            cursor.execute("SELECT count(*) FROM pg_policies WHERE tablename = %s", [table])
            assert cursor.fetchone()[0] >= 1, f"{table} has no policy"
            # The policy reads its settings once per statement (two InitPlans), not once for every row it checks.
            cursor.execute(f"EXPLAIN SELECT 1 FROM {connection.ops.quote_name(table)}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert plan.count("InitPlan") == 2, f"{table}'s policy reads its settings per row:\n{plan}"
            for index in model._meta.indexes:
                assert index.fields[0] in ("tenant", "-tenant"), f"{table}.{index.name} does not lead with tenant"
            for constraint in model._meta.constraints:
                if hasattr(constraint, "fields") and constraint.fields:
                    assert constraint.fields[0] == "tenant", f"{table}.{constraint.name} is not per tenant"
