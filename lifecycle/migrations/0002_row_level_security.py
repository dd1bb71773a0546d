from django.db import migrations

from crm_site.tenancy import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("lifecycle", "0001_initial")]

    operations = [EnableRowLevelSecurity(name) for name in ("CustomerMetrics", "LifecycleEvent", "LifecyclePolicy")]
