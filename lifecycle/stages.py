"""Stages and flags from per-customer metrics, with the reason a marketer reads.

The rules, in order (days are whole days in the customer's own time zone; ``policy`` holds each number):

* **prospect**: no purchase, signed up ``onboarding_days`` or more days ago.
* **onboarding**: no purchase and signed up fewer than ``onboarding_days`` ago, or the first purchase was
  fewer than ``onboarding_days`` ago (day 0 is the day of the first order).
* **lapsed**: no order for ``lapsed_days`` or more, or P(alive) below ``lapsed_p_alive``.
* **at_risk**: overdue against the customer's own rhythm: more days since the last order than
  ``at_risk_gap_multiplier`` × the usual gap (and more than ``at_risk_min_days``); or P(alive) below
  ``at_risk_p_alive``; or, for a one-time buyer, more than ``one_time_buyer_at_risk_days`` since the order.
* **active**: everyone else who bought.

Flags: **heavy_user** (trailing-12-month revenue at or above the threshold that makes the top customers
add up to ``heavy_user_revenue_share`` of it), **reward_due** (lifecycle.rewards) and **reinforce_due**
(an established customer, with at least two orders and past onboarding, ordered fewer than
``reinforce_window_days`` ago).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from lifecycle import rewards
from lifecycle.metrics import add_calendar_days, distinct_rows
from lifecycle.models import Stage

_UNSET = object()


def heavy_user_threshold(trailing_revenue: pd.Series, share: float) -> float | None:
    """Return the smallest trailing revenue among the top customers who together make ``share`` of all
    trailing revenue (the Pareto cut), or None when nobody has any.
    """
    values = np.sort(trailing_revenue.to_numpy(dtype=float))[::-1]
    values = values[values > 0]
    if not len(values):
        return None
    cumulative = np.cumsum(values)
    position = int(np.searchsorted(cumulative, min(max(share, 0.0), 1.0) * cumulative[-1] - 1e-9, side="left"))
    return float(values[min(position, len(values) - 1)])


# The stage column is categorical (one small code per customer): comparing, grouping and hashing a million
# stage names as Python strings took a good part of a refresh.
STAGE_DTYPE = pd.CategoricalDtype(Stage.values)
_STAGE_CODE = {stage: code for code, stage in enumerate(Stage.values)}


def classify(metrics: pd.DataFrame, policy, now: dt.datetime, *, heavy_threshold=_UNSET,
             given_rewards: pd.DataFrame | None = None, with_reasons: bool = True) -> pd.DataFrame:
    """Return the metrics frame with ``stage`` (categorical), ``reason``, ``is_heavy_user``, ``is_reward_due``,
    ``due_rewards`` (and ``due_rewards_set``, a number per distinct set) and ``is_reinforce_due`` per customer,
    as of ``now``.

    ``metrics`` needs per customer: time_zone, signed_up_at, first_order_at, last_order_at (UTC), order_count,
    revenue, trailing_revenue_12m, usual_gap_days and p_alive (NaN under rule-based metrics).
    ``heavy_threshold`` is the population's Pareto cut (computed from this frame when not given);
    ``given_rewards`` holds the rewards already given (customer_id, rule, occasion). Without ``with_reasons``
    the ``reason`` column is left out: a refresh words it (stage_reasons) only for the rows it writes.
    """
    frame = add_calendar_days(metrics, now)
    count = frame["order_count"]
    since_last = frame["days_since_last_order"]
    since_first = frame["days_since_first_order"]
    since_signup = frame["days_since_signup"]
    gap = frame["usual_gap_days"]
    p_alive = frame["p_alive"]
    has_p = p_alive.notna()

    no_purchase = count <= 0
    new_signup = no_purchase & (since_signup < policy.onboarding_days)
    lapsed_by_days = ~no_purchase & (since_last >= policy.lapsed_days)
    lapsed_by_model = ~no_purchase & has_p & (p_alive < policy.lapsed_p_alive)
    onboarding = ~no_purchase & (since_first < policy.onboarding_days)
    repeat = ~no_purchase & gap.notna() & (count > 1)
    overdue_after = np.maximum(policy.at_risk_gap_multiplier * gap, policy.at_risk_min_days)
    overdue = repeat & (since_last > overdue_after)
    unlikely_alive = ~no_purchase & has_p & (p_alive < policy.at_risk_p_alive)
    one_time_overdue = ~no_purchase & ~repeat & (since_last > policy.one_time_buyer_at_risk_days)

    stage = np.select(
        [no_purchase & new_signup, no_purchase, lapsed_by_days | lapsed_by_model, onboarding,
         overdue | unlikely_alive | one_time_overdue],
        [_STAGE_CODE[name] for name in (Stage.ONBOARDING, Stage.PROSPECT, Stage.LAPSED, Stage.ONBOARDING,
                                        Stage.AT_RISK)],
        default=_STAGE_CODE[Stage.ACTIVE],
    ).astype(np.int8)
    frame["stage"] = pd.Categorical.from_codes(stage, dtype=STAGE_DTYPE)
    if with_reasons:
        frame["reason"] = stage_reasons(frame)

    threshold = heavy_user_threshold(frame["trailing_revenue_12m"], policy.heavy_user_revenue_share) \
        if heavy_threshold is _UNSET else heavy_threshold
    frame["is_heavy_user"] = (
        (frame["trailing_revenue_12m"] >= threshold) & (frame["trailing_revenue_12m"] > 0)
        if threshold is not None else False
    )
    frame["is_reinforce_due"] = (
        (count >= 2) & (stage != _STAGE_CODE[Stage.ONBOARDING]) & (since_last < policy.reinforce_window_days)
    ).fillna(False).astype(bool)
    due = rewards.due_rewards(frame, policy.reward_rules or [], given_rewards)
    frame["due_rewards"] = due.per_customer(frame.index)
    frame["due_rewards_set"] = due.set_of_customer
    frame["is_reward_due"] = due.any_due()
    return frame


_PROSPECT, _ONBOARDING = Stage.PROSPECT.value, Stage.ONBOARDING.value


def _days(count: int) -> str:
    return "1 day" if count == 1 else f"{count} days"


def _reason(stage: str, orders: int, since_signup: int, since_first: int, since_last: int, gap: int,
            p_alive: float) -> str:
    if stage == _PROSPECT:
        return f"no purchase in {_days(since_signup)} since sign-up"
    if stage == _ONBOARDING and orders <= 0:
        return f"signed up {_days(since_signup)} ago; no purchase yet"
    if stage == _ONBOARDING:
        return f"first purchase {_days(since_first)} ago; {'1 order' if orders == 1 else f'{orders} orders'}"
    rhythm = f"; usual gap {_days(gap)}" if gap >= 0 else "; only one order"
    return f"last order {_days(since_last)} ago{rhythm}" + (f"; P(alive) {p_alive:.2f}" if p_alive >= 0 else "")


def stage_reasons(frame: pd.DataFrame) -> pd.Series:
    """Return the sentence behind each customer's stage, e.g. "last order 94 days ago; usual gap 30 days".

    ``frame`` is (a selection of) what classify returns. Built once per distinct combination of the numbers it
    shows (a few per cent of the customers), each number blanked (-1) where the customer's stage does not show it.
    """
    stage = pd.Categorical(frame["stage"], dtype=STAGE_DTYPE).codes
    onboarding = stage == _STAGE_CODE[Stage.ONBOARDING]
    bought = (frame["order_count"] > 0).to_numpy()
    rest = np.isin(stage, [_STAGE_CODE[Stage.ACTIVE], _STAGE_CODE[Stage.AT_RISK], _STAGE_CODE[Stage.LAPSED]])

    def shown(values, where) -> np.ndarray:
        numbers = np.round(pd.to_numeric(values).to_numpy(dtype=float, na_value=np.nan))
        return np.where(where & ~np.isnan(numbers), numbers, -1).astype(np.int64)

    rhythm = rest & frame["usual_gap_days"].notna().to_numpy() & (frame["order_count"] > 1).to_numpy()
    p_alive = frame["p_alive"].to_numpy(dtype=float, na_value=np.nan)
    parts = [
        stage,
        np.where(onboarding & bought, frame["order_count"], np.where(onboarding, 0, -1)),
        shown(frame["days_since_signup"], (stage == _STAGE_CODE[Stage.PROSPECT]) | (onboarding & ~bought)),
        shown(frame["days_since_first_order"], onboarding & bought),
        shown(frame["days_since_last_order"], rest),
        shown(frame["usual_gap_days"], rhythm),
        np.where(rest & ~np.isnan(p_alive), p_alive, -1.0),
    ]
    codes, first_rows = distinct_rows(*parts)
    combinations = zip(*(values[first_rows] for values in parts))
    texts = np.array([_reason(Stage.values[code], *numbers)[:300] for code, *numbers in combinations],
                     dtype=object)
    return pd.Series(texts[codes], index=frame.index, dtype=object)
