"""Tenancy: the one scoped entry point to tenant-owned rows.

* ``tenant_scope(workspace)`` enters a workspace: it sets a context variable read by ``TenantManager``
  and, inside a transaction, the PostgreSQL setting ``app.tenant_id`` that the row-level security
  policies read (``set_config(..., true)``, so it never outlives the transaction).
* ``TenantModel.objects`` filters by the current workspace and raises ``TenantScopeError`` outside a
  scope (fail closed). ``platform_scope()`` is the explicit, audited way to see every workspace
  (Django admin for superusers, fan-out jobs).
* ``WorkspaceMiddleware`` resolves ``/w/<slug>/`` once per request, checks membership and the view's
  minimum role, and runs the view inside the workspace scope and the workspace's time zone (pages show
  and forms read times in the shop's local time). An id from another workspace is a 404 because every
  view query goes through the scoped manager.
"""

from __future__ import annotations

import contextvars
import functools
import zoneinfo
from contextlib import contextmanager

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import connection, models, transaction
from django.db.migrations.operations.base import Operation
from django.http import Http404
from django.urls import Resolver404, resolve
from django.utils import timezone

ALL_TENANTS = object()  # sentinel: platform scope, every workspace visible

_current_tenant: contextvars.ContextVar = contextvars.ContextVar("rapport_tenant", default=None)

ROLE_RANK = {"viewer": 0, "marketer": 1, "admin": 2, "owner": 3}


class TenantScopeError(RuntimeError):
    """A tenant-owned table was queried with no workspace in scope."""


def current_tenant_id() -> int | None:
    """Return the id of the workspace in scope, or None (outside any scope or in the platform scope)."""
    value = _current_tenant.get()
    return None if value is ALL_TENANTS else value


def in_platform_scope() -> bool:
    """Return True while ``platform_scope()`` is active."""
    return _current_tenant.get() is ALL_TENANTS


# The transaction-local settings the row-level security policies read; parameters from tenant_settings().
TENANT_SETTINGS_SQL = "set_config('app.tenant_id', %s, true), set_config('app.bypass_rls', %s, true)"


def tenant_settings(tenant_id, bypass: bool = False) -> list[str]:
    """Return the parameters of TENANT_SETTINGS_SQL for a workspace (or none, or every one with ``bypass``)."""
    return ["" if tenant_id is None else str(tenant_id), "on" if bypass else "off"]


def _set_db_tenant(tenant_id, bypass: bool) -> None:
    if not settings.IS_POSTGRES:
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {TENANT_SETTINGS_SQL}", tenant_settings(tenant_id, bypass))


def _restore(previous) -> None:
    if connection.in_atomic_block and not connection.needs_rollback:
        if previous is ALL_TENANTS:
            _set_db_tenant(None, True)
        else:
            _set_db_tenant(previous, False)


@contextmanager
def tenant_scope(workspace):
    """Run the block as ``workspace`` (a Workspace or its id), inside one transaction.

    Nested scopes are savepoints; leaving one restores the outer workspace. Long jobs that commit in
    batches open one scope per batch.
    """
    tenant_id = getattr(workspace, "pk", workspace)
    if tenant_id is None:
        raise TenantScopeError("tenant_scope() needs a saved workspace")
    previous = _current_tenant.get()
    token = _current_tenant.set(int(tenant_id))
    try:
        with transaction.atomic():
            _set_db_tenant(int(tenant_id), False)
            yield
            # On an error the savepoint or transaction rolls back, which reverts the setting by itself.
            _restore(previous)
    finally:
        _current_tenant.reset(token)


@contextmanager
def platform_scope():
    """Run the block with every workspace visible: platform admins and fan-out jobs only."""
    previous = _current_tenant.get()
    token = _current_tenant.set(ALL_TENANTS)
    try:
        with transaction.atomic():
            _set_db_tenant(None, True)
            yield
            _restore(previous)
    finally:
        _current_tenant.reset(token)


@contextmanager
def tenant_transaction():
    """Open a (nested) transaction that carries the current scope to the database; for batch commits."""
    value = _current_tenant.get()
    if value is None:
        raise TenantScopeError("tenant_transaction() outside a tenant scope")
    with transaction.atomic():
        _set_db_tenant(None if value is ALL_TENANTS else value, value is ALL_TENANTS)
        yield


class TenantQuerySet(models.QuerySet):
    pass


class TenantManager(models.Manager.from_queryset(TenantQuerySet)):
    """The scoped entry point: rows of the workspace in scope; raises outside any scope."""

    def get_queryset(self):
        value = _current_tenant.get()
        queryset = super().get_queryset()
        if value is ALL_TENANTS:
            return queryset
        if value is None:
            raise TenantScopeError(
                f"{self.model.__name__} queried outside a tenant scope; use tenant_scope(workspace)."
            )
        return queryset.filter(tenant_id=value)


class TenantModel(models.Model):
    """Base of every tenant-owned table: a non-null workspace, first in every index."""

    tenant = models.ForeignKey("crm_site.Workspace", on_delete=models.CASCADE, related_name="+", db_index=False)

    objects = TenantManager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if self.tenant_id is None:
            tenant_id = current_tenant_id()
            if tenant_id is None:
                raise TenantScopeError(f"{type(self).__name__} saved outside a tenant scope")
            self.tenant_id = tenant_id
        super().save(*args, **kwargs)


def tenant_models() -> list[type[models.Model]]:
    """Return every concrete tenant-owned model class."""
    from django.apps import apps

    return [m for m in apps.get_models() if issubclass(m, TenantModel) and not m._meta.abstract]


# --- PostgreSQL row-level security as a migration operation -------------------------------------

# Each setting is read in a sub-select, which PostgreSQL evaluates once per statement (an InitPlan) instead of
# calling current_setting() twice for every row it checks: a GROUP BY over 10M orders takes half the time.
RLS_PREDICATE = (
    "((SELECT current_setting('app.bypass_rls', true)) = 'on' "
    "OR tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::bigint))"
)


class EnableRowLevelSecurity(Operation):
    """ENABLE + FORCE row-level security on a tenant table, policy on ``app.tenant_id``. No-op off PostgreSQL."""

    reduces_to_sql = True
    reversible = True

    def __init__(self, model_name: str):
        self.model_name = model_name

    def state_forwards(self, app_label, state):
        pass

    def _table(self, app_label, state):
        return state.apps.get_model(app_label, self.model_name)._meta.db_table

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name(self._table(app_label, to_state))
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        schema_editor.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING {RLS_PREDICATE} WITH CHECK {RLS_PREDICATE}"
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name(self._table(app_label, from_state))
        schema_editor.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

    def describe(self):
        return f"Enable row-level security on {self.model_name}"

    def deconstruct(self):
        return (self.__class__.__qualname__, [self.model_name], {})


# --- Requests -----------------------------------------------------------------------------------


def requires_role(role: str):
    """Mark a view with the minimum workspace role it needs; WorkspaceMiddleware enforces it."""
    if role not in ROLE_RANK:
        raise ValueError(f"unknown role {role!r}")

    def decorate(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            return view(*args, **kwargs)

        wrapped.min_role = role
        return wrapped

    return decorate


def view_min_role(view_func, method: str) -> str:
    """Return the role a request needs: the view's mark, else viewer to read and marketer to write.

    A write (any method but GET/HEAD/OPTIONS) needs at least marketer whatever the mark says, so a viewer
    can never change anything in a workspace.
    """
    role = getattr(view_func, "min_role", None)
    if role is None and hasattr(view_func, "view_class"):
        role = getattr(view_func.view_class, "min_role", None)
    if method in ("GET", "HEAD", "OPTIONS"):
        return role or "viewer"
    return max(role or "marketer", "marketer", key=ROLE_RANK.__getitem__)


def workspace_time_zone(workspace) -> zoneinfo.ZoneInfo:
    """Return the workspace's time zone; UTC when its name is empty or unknown (a page never fails on it)."""
    try:
        return zoneinfo.ZoneInfo(workspace.time_zone or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder name such as "Europe"
        return zoneinfo.ZoneInfo("UTC")


class WorkspaceMiddleware:
    """Resolve the workspace of /w/<slug>/ URLs, check membership and role once, run the view in scope."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.workspace = None
        request.membership = None
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return self.get_response(request)
        slug = match.kwargs.get("workspace_slug")
        if slug is None:
            if request.path_info.startswith("/admin/") and getattr(request.user, "is_superuser", False):
                with platform_scope():
                    response = self.get_response(request)
                    if response.status_code >= 500:
                        transaction.set_rollback(True)
                    return response
            return self.get_response(request)
        if not request.user.is_authenticated:
            from django.contrib.auth.views import redirect_to_login

            return redirect_to_login(request.get_full_path())
        from crm_site.models import Membership

        membership = (
            Membership.objects.select_related("workspace")
            .filter(workspace__slug=slug, user=request.user, workspace__is_active=True)
            .first()
        )
        if membership is None:
            raise Http404("No such workspace")
        needed = view_min_role(match.func, request.method)
        if ROLE_RANK[membership.role] < ROLE_RANK[needed]:
            raise PermissionDenied(f"This needs the {needed} role.")
        request.workspace = membership.workspace
        request.membership = membership
        if request.session.get("last_workspace") != slug:  # unchanged sessions are not written back
            request.session["last_workspace"] = slug
        with timezone.override(workspace_time_zone(membership.workspace)), tenant_scope(membership.workspace):
            response = self.get_response(request)
            if hasattr(response, "render") and not getattr(response, "is_rendered", True):
                response.render()
            if response.status_code >= 500:
                # The view's exception became a response inside this transaction: undo its half-done writes.
                transaction.set_rollback(True)
            return response
