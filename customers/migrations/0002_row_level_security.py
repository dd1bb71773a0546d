from django.db import migrations

from crm_site.tenancy import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("customers", "0001_initial")]

    operations = [
        EnableRowLevelSecurity(name)
        for name in ("Customer", "Product", "Order", "OrderLine", "ConsentEvent", "Suppression", "Interaction")
    ]
