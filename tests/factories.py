"""Factories for tests, benchmarks and demo data. Tenant-owned objects are created inside their workspace's scope."""

import datetime as dt
from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from crm_site.models import BackgroundJob, Invitation, Membership, Role, Workspace
from crm_site.tenancy import tenant_scope
from customers.models import Customer, Order, OrderLine, Product

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ["username"]

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)


class WorkspaceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Workspace

    name = factory.Sequence(lambda n: f"Shop {n}")
    slug = factory.Sequence(lambda n: f"shop-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    workspace = factory.SubFactory(WorkspaceFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.MARKETER


class TenantFactory(factory.django.DjangoModelFactory):
    """Creates the object inside its tenant's scope (row-level security checks the insert)."""

    class Meta:
        abstract = True

    tenant = factory.SubFactory(WorkspaceFactory)

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        with tenant_scope(kwargs["tenant"]):
            return super()._create(model_class, *args, **kwargs)


class CustomerFactory(TenantFactory):
    class Meta:
        model = Customer

    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    email = factory.Sequence(lambda n: f"customer{n}@example.org")
    external_id = factory.Sequence(lambda n: f"C{n:06d}")


class ProductFactory(TenantFactory):
    class Meta:
        model = Product

    sku = factory.Sequence(lambda n: f"SKU-{n:05d}")
    name = factory.Faker("word")
    category = "General"
    price = Decimal("19.90")


class OrderFactory(TenantFactory):
    class Meta:
        model = Order

    customer = factory.SubFactory(CustomerFactory, tenant=factory.SelfAttribute("..tenant"))
    external_id = factory.Sequence(lambda n: f"O{n:07d}")
    placed_at = factory.LazyFunction(lambda: timezone.now() - dt.timedelta(days=1))
    total = Decimal("49.90")


class OrderLineFactory(TenantFactory):
    class Meta:
        model = OrderLine

    order = factory.SubFactory(OrderFactory, tenant=factory.SelfAttribute("..tenant"))
    sku = "SKU"
    quantity = 1
    unit_price = Decimal("49.90")
    line_total = Decimal("49.90")


class InvitationFactory(TenantFactory):
    class Meta:
        model = Invitation

    email = factory.Sequence(lambda n: f"invitee{n}@example.com")
    role = Role.MARKETER


class BackgroundJobFactory(TenantFactory):
    class Meta:
        model = BackgroundJob

    kind = "import"
    state = BackgroundJob.State.RUNNING
    progress = 10
    total = 100


# --- campaigns ------------------------------------------------------------------------------------


class SenderIdentityFactory(TenantFactory):
    class Meta:
        model = "campaigns.SenderIdentity"

    name = "Newsletter"
    from_name = "Acme Coffee"
    from_email = factory.Sequence(lambda n: f"news{n}@acme.example")
    reply_to = "hello@acme.example"
    sms_from = "AcmeCoffee"
    is_default = True


class CampaignFactory(TenantFactory):
    class Meta:
        model = "campaigns.Campaign"

    name = factory.Sequence(lambda n: f"Campaign {n}")
    kind = "broadcast"
    status = "draft"
    holdout_percent = 0
    sender = factory.SubFactory(SenderIdentityFactory, tenant=factory.SelfAttribute("..tenant"))


class CampaignStepFactory(TenantFactory):
    class Meta:
        model = "campaigns.CampaignStep"

    campaign = factory.SubFactory(CampaignFactory, tenant=factory.SelfAttribute("..tenant"))
    position = factory.Sequence(lambda n: n + 1)
    channel = "email"
    subject = "Hello {{ first_name }}"
    body = "Hi {{ first_name }}, we have news for you."
