"""Indexes of the Lifecycle page: the latest transition of a workspace (the stamp its live numbers are kept under)
and the moves between stages (stage events that are not a first classification) by time."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('lifecycle', '0003_lifecycle_rewards_runs'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='lifecycleevent',
            index=models.Index(fields=['tenant', '-id'], name='lifecycle_event_latest'),
        ),
        migrations.AddIndex(
            model_name='lifecycleevent',
            index=models.Index(condition=models.Q(('kind', 'stage'), models.Q(('from_value', ''), _negated=True)), fields=['tenant', 'occurred_at'], include=('to_value', 'from_value'), name='lifecycle_event_moves'),
        ),
    ]
