"""Indexes for segment counts over a million customers (bench/segments.py).

* ``lifecycle_customermetrics (tenant_id, stage, last_order_at)``: the most common segment starts from a stage
  and a recency window ("at risk, ordered in the last 180 days"); the compiled rules name the tenant of the
  metrics row, so this is a range scan instead of a pass over every metrics row.
* Statistics on ``upper(category)`` of products (PostgreSQL only): "bought from category" compares
  case-insensitively, and without them the planner guesses one product per category.

RunPython, not AddIndex: the metrics model belongs to lifecycle, and the index serves segments' queries.
"""

from django.db import migrations

METRICS_INDEX = "segments_metrics_stage_last_order"
CATEGORY_STATISTICS = "segments_product_upper_category"


def create(apps, schema_editor):
    execute = schema_editor.execute
    execute(f"CREATE INDEX IF NOT EXISTS {METRICS_INDEX} "
            "ON lifecycle_customermetrics (tenant_id, stage, last_order_at)")
    if schema_editor.connection.vendor == "postgresql":
        execute(f"CREATE STATISTICS IF NOT EXISTS {CATEGORY_STATISTICS} ON (upper(category::text)) "
                "FROM customers_product")


def drop(apps, schema_editor):
    schema_editor.execute(f"DROP INDEX IF EXISTS {METRICS_INDEX}")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP STATISTICS IF EXISTS {CATEGORY_STATISTICS}")


class Migration(migrations.Migration):
    dependencies = [
        ("segments", "0003_segments_builtin"),
        ("lifecycle", "0003_lifecycle_rewards_runs"),
        ("customers", "0001_initial"),
    ]

    operations = [migrations.RunPython(create, drop)]
