"""manage.py ensure_builtin_segments: give every workspace the built-in segments (idempotent)."""

from django.core.management.base import BaseCommand

from crm_site.models import Workspace
from segments.builtin import ensure_builtin_segments


class Command(BaseCommand):
    help = "Create missing built-in segments (and refresh their definitions) in every workspace."

    def add_arguments(self, parser):
        parser.add_argument("--workspace", help="Only this workspace slug.")

    def handle(self, *args, workspace=None, **options):
        workspaces = Workspace.objects.order_by("pk")
        if workspace:
            workspaces = workspaces.filter(slug=workspace)
        created = 0
        for each in workspaces:
            created += ensure_builtin_segments(each)
        self.stdout.write(f"Created {created} built-in segments in {workspaces.count()} workspaces.")
