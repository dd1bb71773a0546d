"""The revenue in cents as a stored generated column with an index (tenant, revenue_cents, customer): under
row-level security only leakproof comparisons reach an index, and bigint ones are while numeric ones (and the
numeric-to-float cast) are not, so a spend range on the customer list becomes an index range instead of a
filter over every metrics row of the workspace. PostgreSQL computes the column; the write-back is unchanged."""
import django.db.models.expressions
import django.db.models.functions.comparison
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('crm_site', '0002_row_level_security'),
        ('customers', '0005_pages_list_search_keys'),
        ('lifecycle', '0007_metrics_first_seen'),
    ]

    operations = [
        migrations.AddField(
            model_name='customermetrics',
            name='revenue_cents',
            field=models.GeneratedField(db_persist=True, expression=django.db.models.functions.comparison.Cast(django.db.models.expressions.CombinedExpression(models.F('revenue'), '*', models.Value(100)), models.BigIntegerField()), help_text='The revenue in cents (exact), for index range scans of a spend range.', output_field=models.BigIntegerField()),
        ),
        migrations.AddIndex(
            model_name='customermetrics',
            index=models.Index(fields=['tenant', 'revenue_cents', 'customer'], name='metrics_revenue_cents'),
        ),
    ]
