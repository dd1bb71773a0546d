"""Per-customer previews and test sends: the message exactly as a customer would get it, nothing recorded.

A preview builds the same context and the same e-mail as the sender (campaigns.composing), for a chosen
customer or with sample values. A test send mails that preview to a team member; it never enters the
outbox, counts against no cap and its links lead nowhere trackable.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.mail import get_connection

from campaigns.composing import Workspace as ComposeWorkspace
from campaigns.composing import compose_email, compose_sms
from campaigns.models import CampaignStep, Message, RewardCode
from campaigns.personalization import Recipient, build_contexts
from campaigns.rendering import CONTEXT_VARIABLES, RenderError, TemplateRejected, sample_context
from crm_site.models import Workspace
from crm_site.tenancy import current_tenant_id
from customers.models import Channel, Customer


@dataclass(frozen=True)
class Preview:
    """A rendered step: subject, text and HTML (e-mail) or text (SMS), or the error a customer would hit."""

    subject: str = ""
    text: str = ""
    html: str = ""
    error: str = ""
    customer_label: str = "sample values"


def _workspace() -> ComposeWorkspace:
    values = Workspace.objects.filter(pk=current_tenant_id()).values("name", "postal_address").get()
    return ComposeWorkspace(values["name"], values["postal_address"])


def _sample_customer(step: CampaignStep) -> Customer:
    context = sample_context()
    customer = Customer(tenant_id=step.tenant_id, first_name=context["first_name"], last_name=context["last_name"],
                        email="alex.sample@example.invalid", phone="+10000000000")
    customer.pk = 0
    customer.tenant = Workspace.objects.get(pk=step.tenant_id)
    return customer


def _customer_context(step: CampaignStep, customer: Customer) -> dict:
    """The customer's real values; a reward code is only shown if one was already given (previews write nothing)."""
    used = set(CONTEXT_VARIABLES) - {"reward_code"}
    context = build_contexts([Recipient("preview", customer, step.campaign, step.channel)], used=used)["preview"]
    if step.campaign.issues_reward_codes:
        existing = RewardCode.objects.filter(campaign=step.campaign, customer=customer).values_list("code", flat=True)
        context["reward_code"] = existing.first() or "(a personal code, given when sent)"
    return context


def preview(step: CampaignStep, customer: Customer | None = None) -> Preview:
    """Return the step rendered for ``customer`` (sample values when None); errors are returned, not raised."""
    campaign = step.campaign
    if customer is None:
        customer = _sample_customer(step)
        context = sample_context() | {"links": {"unsubscribe": "https://example.invalid/unsubscribe",
                                                "preferences": "https://example.invalid/preferences"}}
        label = "sample values"
    else:
        context = _customer_context(step, customer)
        label = str(customer)
    # An unsaved outbox row: tracked links and the pixel in a preview point at no message.
    message = Message(tenant_id=step.tenant_id, campaign=campaign, step=step, customer=customer, channel=step.channel)
    message.pk = 0
    try:
        if step.channel == Channel.SMS:
            return Preview(text=compose_sms(message, step, context), customer_label=label)
        email = compose_email(message, step, campaign, campaign.sender, context, _workspace())
    except (RenderError, TemplateRejected) as error:
        return Preview(error=str(error), customer_label=label)
    html = next((content for content, mimetype in email.alternatives if mimetype == "text/html"), "")
    return Preview(subject=email.subject, text=email.body, html=html, customer_label=label)


def send_test(step: CampaignStep, to_email: str, customer: Customer | None = None) -> Preview:
    """E-mail the preview of an e-mail step to ``to_email`` (subject marked [Test]); return the preview sent.

    Raises RenderError when the step does not render for that customer.
    """
    result = preview(step, customer)
    if result.error:
        raise RenderError(result.error)
    campaign = step.campaign
    customer = customer or _sample_customer(step)
    message = Message(tenant_id=step.tenant_id, campaign=campaign, step=step, customer=customer, channel=step.channel)
    message.pk = 0
    context = (sample_context() | {"links": {"unsubscribe": "https://example.invalid/unsubscribe",
                                             "preferences": "https://example.invalid/preferences"}}
               if customer.pk == 0 else _customer_context(step, customer))
    email = compose_email(message, step, campaign, campaign.sender, context, _workspace())
    email.to = [to_email]
    email.subject = f"[Test] {email.subject}"
    email.extra_headers.pop("Message-ID", None)
    email.extra_headers["X-Rapport-Test"] = "yes"
    with get_connection() as connection:
        connection.send_messages([email])
    return result
