"""An index (tenant, first_seen_at, customer) on the metrics row's copy of first seen: the customer list filtered
by spend or last order, sorted by first seen (its default), walks it instead of every customer by first seen
probing each one's metrics (a bounded walk, then a sort of the matches: customers.listing.WalkWindow)."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('crm_site', '0002_row_level_security'),
        ('customers', '0005_pages_list_search_keys'),
        ('lifecycle', '0008_metrics_revenue_cents'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='customermetrics',
            index=models.Index(fields=['tenant', 'first_seen_at', 'customer'], name='metrics_first_seen_order'),
        ),
    ]
