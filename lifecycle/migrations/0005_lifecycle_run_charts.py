"""The heavy charts and the order totals of a full run, kept on the run so a page reads them after a cache loss."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('lifecycle', '0004_lifecycle_event_page_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='lifecyclerun',
            name='charts',
            field=models.JSONField(blank=True, default=dict, help_text='The heavy charts and the order totals as of this run, stored right after it (lifecycle.analytics).'),
        ),
    ]
