from django.db import migrations

from crm_site.tenancy import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0001_campaigns_outbox")]

    operations = [
        EnableRowLevelSecurity(name)
        for name in (
            "SenderIdentity", "SendingPolicy", "Campaign", "CampaignStep", "CampaignRun", "Message",
            "MessageEvent", "RewardCode",
        )
    ]
