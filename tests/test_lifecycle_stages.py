"""Stages and flags on hand-built purchase histories: each rule, its boundary, time zones and leap days.

Histories are real orders in the database; a full lifecycle refresh as of a fixed moment classifies them.
Default policy: onboarding 30 days, at risk after 2 × the usual gap (never before 14 days), one-time buyers at
risk after 90 days, lapsed after 365 days, reinforcement for 7 days after a purchase.
"""

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest

from crm_site.tenancy import tenant_scope
from lifecycle.models import CustomerMetrics, LifecycleEvent, LifecyclePolicy
from lifecycle.rewards import mark_reward_given
from lifecycle.runs import refresh_workspace
from lifecycle.stages import classify, heavy_user_threshold
from tests.factories import CustomerFactory, OrderFactory

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2025, 6, 15, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def customer(workspace, signed_up_days_ago=400, **fields):
    return CustomerFactory(tenant=workspace, first_seen_at=NOW - signed_up_days_ago * DAY, **fields)


def buy(person, days_ago=None, total="50.00", at=None, **fields):
    placed_at = at if at is not None else NOW - days_ago * DAY
    return OrderFactory(tenant=person.tenant, customer=person, placed_at=placed_at, total=Decimal(total), **fields)


def history(workspace, *days_ago, total="50.00", **customer_fields):
    """A customer who ordered on each of the given days (days before NOW)."""
    person = customer(workspace, **customer_fields)
    for days in days_ago:
        buy(person, days, total=total)
    return person


def set_policy(workspace, **fields):
    with tenant_scope(workspace):
        policy, _ = LifecyclePolicy.objects.get_or_create()
        for name, value in fields.items():
            setattr(policy, name, value)
        policy.save()


def refresh(workspace, now=NOW):
    return refresh_workspace(workspace, now=now)


def metrics_of(person) -> CustomerMetrics:
    with tenant_scope(person.tenant_id):
        return CustomerMetrics.objects.get(customer=person)


def stage_of(person) -> str:
    return metrics_of(person).stage


# --- Prospects and onboarding -----------------------------------------------------------------------


def test_sign_up_without_purchase_is_onboarding_for_the_window_then_prospect(workspace):
    fresh = customer(workspace, signed_up_days_ago=29)
    at_window = customer(workspace, signed_up_days_ago=30)
    refresh(workspace)
    assert stage_of(fresh) == "onboarding"
    assert metrics_of(fresh).reason == "signed up 29 days ago; no purchase yet"
    assert stage_of(at_window) == "prospect"
    assert metrics_of(at_window).reason == "no purchase in 30 days since sign-up"


def test_first_purchase_starts_onboarding_for_exactly_the_onboarding_days(workspace):
    day_29 = history(workspace, 29)
    day_30 = history(workspace, 30)
    refresh(workspace)
    assert stage_of(day_29) == "onboarding"
    assert metrics_of(day_29).reason == "first purchase 29 days ago; 1 order"
    assert stage_of(day_30) == "active"


def test_onboarding_window_follows_the_policy(workspace):
    set_policy(workspace, onboarding_days=10)
    person = history(workspace, 10)
    refresh(workspace)
    assert stage_of(person) == "active"


# --- At risk against the customer's own rhythm -----------------------------------------------------


def test_customer_overdue_against_own_rhythm_is_at_risk_one_day_after_twice_the_usual_gap(workspace):
    on_threshold = history(workspace, 180, 120, 90, 60)  # usual gap 30 days, last order 60 days ago
    one_day_before = history(workspace, 179, 119, 89, 59)
    one_day_after = history(workspace, 181, 121, 91, 61)
    refresh(workspace)
    assert stage_of(one_day_before) == "active"
    assert stage_of(on_threshold) == "active"
    assert stage_of(one_day_after) == "at_risk"
    assert metrics_of(one_day_after).reason == "last order 61 days ago; usual gap 30 days"


def test_usual_gap_is_the_median_gap_between_purchase_days(workspace):
    person = history(workspace, 300, 200, 170, 140, 110, 100)  # gaps 100, 30, 30, 30, 10 -> median 30
    same_day_twice = history(workspace, 100, 100, 70)  # two orders on one day are one purchase occasion
    refresh(workspace)
    assert metrics_of(person).usual_gap_days == 30
    assert metrics_of(same_day_twice).usual_gap_days == 30
    assert metrics_of(same_day_twice).order_count == 3


def test_a_very_short_rhythm_is_not_at_risk_before_the_minimum_days(workspace):
    fourteen = history(workspace, 44, 18, 16, 14)  # usual gap 2 days; 14 days is not more than the 14-day floor
    fifteen = history(workspace, 45, 19, 17, 15)
    refresh(workspace)
    assert stage_of(fourteen) == "active"
    assert stage_of(fifteen) == "at_risk"


def test_gap_multiplier_follows_the_policy(workspace):
    set_policy(workspace, at_risk_gap_multiplier=1.5)
    person = history(workspace, 106, 76, 46)  # 46 > 1.5 × 30
    refresh(workspace)
    assert stage_of(person) == "at_risk"


def test_one_time_buyer_is_at_risk_after_the_fallback_days(workspace):
    ninety = history(workspace, 90)
    ninety_one = history(workspace, 91)
    refresh(workspace)
    assert stage_of(ninety) == "active"
    assert stage_of(ninety_one) == "at_risk"
    assert metrics_of(ninety_one).reason == "last order 91 days ago; only one order"


# --- Lapsed ------------------------------------------------------------------------------------------


def test_no_order_for_the_lapsed_days_is_lapsed(workspace):
    day_before = history(workspace, 364)
    on_the_day = history(workspace, 365)
    repeat_buyer = history(workspace, 500, 400)
    refresh(workspace)
    assert stage_of(day_before) == "at_risk"
    assert stage_of(on_the_day) == "lapsed"
    assert stage_of(repeat_buyer) == "lapsed"
    assert metrics_of(repeat_buyer).reason == "last order 400 days ago; usual gap 100 days"


def test_a_purchase_brings_a_lapsed_customer_back_to_active_with_an_event(workspace):
    person = history(workspace, 500, 400)
    refresh(workspace)
    buy(person, 1)
    refresh(workspace)
    assert stage_of(person) == "active"
    with tenant_scope(workspace):
        latest = LifecycleEvent.objects.filter(customer=person, kind="stage").first()
    assert (latest.from_value, latest.to_value) == ("lapsed", "active")


def test_a_stored_prediction_is_rewritten_once_it_moved_beyond_its_tolerance(workspace):
    # Predictions drift daily for everyone who does not buy; a refresh rewrites one only when it moved by more
    # than its tolerance (predicted CLV: 10 %, at least 1.00; P(alive): 0.02), or when the row changes anyway.
    close, far, unknown = (history(workspace, 40, 10, total="200.00") for _ in range(3))
    refresh(workspace)
    with tenant_scope(workspace):
        computed = CustomerMetrics.objects.get(customer=close).predicted_clv_12m
        assert computed > 10
        CustomerMetrics.objects.filter(customer=close).update(predicted_clv_12m=computed * Decimal("1.05"))
        CustomerMetrics.objects.filter(customer=far).update(predicted_clv_12m=computed * Decimal("1.5"))
        CustomerMetrics.objects.filter(customer=unknown).update(p_alive=0.5)  # the rules model has no P(alive)

    result = refresh(workspace)

    assert result.rows_written == 2
    assert metrics_of(close).predicted_clv_12m == (computed * Decimal("1.05")).quantize(Decimal("0.01"))
    assert metrics_of(far).predicted_clv_12m == computed
    assert metrics_of(unknown).p_alive is None


# --- Probability of being alive (BG/NBD) ----------------------------------------------------------


def frame_of(**columns):
    """A one-customer metrics frame as lifecycle.metrics produces it, with the given values."""
    row = {
        "customer_id": 1, "time_zone": "UTC", "signed_up_at": pd.Timestamp(NOW - 400 * DAY),
        "first_order_at": pd.Timestamp(NOW - 200 * DAY), "last_order_at": pd.Timestamp(NOW - 20 * DAY),
        "order_count": 5, "revenue": 250.0, "trailing_revenue_12m": 250.0, "usual_gap_days": 40.0,
        "p_alive": float("nan"),
    }
    row.update(columns)
    return pd.DataFrame([row])


@pytest.mark.parametrize(("p_alive", "stage"), [(0.30, "active"), (0.29, "at_risk"), (0.10, "at_risk"),
                                                (0.09, "lapsed")])
def test_p_alive_below_the_thresholds_is_at_risk_then_lapsed(workspace, p_alive, stage):
    classified = classify(frame_of(p_alive=p_alive), LifecyclePolicy(), NOW)
    assert classified.loc[0, "stage"] == stage
    assert classified.loc[0, "reason"] == f"last order 20 days ago; usual gap 40 days; P(alive) {p_alive:.2f}"


def test_without_a_model_p_alive_plays_no_part(workspace):
    classified = classify(frame_of(), LifecyclePolicy(), NOW)
    assert classified.loc[0, "stage"] == "active"
    assert "P(alive)" not in classified.loc[0, "reason"]


# --- Time zones ------------------------------------------------------------------------------------


def test_days_are_counted_in_the_customer_time_zone(workspace):
    # 23:30 on 15 May in Los Angeles is already 16 May in UTC; on 14 June (LA) that is 30 days, not 29.
    late_night = dt.datetime(2025, 5, 16, 6, 30, tzinfo=dt.UTC)
    now = dt.datetime(2025, 6, 14, 19, 0, tzinfo=dt.UTC)  # 12:00 in Los Angeles
    angeleno = customer(workspace, time_zone="America/Los_Angeles")
    londoner = customer(workspace, time_zone="")  # the workspace's zone: UTC
    buy(angeleno, at=late_night)
    buy(londoner, at=late_night)
    refresh(workspace, now=now)
    assert stage_of(angeleno) == "active"
    assert metrics_of(angeleno).days_since_last_order == 30
    assert stage_of(londoner) == "onboarding"
    assert metrics_of(londoner).days_since_last_order == 29


def test_an_unknown_time_zone_falls_back_to_the_workspace_zone(workspace):
    workspace.time_zone = "Asia/Tokyo"
    workspace.save()
    person = customer(workspace, time_zone="Mars/Olympus_Mons")
    buy(person, at=dt.datetime(2025, 6, 14, 16, 0, tzinfo=dt.UTC))  # 15 June 01:00 in Tokyo
    refresh(workspace, now=dt.datetime(2025, 6, 15, 2, 0, tzinfo=dt.UTC))
    assert metrics_of(person).days_since_last_order == 0


# --- Heavy users -----------------------------------------------------------------------------------


def test_heavy_users_are_the_top_customers_making_the_pareto_share_of_trailing_revenue(workspace):
    whale = history(workspace, 10, total="800.00")
    regular = history(workspace, 10, total="100.00")
    small = [history(workspace, 10, total="50.00") for _ in range(2)]
    old_whale = history(workspace, 400, total="5000.00")  # outside the trailing 12 months
    refresh(workspace)
    assert metrics_of(whale).is_heavy_user
    assert not any(metrics_of(p).is_heavy_user for p in (regular, *small, old_whale))
    assert metrics_of(whale).trailing_revenue_12m == Decimal("800.00")
    assert metrics_of(old_whale).trailing_revenue_12m == 0


def test_heavy_user_share_follows_the_policy(workspace):
    set_policy(workspace, heavy_user_revenue_share=0.85)
    whale = history(workspace, 10, total="800.00")
    regular = history(workspace, 10, total="100.00")
    small = history(workspace, 10, total="100.00")
    refresh(workspace)
    # 800 + 100 = 900 reaches 85% of 1,000; the other 100 ties with the marginal customer and counts too.
    assert metrics_of(whale).is_heavy_user and metrics_of(regular).is_heavy_user and metrics_of(small).is_heavy_user


def test_pareto_threshold_of_revenues():
    assert heavy_user_threshold(pd.Series([800.0, 100.0, 50.0, 50.0]), 0.8) == 800.0
    assert heavy_user_threshold(pd.Series([800.0, 100.0, 50.0, 50.0]), 0.81) == 100.0
    assert heavy_user_threshold(pd.Series([0.0, 0.0]), 0.8) is None


# --- Reinforcement ---------------------------------------------------------------------------------


def test_reinforce_is_due_within_the_window_after_an_established_customer_buys(workspace):
    six_days = history(workspace, 100, 60, 6)
    seven_days = history(workspace, 100, 60, 7)
    newcomer = history(workspace, 10, 6)  # still onboarding
    refresh(workspace)
    assert metrics_of(six_days).is_reinforce_due
    assert not metrics_of(seven_days).is_reinforce_due
    assert not metrics_of(newcomer).is_reinforce_due
    with tenant_scope(workspace):
        event = LifecycleEvent.objects.get(customer=six_days, kind="reinforce_due")
    assert (event.to_value, event.reason) == ("on", "ordered 6 days ago; order 3")


# --- Rewards ---------------------------------------------------------------------------------------


def test_nth_order_reward_is_due_until_given(workspace):
    set_policy(workspace, reward_rules=[{"key": "fifth", "kind": "nth_order", "n": 5, "label": "Fifth order"}])
    four = history(workspace, 50, 40, 30, 20)
    five = history(workspace, 50, 40, 30, 20, 10)
    refresh(workspace)
    assert not metrics_of(four).is_reward_due
    assert metrics_of(five).is_reward_due
    assert metrics_of(five).due_rewards == [{"rule": "fifth", "occasion": "", "label": "Fifth order"}]
    with tenant_scope(workspace):
        assert mark_reward_given(five, "fifth") is True
        assert mark_reward_given(five, "fifth") is False  # given once
        assert LifecycleEvent.objects.filter(customer=five, kind="reward_given", to_value="fifth").exists()
    assert not metrics_of(five).is_reward_due
    refresh(workspace, now=NOW + DAY)
    assert not metrics_of(five).is_reward_due


def test_spend_threshold_reward_fires_at_exactly_the_amount_net_of_refunds(workspace):
    set_policy(workspace, reward_rules=[{"key": "big", "kind": "spend_threshold", "amount": 500}])
    exactly = history(workspace, 20, total="500.00")
    refunded = customer(workspace)
    buy(refunded, 20, total="520.00", refunded_amount=Decimal("20.01"), status="partially_refunded")
    cancelled = customer(workspace)
    buy(cancelled, 20, total="900.00", status="cancelled")
    refresh(workspace)
    assert metrics_of(exactly).is_reward_due
    assert metrics_of(refunded).revenue == Decimal("499.99")
    assert not metrics_of(refunded).is_reward_due
    assert metrics_of(cancelled).order_count == 0
    assert metrics_of(cancelled).stage == "prospect"


def test_vip_reward_fires_when_a_customer_becomes_a_heavy_user(workspace):
    set_policy(workspace, reward_rules=[{"key": "vip", "kind": "vip_entry", "label": "Welcome to VIP"}])
    whale = history(workspace, 10, total="900.00")
    minnow = history(workspace, 10, total="100.00")
    refresh(workspace)
    assert metrics_of(whale).due_rewards == [{"rule": "vip", "occasion": "", "label": "Welcome to VIP"}]
    assert not metrics_of(minnow).is_reward_due


def anniversary_policy(workspace, window_days=7):
    set_policy(workspace, reward_rules=[{"key": "anniversary", "kind": "anniversary", "window_days": window_days}])


def test_anniversary_reward_is_due_from_the_day_for_the_window(workspace):
    anniversary_policy(workspace)
    person = customer(workspace)
    buy(person, at=dt.datetime(2024, 6, 15, 12, tzinfo=dt.UTC))
    refresh(workspace, now=dt.datetime(2025, 6, 14, 12, tzinfo=dt.UTC))
    assert not metrics_of(person).is_reward_due
    refresh(workspace, now=dt.datetime(2025, 6, 15, 12, tzinfo=dt.UTC))
    assert metrics_of(person).due_rewards == [
        {"rule": "anniversary", "occasion": "2025", "label": "Anniversary of the first order"}]
    refresh(workspace, now=dt.datetime(2025, 6, 21, 12, tzinfo=dt.UTC))  # day 6 of 7
    assert metrics_of(person).is_reward_due
    refresh(workspace, now=dt.datetime(2025, 6, 22, 12, tzinfo=dt.UTC))
    assert not metrics_of(person).is_reward_due


def test_leap_day_first_order_has_its_anniversary_on_28_february_in_common_years(workspace):
    anniversary_policy(workspace, window_days=1)
    person = customer(workspace)
    buy(person, at=dt.datetime(2024, 2, 29, 12, tzinfo=dt.UTC))
    refresh(workspace, now=dt.datetime(2025, 2, 27, 12, tzinfo=dt.UTC))
    assert not metrics_of(person).is_reward_due
    refresh(workspace, now=dt.datetime(2025, 2, 28, 12, tzinfo=dt.UTC))
    assert metrics_of(person).due_rewards[0]["occasion"] == "2025"
    refresh(workspace, now=dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC))
    assert not metrics_of(person).is_reward_due
    # In a leap year it is 29 February again.
    refresh(workspace, now=dt.datetime(2028, 2, 28, 12, tzinfo=dt.UTC))
    assert not metrics_of(person).is_reward_due
    refresh(workspace, now=dt.datetime(2028, 2, 29, 12, tzinfo=dt.UTC))
    assert metrics_of(person).due_rewards[0]["occasion"] == "2028"


def test_anniversary_is_the_first_order_day_in_the_customer_time_zone(workspace):
    anniversary_policy(workspace, window_days=1)
    # 07:30 UTC on 29 February 2024 is still 28 February in Los Angeles.
    first_order = dt.datetime(2024, 2, 29, 7, 30, tzinfo=dt.UTC)
    angeleno = customer(workspace, time_zone="America/Los_Angeles")
    in_utc = customer(workspace, time_zone="UTC")
    buy(angeleno, at=first_order)
    buy(in_utc, at=first_order)
    refresh(workspace, now=dt.datetime(2028, 2, 28, 20, tzinfo=dt.UTC))  # 28 Feb in both zones
    assert metrics_of(angeleno).is_reward_due
    assert not metrics_of(in_utc).is_reward_due


# --- Each threshold follows the workspace's policy, at its boundary ---------------------------------------


@pytest.mark.parametrize(("policy", "days_ago", "stage"), [
    ({"lapsed_days": 200}, (199,), "at_risk"),
    ({"lapsed_days": 200}, (200,), "lapsed"),
    ({"one_time_buyer_at_risk_days": 60}, (60,), "active"),
    ({"one_time_buyer_at_risk_days": 60}, (61,), "at_risk"),
    ({"at_risk_min_days": 30}, (36, 34, 32, 30), "active"),  # usual gap 2 days: the 30-day floor decides
    ({"at_risk_min_days": 30}, (37, 35, 33, 31), "at_risk"),
])
def test_stage_thresholds_follow_the_policy_at_their_boundary(workspace, policy, days_ago, stage):
    set_policy(workspace, **policy)
    person = history(workspace, *days_ago)
    refresh(workspace)
    assert stage_of(person) == stage


def test_reinforce_window_follows_the_policy(workspace):
    set_policy(workspace, reinforce_window_days=3)
    two_days = history(workspace, 100, 60, 2)
    three_days = history(workspace, 100, 60, 3)
    refresh(workspace)
    assert metrics_of(two_days).is_reinforce_due
    assert not metrics_of(three_days).is_reinforce_due


def test_a_heavy_user_overtaken_by_others_loses_the_flag_with_an_event(workspace):
    whale = history(workspace, 10, total="800.00")
    small = history(workspace, 10, total="200.00")
    refresh(workspace)
    assert metrics_of(whale).is_heavy_user and not metrics_of(small).is_heavy_user
    for _ in range(3):
        history(workspace, 5, total="2000.00")
    refresh(workspace, now=NOW + DAY)
    assert not metrics_of(whale).is_heavy_user
    with tenant_scope(workspace):
        on, off = LifecycleEvent.objects.filter(customer=whale, kind="heavy_user").order_by("occurred_at")
    assert (on.from_value, on.to_value, on.reason) == ("off", "on", "12-month revenue 800.00; among the top customers")
    assert (off.from_value, off.to_value, off.reason) == (
        "on", "off", "no longer among the top customers by 12-month revenue")


# --- Calendar days: leap years and daylight saving time ------------------------------------------------------


def test_days_since_an_order_count_the_leap_day(workspace):
    # 1 March 2023 to 29 February 2024 is 365 days (a leap year): lapsed; a year later, 365 days is 1 March.
    leap = customer(workspace)
    buy(leap, at=dt.datetime(2023, 3, 1, 12, tzinfo=dt.UTC))
    refresh(workspace, now=dt.datetime(2024, 2, 29, 12, tzinfo=dt.UTC))
    assert metrics_of(leap).days_since_last_order == 365
    assert stage_of(leap) == "lapsed"

    common = customer(workspace)
    buy(common, at=dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC))
    refresh(workspace, now=dt.datetime(2025, 2, 28, 12, tzinfo=dt.UTC))
    assert metrics_of(common).days_since_last_order == 364
    assert stage_of(common) == "at_risk"


def test_a_first_order_on_a_leap_day_ends_onboarding_on_its_30th_calendar_day(workspace):
    person = customer(workspace)
    buy(person, at=dt.datetime(2024, 2, 29, 9, tzinfo=dt.UTC))
    refresh(workspace, now=dt.datetime(2024, 3, 29, 23, tzinfo=dt.UTC))  # 29 days later
    assert stage_of(person) == "onboarding"
    refresh(workspace, now=dt.datetime(2024, 3, 30, 0, 30, tzinfo=dt.UTC))  # 30 days later
    assert stage_of(person) == "active"


def test_a_day_is_a_calendar_day_in_the_customer_zone_across_daylight_saving_time(workspace):
    # Berlin moved its clocks forward on 30 March 2025: 23:30 on the 29th to 23:30 on the 30th is 23 hours, one day.
    berliner = customer(workspace, time_zone="Europe/Berlin")
    buy(berliner, at=dt.datetime(2025, 3, 29, 22, 30, tzinfo=dt.UTC))  # 23:30 CET
    refresh(workspace, now=dt.datetime(2025, 3, 30, 21, 30, tzinfo=dt.UTC))  # 23:30 CEST
    assert metrics_of(berliner).days_since_last_order == 1
    # And the autumn change: 00:30 on 26 October to 23:30 on the 26th is 24 hours but the same day.
    autumn = customer(workspace, time_zone="Europe/Berlin")
    buy(autumn, at=dt.datetime(2025, 10, 25, 22, 30, tzinfo=dt.UTC))  # 00:30 CEST on the 26th
    refresh(workspace, now=dt.datetime(2025, 10, 26, 22, 30, tzinfo=dt.UTC))  # 23:30 CET on the 26th
    assert metrics_of(autumn).days_since_last_order == 0


# --- The metrics row's copy of first seen (the customer list sorts stage filters by it) ---------------

def test_the_metrics_row_keeps_a_current_copy_of_first_seen(workspace):
    person = history(workspace, 40, 10)
    refresh(workspace)
    assert metrics_of(person).first_seen_at == person.first_seen_at

    assert refresh(workspace).rows_written == 0  # nothing changed: nothing written

    earlier = person.first_seen_at - 30 * DAY
    with tenant_scope(workspace):
        type(person).objects.filter(pk=person.pk).update(first_seen_at=earlier)
    result = refresh(workspace)
    assert result.rows_written == 1
    assert metrics_of(person).first_seen_at == earlier
