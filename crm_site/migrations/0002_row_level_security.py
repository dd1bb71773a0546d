from django.db import migrations

from crm_site.tenancy import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("crm_site", "0001_initial")]

    operations = [EnableRowLevelSecurity("Invitation"), EnableRowLevelSecurity("BackgroundJob")]
