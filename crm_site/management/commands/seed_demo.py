"""`manage.py seed_demo`: the demo workspaces and users of `make run`. Safe to re-run; --reset rebuilds them.

Each new workspace also gets its first lifecycle refresh, so the demo opens with stages, flags and reasons.
"""

import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from crm_site.demo_data import COFFEE_CATALOGUE, TEA_CATALOGUE, delete_workspace, seed_workspace
from crm_site.models import Membership, Role, Workspace
from crm_site.tenancy import tenant_scope
from lifecycle.runs import refresh_workspace

DEMO_PASSWORD = "rapport-demo"
DEMO_WORKSPACES = (
    # slug, name, time zone, postal address, catalogue, share of --customers, seed offset
    ("demo", "Demo Coffee Roasters", "Europe/Berlin", "Demo Coffee Roasters GmbH, Röstereistraße 1, 10115 Berlin",
     COFFEE_CATALOGUE, 1.0, 0),
    ("tea", "Northwind Tea House", "Europe/Vienna", "Northwind Tea House, Teegasse 7, 1010 Wien",
     TEA_CATALOGUE, 0.125, 1),
)


class Command(BaseCommand):
    help = (
        "Create the demo workspaces (Demo Coffee Roasters, Northwind Tea House) with realistic customers, orders "
        f"and consent, the superuser 'demo' and the read-only user 'viewer' (password '{DEMO_PASSWORD}'). "
        "Workspaces that already hold customers are left as they are unless --reset."
    )

    def add_arguments(self, parser):
        parser.add_argument("--customers", type=int, default=3000, help="Customers of the main demo workspace.")
        parser.add_argument("--seed", type=int, default=2024, help="Random seed: the same seed gives the same data.")
        parser.add_argument("--reset", action="store_true", help="Delete the demo workspaces and build them anew.")

    def handle(self, *, customers, seed, reset, verbosity, **options):
        if customers < 10:
            raise CommandError("--customers must be at least 10.")
        users = self._ensure_users(reset=reset)
        for slug, name, time_zone, address, catalogue, share, seed_offset in DEMO_WORKSPACES:
            existing = Workspace.objects.filter(slug=slug).first()
            if existing is not None and reset:
                delete_workspace(existing)
                existing = None
            if existing is not None and self._has_customers(existing):
                self.stdout.write(f"Workspace '{existing.name}' ({slug}) already has data; kept (--reset rebuilds it).")
                workspace = existing
            else:
                workspace = existing or Workspace.objects.create(
                    name=name, slug=slug, time_zone=time_zone, currency="EUR", postal_address=address
                )
                started = time.monotonic()
                summary = seed_workspace(
                    workspace, customers=max(10, round(customers * share)), seed=seed + seed_offset,
                    catalogue=catalogue, note_author=users["demo"],
                )
                # Stages and flags straight away, rather than after the first nightly refresh.
                refreshed = refresh_workspace(workspace)
                self.stdout.write(
                    f"Seeded '{workspace.name}' ({slug}) in {time.monotonic() - started:.1f} s: {summary.describe()}; "
                    f"lifecycle stages computed for {refreshed.customers:,} customers."
                )
            Membership.objects.get_or_create(workspace=workspace, user=users["demo"], defaults={"role": Role.OWNER})
        demo_workspace = Workspace.objects.get(slug=DEMO_WORKSPACES[0][0])
        Membership.objects.get_or_create(workspace=demo_workspace, user=users["viewer"], defaults={"role": Role.VIEWER})
        if verbosity:
            self.stdout.write(self.style.SUCCESS(
                f"Sign in as demo / {DEMO_PASSWORD} (owner of both workspaces, superuser) "
                f"or viewer / {DEMO_PASSWORD} (read-only)."
            ))

    @staticmethod
    def _has_customers(workspace) -> bool:
        from customers.models import Customer

        with tenant_scope(workspace):
            return Customer.objects.exists()

    @staticmethod
    @transaction.atomic
    def _ensure_users(*, reset: bool) -> dict:
        """Return the demo users, created when missing; their password is (re)set on creation and on --reset."""
        user_model = get_user_model()
        users = {}
        for username, first_name, is_superuser in (("demo", "Dana", True), ("viewer", "Vic", False)):
            user, created = user_model.objects.get_or_create(
                username=username,
                defaults={"email": f"{username}@example.com", "first_name": first_name, "last_name": "Demo"},
            )
            if created or reset:
                user.set_password(DEMO_PASSWORD)
                user.is_superuser = user.is_staff = is_superuser
                user.save()
            users[username] = user
        return users
