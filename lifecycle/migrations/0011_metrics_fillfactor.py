"""Metrics rows leave a fifth of each page free (fillfactor 80). A nightly refresh rewrites a few per cent of the
rows, most of them for their predictions alone; with room on the page PostgreSQL keeps the new version there and
touches none of the table's indexes (a heap-only update). At 1M rows, 143,000 such updates took 1.9 s against
16.4 s on full pages.

New pages get the room at once; existing rows get it as they are rewritten, or at once with
``VACUUM FULL lifecycle_customermetrics`` (an exclusive lock while it runs: 12 s at 1M rows; see README.md)."""
from django.db import migrations

FILLFACTOR = 80


def leave_room(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE lifecycle_customermetrics SET (fillfactor = {FILLFACTOR})")


def fill_pages(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE lifecycle_customermetrics RESET (fillfactor)")


class Migration(migrations.Migration):

    dependencies = [
        ('lifecycle', '0010_metrics_last_order_covering'),
    ]

    operations = [
        migrations.RunPython(leave_room, fill_pages, elidable=False),
    ]
