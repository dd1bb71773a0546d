"""Customer-list filters that the Lifecycle charts link to, beyond the stage/spend/last-order ones of
lifecycle.listing: a flag (heavy user, reward due, reinforce due), predicted 12-month CLV and first-order date.

Registered in the customers list registry when the app is ready, like lifecycle.listing's.
"""

from customers import listing
from lifecycle.listing import metrics_range, with_metrics_in_scope

FLAGS = [("heavy_user", "Heavy user"), ("reward_due", "Reward due"), ("reinforce_due", "Reinforce due")]
_FLAG_FIELDS = {"heavy_user": "metrics__is_heavy_user", "reward_due": "metrics__is_reward_due",
                "reinforce_due": "metrics__is_reinforce_due"}


def _filter_flag(queryset, flag):
    return with_metrics_in_scope(queryset).filter(**{_FLAG_FIELDS[flag]: True})


def register() -> None:
    """Register the chart filters in the customer list registry (idempotent)."""
    listing.register_choice_filter("flag", "Flag", FLAGS, _filter_flag, order=15)
    listing.register_range_filter("clv", "Predicted 12-month CLV", "number", metrics_range("predicted_clv_12m"),
                                  order=35)
    listing.register_range_filter("first_order", "First order", "date", metrics_range("first_order_at", dates=True),
                                  order=45)
