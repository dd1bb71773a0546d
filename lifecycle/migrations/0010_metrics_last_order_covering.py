"""The (tenant, last_order_at, customer) index also carries the metrics columns the customer list reads (first
seen, stage, revenue): a last-order range sorted by first seen (when the matches are rare among the newest
customers, customers.listing.WalkWindow) then sorts what one index-only scan of the range returns, instead of
fetching every row of the range from the table. A list column reading another metrics column would lose that."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('crm_site', '0002_row_level_security'),
        ('customers', '0005_pages_list_search_keys'),
        ('lifecycle', '0009_metrics_first_seen_order'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='customermetrics',
            name='metrics_last_order_order',
        ),
        migrations.AddIndex(
            model_name='customermetrics',
            index=models.Index(fields=['tenant', 'last_order_at', 'customer'], include=('first_seen_at', 'stage', 'revenue'), name='metrics_last_order_order'),
        ),
    ]
