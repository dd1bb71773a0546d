"""Makers of objects inside a workspace, for the URL-by-URL isolation tests and the admin tests.

Two registries, both extended by later issues:

* ``MODEL_MAKERS``: model -> ``make(workspace) -> instance``. Every model registered in Django admin needs
  one (tests/test_admin.py opens its change page).
* ``URL_KWARG_MAKERS``: URL kwarg name -> ``make(workspace) -> value for the URL``. Every kwarg of a URL under
  ``/w/<workspace_slug>/`` needs one (tests/test_isolation.py puts another workspace's object in it and
  expects a 404).

Adding a view ``segments/<int:segment_id>/`` with a model ``Segment``::

    @makes(Segment)
    def make_segment(workspace):
        return SegmentFactory(tenant=workspace)

    url_kwarg("segment_id", Segment)          # the URL takes the object's pk

A kwarg that is not a pk (a token, a slug) registers a function returning the value::

    @url_kwarg("message_token")
    def make_message_token(workspace):
        return MessageFactory(tenant=workspace).token

A URL whose kwargs must belong together (``campaigns/<int:campaign_id>/steps/<int:step_id>/``) registers
all of them at once by URL name::

    @url_values("campaigns:step_edit")
    def make_campaign_step(workspace):
        step = StepFactory(tenant=workspace)
        return {"campaign_id": step.campaign_id, "step_id": step.pk}
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import models
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from campaigns.models import (
    Campaign,
    CampaignRun,
    CampaignStep,
    Message,
    MessageEvent,
    RewardCode,
    SenderIdentity,
    SendingPolicy,
)
from crm_site.models import BackgroundJob, Invitation, Membership, Role, Workspace
from crm_site.tenancy import tenant_scope
from customers.models import (
    ApiKey,
    ConsentEvent,
    Customer,
    ImportRun,
    Interaction,
    MessagingPause,
    Order,
    OrderLine,
    Product,
    Suppression,
)
from lifecycle.models import CustomerMetrics, LifecycleEvent, LifecyclePolicy, LifecycleRun, RewardGrant
from segments.models import Segment, SegmentMember
from tests.factories import (
    BackgroundJobFactory,
    CustomerFactory,
    InvitationFactory,
    MembershipFactory,
    OrderFactory,
    OrderLineFactory,
    ProductFactory,
    UserFactory,
)

Maker = Callable[[Workspace], Any]

MODEL_MAKERS: dict[type[models.Model], Maker] = {}
URL_KWARG_MAKERS: dict[str, Maker] = {}
# For a URL whose kwargs must belong together (a step of its own campaign): URL name -> make(workspace) -> kwargs.
URL_VALUES_MAKERS: dict[str, Callable[[Workspace], dict[str, Any]]] = {}


def makes(model: type[models.Model]):
    """Register ``make(workspace) -> instance`` as the way to create a ``model`` object in a workspace."""

    def register(make: Maker) -> Maker:
        MODEL_MAKERS[model] = make
        return make

    return register


def url_kwarg(name: str, model: type[models.Model] | None = None):
    """Register the value of URL kwarg ``name``: the pk of a new ``model`` object, or what a decorated function returns."""
    if model is not None:
        URL_KWARG_MAKERS[name] = lambda workspace: make_object(model, workspace).pk
        return None

    def register(make: Maker) -> Maker:
        URL_KWARG_MAKERS[name] = make
        return make

    return register


def url_values(url_name: str):
    """Register ``make(workspace) -> {kwarg: value}`` for the URL named ``url_name`` whose kwargs belong together."""

    def register(make):
        URL_VALUES_MAKERS[url_name] = make
        return make

    return register


def missing_kwarg_makers(url: "WorkspaceUrl") -> list[str]:
    """Return the kwargs of ``url`` that nothing in this registry knows how to fill."""
    if url.name in URL_VALUES_MAKERS:
        return []
    return [name for name in url.kwargs if name not in URL_KWARG_MAKERS]


def make_url_values(url: "WorkspaceUrl", workspace: Workspace) -> dict[str, Any]:
    """Return URL kwarg values (besides the slug) naming new objects in ``workspace``."""
    if url.name in URL_VALUES_MAKERS:
        return URL_VALUES_MAKERS[url.name](workspace)
    return {name: URL_KWARG_MAKERS[name](workspace) for name in url.kwargs}


def make_object(model: type[models.Model], workspace: Workspace) -> models.Model:
    """Return a new ``model`` object in ``workspace`` made by its registered maker."""
    if model not in MODEL_MAKERS:
        raise AssertionError(f"no maker for {model._meta.label}: add one in tests/isolation_registry.py (@makes)")
    return MODEL_MAKERS[model](workspace)


_sequence = itertools.count(1)


def _in_scope(workspace, create):
    with tenant_scope(workspace):
        return create()


# --- Platform models (not tenant-owned) ----------------------------------------------------------


@makes(Workspace)
def make_workspace(workspace):
    return workspace


@makes(Membership)
def make_membership(workspace):
    return MembershipFactory(workspace=workspace, role=Role.VIEWER)


@makes(get_user_model())
def make_user(workspace):
    return UserFactory()


@makes(Group)
def make_group(workspace):
    return Group.objects.create(name=f"group-{next(_sequence)}")


@makes(IntervalSchedule)
def make_interval(workspace):
    return IntervalSchedule.objects.create(every=10, period=IntervalSchedule.MINUTES)


@makes(CrontabSchedule)
def make_crontab(workspace):
    return CrontabSchedule.objects.create(minute="0", hour="3")


@makes(SolarSchedule)
def make_solar(workspace):
    return SolarSchedule.objects.create(event="sunrise", latitude=next(_sequence) % 90, longitude=13.40)


@makes(ClockedSchedule)
def make_clocked(workspace):
    return ClockedSchedule.objects.create(clocked_time=timezone.now() + dt.timedelta(days=1))


@makes(PeriodicTask)
def make_periodic_task(workspace):
    return PeriodicTask.objects.create(
        name=f"nightly refresh #{next(_sequence)}",
        task="lifecycle.tasks.refresh_all",
        interval=make_interval(workspace),
    )


# --- crm_site ---------------------------------------------------------------------------------------


@makes(Invitation)
def make_invitation(workspace):
    return InvitationFactory(tenant=workspace)


@makes(BackgroundJob)
def make_job(workspace):
    return BackgroundJobFactory(tenant=workspace)


# --- customers -------------------------------------------------------------------------------------


@makes(Customer)
def make_customer(workspace):
    return CustomerFactory(tenant=workspace)


@makes(Product)
def make_product(workspace):
    return ProductFactory(tenant=workspace)


@makes(Order)
def make_order(workspace):
    return OrderFactory(tenant=workspace)


@makes(OrderLine)
def make_order_line(workspace):
    return OrderLineFactory(tenant=workspace)


@makes(ConsentEvent)
def make_consent_event(workspace):
    customer = make_customer(workspace)
    return _in_scope(
        workspace, lambda: ConsentEvent.objects.create(customer=customer, channel="email", action="grant", method="form")
    )


@makes(Suppression)
def make_suppression(workspace):
    from customers.models import suppression_hash

    value_hash = suppression_hash("email", f"gone-{next(_sequence)}@example.org")
    return _in_scope(
        workspace, lambda: Suppression.objects.create(channel="email", value_hash=value_hash, reason="bounced")
    )


@makes(Interaction)
def make_interaction(workspace):
    customer = make_customer(workspace)
    return _in_scope(
        workspace, lambda: Interaction.objects.create(customer=customer, kind="note", summary="Called about a refund")
    )


@makes(MessagingPause)
def make_messaging_pause(workspace):
    customer = make_customer(workspace)
    until = timezone.now() + dt.timedelta(days=30)
    return _in_scope(workspace, lambda: MessagingPause.objects.create(customer=customer, paused_until=until))


@makes(ApiKey)
def make_api_key(workspace):
    number = next(_sequence)
    return ApiKey.objects.create(
        workspace=workspace, name=f"Shop sync {number}", prefix=f"rk_{number:04d}", key_hash=f"{number:064x}"
    )


@makes(ImportRun)
def make_import_run(workspace):
    return _in_scope(
        workspace, lambda: ImportRun.objects.create(kind="customers", original_name=f"customers-{next(_sequence)}.csv")
    )


# --- lifecycle ---------------------------------------------------------------------------------------


@makes(CustomerMetrics)
def make_customer_metrics(workspace):
    customer = make_customer(workspace)
    return _in_scope(workspace, lambda: CustomerMetrics.objects.create(customer=customer, stage="active"))


@makes(LifecycleEvent)
def make_lifecycle_event(workspace):
    customer = make_customer(workspace)
    return _in_scope(
        workspace,
        lambda: LifecycleEvent.objects.create(
            customer=customer, kind="stage", from_value="active", to_value="at_risk", reason="last order 94 days ago"
        ),
    )


@makes(LifecyclePolicy)
def make_lifecycle_policy(workspace):
    return _in_scope(workspace, lambda: LifecyclePolicy.objects.get_or_create(tenant=workspace)[0])


@makes(RewardGrant)
def make_reward_grant(workspace):
    customer = make_customer(workspace)
    return _in_scope(workspace, lambda: RewardGrant.objects.create(customer=customer, rule="vip", occasion=""))


@makes(LifecycleRun)
def make_lifecycle_run(workspace):
    return _in_scope(workspace, lambda: LifecycleRun.objects.create(customers=3, stage_counts={"active": 3}))


# --- segments ----------------------------------------------------------------------------------------


@makes(Segment)
def make_segment(workspace):
    return _in_scope(workspace, lambda: Segment.objects.create(name=f"Regulars {next(_sequence)}"))


@makes(SegmentMember)
def make_segment_member(workspace):
    segment, customer = make_segment(workspace), make_customer(workspace)
    return _in_scope(
        workspace, lambda: SegmentMember.objects.create(segment=segment, customer=customer, added_at=timezone.now())
    )


# --- campaigns ---------------------------------------------------------------------------------------


@makes(SenderIdentity)
def make_sender(workspace):
    number = next(_sequence)
    return _in_scope(
        workspace,
        lambda: SenderIdentity.objects.create(
            name=f"Newsletter {number}", from_name="Acme", from_email=f"news{number}@shop.example"
        ),
    )


@makes(SendingPolicy)
def make_sending_policy(workspace):
    return _in_scope(workspace, lambda: SendingPolicy.objects.get_or_create(tenant=workspace)[0])


@makes(Campaign)
def make_campaign(workspace):
    return _in_scope(workspace, lambda: Campaign.objects.create(name=f"Spring sale {next(_sequence)}"))


@makes(CampaignStep)
def make_campaign_step(workspace):
    campaign = make_campaign(workspace)
    return _in_scope(
        workspace, lambda: CampaignStep.objects.create(campaign=campaign, subject="Hello", body="Spring is here")
    )


@makes(CampaignRun)
def make_campaign_run(workspace):
    campaign = make_campaign(workspace)
    return _in_scope(workspace, lambda: CampaignRun.objects.create(campaign=campaign, number=1))


@makes(Message)
def make_message(workspace):
    step, customer = make_campaign_step(workspace), make_customer(workspace)
    now = timezone.now()
    return _in_scope(
        workspace,
        lambda: Message.objects.create(
            campaign_id=step.campaign_id, step=step, customer=customer, channel="email",
            scheduled_for=now, next_attempt_at=now, to_address=customer.email,
        ),
    )


@makes(MessageEvent)
def make_message_event(workspace):
    message = make_message(workspace)
    return _in_scope(
        workspace,
        lambda: MessageEvent.objects.create(
            message=message, campaign_id=message.campaign_id, customer_id=message.customer_id, kind="opened"
        ),
    )


@makes(RewardCode)
def make_reward_code(workspace):
    campaign, customer = make_campaign(workspace), make_customer(workspace)
    return _in_scope(
        workspace,
        lambda: RewardCode.objects.create(campaign=campaign, customer=customer, code=f"THANKS-{next(_sequence)}"),
    )


# --- URL kwargs under /w/<workspace_slug>/ -----------------------------------------------------------

url_kwarg("customer_id", Customer)
url_kwarg("job_id", BackgroundJob)
url_kwarg("membership_id", Membership)
url_kwarg("invitation_id", Invitation)
url_kwarg("key_id", ApiKey)
url_kwarg("import_id", ImportRun)
url_kwarg("segment_id", Segment)
url_kwarg("campaign_id", Campaign)
url_kwarg("sender_id", SenderIdentity)


def _campaign_and_step(workspace):
    step = make_campaign_step(workspace)
    return {"campaign_id": step.campaign_id, "step_id": step.pk}


for _step_url in ("campaigns:step_edit", "campaigns:step_move", "campaigns:step_delete"):
    url_values(_step_url)(_campaign_and_step)


@url_values("customers:import_errors")
def make_import_with_error_report(workspace):
    """An import whose bad-rows file exists, so the download answers 200 in its own workspace."""
    from django.conf import settings

    from customers.importing import import_dir

    report = import_dir(workspace.pk) / f"isolation-{next(_sequence)}-errors.csv"
    report.write_text("email,error,line\nbob@,email: invalid,2\n")
    run = _in_scope(workspace, lambda: ImportRun.objects.create(
        kind="customers", original_name="bad.csv", error_file=str(report.relative_to(settings.MEDIA_ROOT))))
    return {"import_id": run.pk}


# --- Enumerating the workspace URLs ------------------------------------------------------------------

WORKSPACE_KWARG = "workspace_slug"
_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


@dataclass(frozen=True)
class WorkspaceUrl:
    """One URL pattern under /w/<workspace_slug>/: its full route, its name and the kwargs besides the slug."""

    route: str
    name: str
    kwargs: tuple[str, ...]

    def path(self, workspace_slug: str, values: dict[str, Any] | None = None) -> str:
        """Return the concrete path with the workspace slug and kwarg values filled in."""
        values = {WORKSPACE_KWARG: workspace_slug, **(values or {})}
        return "/" + _PARAMETER.sub(lambda match: str(values[match.group("name")]), self.route)


def _walk(patterns, prefix: str, namespace: str):
    for entry in patterns:
        if not isinstance(entry.pattern, RoutePattern):
            if WORKSPACE_KWARG in prefix or WORKSPACE_KWARG in str(entry.pattern):
                raise AssertionError(
                    f"{prefix}{entry.pattern} uses re_path(); use path() so the isolation tests can fill its kwargs"
                )
            continue  # outside the workspace area (Django admin's catch-alls)
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, route, inner)
        elif isinstance(entry, URLPattern):
            yield route, f"{namespace}{entry.name or '?'}"


def workspace_urls() -> list[WorkspaceUrl]:
    """Return every URL pattern of the site whose path contains the workspace slug, in URLconf order."""
    found = []
    for route, name in _walk(get_resolver().url_patterns, "", ""):
        names = [match.group("name") for match in _PARAMETER.finditer(route)]
        if WORKSPACE_KWARG in names:
            found.append(WorkspaceUrl(route, name, tuple(n for n in names if n != WORKSPACE_KWARG)))
    return found
