"""Ready-made journeys a marketer starts from: the lifecycle moments that matter, with timed steps and copy.

Each template is a trigger, a priority and steps (delay, subject, body). ``create_from_template`` makes a
draft campaign the marketer then edits, previews and switches on.
"""

from __future__ import annotations

from dataclasses import dataclass

from campaigns.models import Campaign, CampaignStep, Priority, SenderIdentity, Trigger


@dataclass(frozen=True)
class StepTemplate:
    delay_days: int
    subject: str
    body: str


@dataclass(frozen=True)
class JourneyTemplate:
    key: str
    name: str
    description: str
    trigger: str
    steps: tuple[StepTemplate, ...]
    issues_reward_codes: bool = False
    reward_code_prefix: str = ""


JOURNEY_TEMPLATES: dict[str, JourneyTemplate] = {
    template.key: template
    for template in (
        JourneyTemplate(
            "welcome", "Welcome series", "New customers: a welcome on day 0, a how-to on day 3, a first tip on day 7.",
            Trigger.ONBOARDING,
            (
                StepTemplate(0, "Welcome to {{ workspace_name }}, {{ first_name|default('friend') }}",
                             "Hi {{ first_name|default('there') }},\n\nthank you for your first order with "
                             "{{ workspace_name }}. We are glad you are here.\n\nThe {{ workspace_name }} team"),
                StepTemplate(3, "Getting the most from your purchase",
                             "Hi {{ first_name|default('there') }},\n\n{% if last_purchase %}how are you getting on "
                             "with {{ last_purchase.product }}? {% endif %}Here are a few tips from our team.\n\n"
                             "The {{ workspace_name }} team"),
                StepTemplate(7, "A little something for next time",
                             "Hi {{ first_name|default('there') }},\n\n{% if products %}Customers who bought what you "
                             "bought also liked:\n{% for p in products %}- {{ p.name }}\n{% endfor %}{% endif %}\n"
                             "The {{ workspace_name }} team"),
            ),
        ),
        JourneyTemplate(
            "reinforce", "Thank you (post-purchase)", "Right after a repeat purchase: thanks, no selling.",
            Trigger.REINFORCE_DUE,
            (
                StepTemplate(0, "Thank you, {{ first_name|default('friend') }}",
                             "Hi {{ first_name|default('there') }},\n\nthank you for shopping with us again. "
                             "{% if last_purchase %}We hope you enjoy {{ last_purchase.product }}.{% endif %}\n\n"
                             "The {{ workspace_name }} team"),
            ),
        ),
        JourneyTemplate(
            "reward", "Reward", "Customers a reward rule picked: a personal code as thanks.",
            Trigger.REWARD_DUE,
            (
                StepTemplate(0, "A thank-you gift for you",
                             "Hi {{ first_name|default('there') }},\n\nyou are one of our best customers. Here is "
                             "your personal code: {{ reward_code }}\n\nThe {{ workspace_name }} team"),
            ),
            issues_reward_codes=True,
            reward_code_prefix="THANKS",
        ),
        JourneyTemplate(
            "winback", "Win-back", "At-risk customers: we miss you, then a nudge with suggestions a week later.",
            Trigger.AT_RISK,
            (
                StepTemplate(0, "We miss you, {{ first_name|default('friend') }}",
                             "Hi {{ first_name|default('there') }},\n\nit has been a while. "
                             "{% if last_purchase %}Time for more {{ last_purchase.product }}?{% endif %}\n\n"
                             "The {{ workspace_name }} team"),
                StepTemplate(7, "Picked for you",
                             "Hi {{ first_name|default('there') }},\n\n{% if products %}a few things you may like:\n"
                             "{% for p in products %}- {{ p.name }}\n{% endfor %}{% endif %}\nThe "
                             "{{ workspace_name }} team"),
            ),
        ),
        JourneyTemplate(
            "last_call", "Last call", "Lapsed customers: one honest last message.",
            Trigger.LAPSED,
            (
                StepTemplate(0, "Should we stop writing?",
                             "Hi {{ first_name|default('there') }},\n\nwe have not seen you for a long time. If you "
                             "would rather not hear from us, use the link below; otherwise we would love to see you "
                             "again.\n\nThe {{ workspace_name }} team"),
            ),
        ),
    )
}


def create_from_template(key: str, *, user=None, name: str = "") -> Campaign:
    """Create a draft journey from a template (steps included) and return it; raises KeyError for an unknown key."""
    template = JOURNEY_TEMPLATES[key]
    campaign = Campaign.objects.create(
        name=name or template.name,
        description=template.description,
        kind=Campaign.Kind.JOURNEY,
        priority=Priority.LIFECYCLE,
        trigger=template.trigger,
        sender=SenderIdentity.objects.filter(is_default=True).first() or SenderIdentity.objects.first(),
        issues_reward_codes=template.issues_reward_codes,
        reward_code_prefix=template.reward_code_prefix,
        created_by=user,
    )
    CampaignStep.objects.bulk_create([
        CampaignStep(tenant_id=campaign.tenant_id, campaign=campaign, position=index, delay_days=step.delay_days,
                     subject=step.subject, body=step.body)
        for index, step in enumerate(template.steps, start=1)
    ])
    return campaign
