"""Reward rules of a workspace: when a reward is due, and recording that it was given.

A rule is a small dict kept in ``LifecyclePolicy.reward_rules``:

* ``{"key": "vip", "kind": "vip_entry"}``: the customer became a heavy user.
* ``{"key": "fifth_order", "kind": "nth_order", "n": 5}``: the customer has placed at least n orders.
* ``{"key": "big_spender", "kind": "spend_threshold", "amount": 500}``: lifetime net spend reached the amount.
* ``{"key": "anniversary", "kind": "anniversary", "window_days": 14}``: a yearly anniversary of the first
  order (in the customer's time zone) was fewer than ``window_days`` days ago. A first order on 29 February
  has its anniversary on 28 February in common years. Each year is its own occasion ("2025").

Each rule may carry a ``label`` shown to marketers. A reward stays due until campaigns (or a person) call
``mark_reward_given``; the other rules are given once per customer, anniversaries once per year.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from django.db import IntegrityError, transaction
from django.utils import timezone

RULE_KINDS = {
    "vip_entry": "Becomes a heavy user (VIP)",
    "nth_order": "Places the n-th order",
    "spend_threshold": "Total spend reaches an amount",
    "anniversary": "Anniversary of the first order",
}
_KEY = re.compile(r"^[a-z0-9_]{1,40}$")


class RewardRuleError(ValueError):
    """A reward rule is malformed; the message says which and why."""


def validate_reward_rules(rules) -> list[dict]:
    """Return the rules normalised (types coerced, defaults filled); raise RewardRuleError naming the bad one."""
    if not isinstance(rules, list):
        raise RewardRuleError("reward rules must be a list")
    normalised, keys = [], set()
    for position, rule in enumerate(rules, start=1):
        if not isinstance(rule, dict):
            raise RewardRuleError(f"rule {position} is not an object")
        kind, key = rule.get("kind"), str(rule.get("key") or "").strip()
        if kind not in RULE_KINDS:
            raise RewardRuleError(f"rule {position}: unknown kind {kind!r}")
        if not _KEY.match(key):
            raise RewardRuleError(f"rule {position}: the key must be 1-40 lowercase letters, digits or _")
        if key in keys:
            raise RewardRuleError(f"rule {position}: the key {key!r} is used twice")
        keys.add(key)
        clean = {"key": key, "kind": kind, "label": str(rule.get("label") or RULE_KINDS[kind])[:80]}
        try:
            if kind == "nth_order":
                clean["n"] = int(rule.get("n"))
                if clean["n"] < 1:
                    raise ValueError
            elif kind == "spend_threshold":
                clean["amount"] = float(rule.get("amount"))
                if not clean["amount"] > 0:
                    raise ValueError
            elif kind == "anniversary":
                clean["window_days"] = int(rule.get("window_days", 14))
                if not 1 <= clean["window_days"] <= 366:
                    raise ValueError
        except (TypeError, ValueError):
            raise RewardRuleError(f"rule {position} ({key}): needs a positive number "
                                  f"({'n' if kind == 'nth_order' else 'amount' if kind == 'spend_threshold' else 'window_days 1-366'})") from None
        normalised.append(clean)
    return normalised


def last_anniversary(first_local: pd.Series, today_local: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Return, per customer, the latest anniversary date of the first order on or before today (NaT before the
    first one) and how many years it marks. 29 February falls on 28 February in common years.
    """
    valid = first_local.notna() & today_local.notna()
    first = first_local[valid]
    today = today_local[valid]
    month, day = first.dt.month.to_numpy(), first.dt.day.to_numpy()

    def on(years: np.ndarray) -> pd.Series:
        leap = (years % 4 == 0) & ((years % 100 != 0) | (years % 400 == 0))
        days = np.where((month == 2) & (day == 29) & ~leap, 28, day)
        return pd.to_datetime(pd.DataFrame({"year": years, "month": month, "day": days}, index=first.index))

    this_year = today.dt.year.to_numpy()
    candidate = on(this_year)
    earlier = candidate > today
    candidate[earlier] = on(this_year - 1)[earlier]
    years = candidate.dt.year - first.dt.year
    dates = pd.Series(pd.NaT, index=first_local.index, dtype="datetime64[us]")
    counts = pd.Series(0, index=first_local.index, dtype="int64")
    dates[valid] = candidate.astype("datetime64[us]")
    counts[valid] = years.to_numpy()
    return dates, counts


@dataclass(frozen=True)
class DueRewards:
    """The rewards due per customer, as a few distinct sets: ``sets[set_of_customer[row]]`` is the row's list of
    rewards due and not yet given ([{"rule", "occasion", "label"}]).
    """

    sets: list[list[dict]]
    set_of_customer: np.ndarray

    def per_customer(self, index) -> pd.Series:
        """Return each customer's list (customers with the same set share one list object: treat it as read-only)."""
        lists = np.empty(len(self.sets), dtype=object)
        for position, rewards in enumerate(self.sets):  # one by one: numpy would read equal-length lists as rows
            lists[position] = rewards
        return pd.Series(lists[self.set_of_customer], index=index, dtype=object)

    def any_due(self) -> np.ndarray:
        return np.array([bool(rewards) for rewards in self.sets], dtype=bool)[self.set_of_customer]


def due_rewards(frame: pd.DataFrame, rules: list[dict], given: pd.DataFrame | None) -> DueRewards:
    """Return the rewards due and not yet given of each customer of ``frame``, by distinct set (a million
    customers have a handful of distinct sets).
    """
    if not rules or frame.empty:
        return DueRewards([[]], np.zeros(len(frame), dtype=np.int64))
    customer_ids = frame["customer_id"].to_numpy(dtype="int64")
    due_bits = np.zeros(len(frame), dtype="int64")
    entries: list[tuple[str, str, bool]] = []  # (rule key, label, has an occasion) per bit
    occasion = None
    anniversary = None
    for rule in rules:
        kind = rule.get("kind")
        rule_occasion = None
        if kind == "vip_entry":
            fired = frame["is_heavy_user"].astype(bool)
        elif kind == "nth_order":
            fired = frame["order_count"] >= int(rule["n"])
        elif kind == "spend_threshold":
            fired = frame["revenue"] >= float(rule["amount"])
        elif kind == "anniversary":
            if anniversary is None:
                anniversary = last_anniversary(frame["first_order_local"], frame["today_local"])
            dates, years = anniversary
            since = (frame["today_local"] - dates).dt.days
            fired = (years >= 1) & (since < int(rule.get("window_days", 14))) & (frame["order_count"] > 0)
            # Every anniversary rule reads the same dates, so they share one occasion (the year).
            year_codes, years = pd.factorize(dates.dt.year.to_numpy(dtype=float, na_value=np.nan))
            names = np.array([str(int(year)) for year in years] + [""], dtype=object)  # code -1: no date
            rule_occasion = occasion = pd.Series(names[year_codes], index=frame.index)
        else:
            continue
        due = fired.fillna(False).to_numpy(dtype=bool, copy=True)
        if given is not None and len(given) and due.any():
            given_here = given[given["rule"] == rule["key"]]
            if len(given_here):
                keys = pd.MultiIndex.from_arrays([given_here["customer_id"].astype("int64"),
                                                  given_here["occasion"].fillna("").astype(str)])
                fired_at = np.flatnonzero(due)
                occasions = rule_occasion.to_numpy()[fired_at] if rule_occasion is not None else np.full(len(fired_at), "")
                already = pd.MultiIndex.from_arrays([customer_ids[fired_at], occasions.astype(str)]).isin(keys)
                due[fired_at[already]] = False
        due_bits |= due.astype("int64") << len(entries)
        entries.append((rule["key"], rule.get("label") or RULE_KINDS.get(kind, kind), rule_occasion is not None))
    # One list per distinct combination of rewards (and anniversary year), shared by the customers who have it.
    occasion_codes, occasion_names = (pd.factorize(occasion.where(due_bits > 0, ""))
                                      if occasion is not None else (np.zeros(len(frame), dtype="int64"), [""]))
    combination_codes, combinations = pd.factorize(due_bits * len(occasion_names) + occasion_codes)
    sets = []
    for combination in combinations:
        bits, occasion_code = divmod(int(combination), len(occasion_names))
        sets.append([{"rule": key, "occasion": str(occasion_names[occasion_code]) if has_occasion else "",
                      "label": label}
                     for bit, (key, label, has_occasion) in enumerate(entries) if bits >> bit & 1])
    return DueRewards(sets, combination_codes)


def mark_reward_given(customer, rule: str, occasion: str = "", note: str = "") -> bool:
    """Record that ``customer`` got the reward of ``rule`` (and occasion); return False if it was already given.

    The customer's metrics row stops listing the reward at once, and a ``reward_given`` lifecycle event
    records it. Call inside the customer's workspace scope.
    """
    from lifecycle.models import CustomerMetrics, LifecycleEvent, RewardGrant

    with transaction.atomic():
        try:
            with transaction.atomic():
                RewardGrant.objects.create(customer=customer, rule=rule, occasion=occasion or "", note=note[:200])
        except IntegrityError:
            return False
        metrics = CustomerMetrics.objects.select_for_update().filter(customer=customer).first()
        label = rule
        if metrics is not None:
            remaining = []
            for reward in metrics.due_rewards or []:
                if reward.get("rule") == rule and (reward.get("occasion") or "") == (occasion or ""):
                    label = reward.get("label") or rule
                else:
                    remaining.append(reward)
            was_due = metrics.is_reward_due
            metrics.due_rewards = remaining
            metrics.is_reward_due = bool(remaining)
            metrics.computed_at = timezone.now()
            metrics.save(update_fields=["due_rewards", "is_reward_due", "computed_at"])
            if was_due and not remaining:
                LifecycleEvent.objects.create(customer=customer, kind="reward_due", from_value="on", to_value="off",
                                              reason=f"reward given: {label}")
        LifecycleEvent.objects.create(customer=customer, kind="reward_given", from_value="",
                                      to_value=rule[:30], reason=f"{label}{' ' + occasion if occasion else ''}"[:300])
    return True
