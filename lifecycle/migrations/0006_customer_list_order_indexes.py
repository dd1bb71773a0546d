"""Customer-list indexes on the metrics row: each sort key with the customer as its tie-breaker, so keyset pages
by spend or last order (and "lapsed, by last order") are index walks; they replace (tenant, -revenue) and
(tenant, last_order_at), which they cover in both directions."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('crm_site', '0002_row_level_security'),
        ('customers', '0005_pages_list_search_keys'),
        ('lifecycle', '0005_lifecycle_run_charts'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='customermetrics',
            index=models.Index(fields=['tenant', 'revenue', 'customer'], name='metrics_revenue_order'),
        ),
        migrations.AddIndex(
            model_name='customermetrics',
            index=models.Index(fields=['tenant', 'last_order_at', 'customer'], name='metrics_last_order_order'),
        ),
        migrations.AddIndex(
            model_name='customermetrics',
            index=models.Index(fields=['tenant', 'stage', 'last_order_at', 'customer'], name='metrics_stage_last_order'),
        ),
        migrations.RemoveIndex(
            model_name='customermetrics',
            name='lifecycle_c_tenant__9c5a50_idx',
        ),
        migrations.RemoveIndex(
            model_name='customermetrics',
            name='lifecycle_c_tenant__e81648_idx',
        ),
    ]
