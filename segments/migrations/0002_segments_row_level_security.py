from django.db import migrations

from crm_site.tenancy import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("segments", "0001_segments_models")]

    operations = [
        EnableRowLevelSecurity("Segment"),
        EnableRowLevelSecurity("SegmentMember"),
    ]
