"""The buy-till-you-die fits reproduce the published parameters on the public CDNOW sample.

Fader, Hardie & Lee (2005) fit BG/NBD to 2,357 CDNOW customers over a 39-week calibration period (1 January to
30 September 1997): r = 0.243, alpha = 4.414 (weeks), a = 0.793, b = 2.426. Fader & Hardie (2013) fit
Gamma-Gamma to the same customers' repeat spend: p = 6.25, q = 3.74, gamma = 15.44.

The data come from the ``Lifetimes`` package (a test extra), which ships the CDNOW sample; only its data files
are read, the library itself is never imported.
"""

import datetime as dt
import os
from decimal import Decimal
from importlib import metadata

import pandas as pd
import pytest

from crm_site.tenancy import tenant_scope
from customers.models import Customer, Order
from lifecycle import predictive
from lifecycle.models import CustomerMetrics, LifecycleRun
from lifecycle.runs import refresh_workspace

CALIBRATION_END = dt.datetime(1997, 9, 30, 12, 0, tzinfo=dt.UTC)


def cdnow_file(name: str):
    try:
        distribution = metadata.distribution("Lifetimes")
    except metadata.PackageNotFoundError:
        message = "the CDNOW sample comes with the test extras: pip install -e '.[test]' (package Lifetimes)"
        if os.environ.get("RAPPORT_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return distribution.locate_file(f"lifetimes/datasets/{name}")


def significant(value: float, figures: int = 2) -> float:
    return float(f"{value:.{figures}g}")


def assert_published_bgnbd(model: predictive.BetaGeometricNBD, alpha_unit_days: float = 7.0):
    assert significant(model.r) == significant(0.243)
    assert significant(model.alpha / alpha_unit_days) == significant(4.414)
    assert significant(model.a) == significant(0.793)
    assert significant(model.b) == significant(2.426)


def test_bgnbd_fit_reproduces_the_published_cdnow_parameters():
    summary = pd.read_csv(cdnow_file("cdnow_customers_summary.csv"))
    assert len(summary) == 2357
    model = predictive.fit_bgnbd(summary["frequency"], summary["recency"], summary["T"])
    assert_published_bgnbd(model, alpha_unit_days=1.0)
    assert model.log_likelihood == pytest.approx(-9582.4, abs=0.1)  # the paper's LL


def test_gamma_gamma_fit_reproduces_the_published_cdnow_parameters():
    summary = pd.read_csv(cdnow_file("cdnow_customers_summary_with_transactions.csv"))
    model = predictive.fit_gamma_gamma(summary["x"], summary["zbar"])
    assert (significant(model.p, 3), significant(model.q, 3), significant(model.gamma, 4)) == (6.25, 3.74, 15.45)


def test_a_fit_started_from_earlier_parameters_finds_the_same_optimum():
    # A nightly refit starts from the workspace's last run; here from parameters 30 % off the optimum.
    summary = pd.read_csv(cdnow_file("cdnow_customers_summary.csv"))
    cold = predictive.fit_bgnbd(summary["frequency"], summary["recency"], summary["T"])
    earlier = {"r": cold.r * 1.3, "alpha": cold.alpha * 0.7, "a": cold.a * 1.3, "b": cold.b * 0.7}
    warm = predictive.fit_bgnbd(summary["frequency"], summary["recency"], summary["T"], previous=earlier)
    assert warm.log_likelihood == pytest.approx(cold.log_likelihood, abs=1e-6)
    assert_published_bgnbd(warm, alpha_unit_days=1.0)

    spend = pd.read_csv(cdnow_file("cdnow_customers_summary_with_transactions.csv"))
    cold_spend = predictive.fit_gamma_gamma(spend["x"], spend["zbar"])
    warm_spend = predictive.fit_gamma_gamma(spend["x"], spend["zbar"],
                                            previous={"p": 4.0, "q": 5.0, "gamma": 25.0})
    assert warm_spend.log_likelihood == pytest.approx(cold_spend.log_likelihood, abs=1e-6)
    assert (significant(warm_spend.p, 3), significant(warm_spend.q, 3)) == (6.25, 3.74)


def test_probability_alive_and_expected_purchases_follow_the_paper_formulas():
    model = predictive.BetaGeometricNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)
    # No repeat purchase: the BG/NBD customer cannot have dropped out yet.
    assert model.probability_alive([0], [0], [38.86])[0] == 1.0
    # A customer who bought often but long ago is probably gone; one who bought recently probably is not.
    stale, fresh = model.probability_alive([7, 7], [5, 38], [38.86, 38.86])
    assert stale < 0.05 < 0.9 < fresh
    # Expected purchases in the 39-week holdout for a customer with x=2, t_x=30.43, T=38.86 (the sample's first).
    assert model.expected_purchases(39, [2], [30.43], [38.86])[0] == pytest.approx(1.23, abs=0.01)


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_workspace_with_the_cdnow_orders_fits_the_published_parameters(workspace):
    transactions = pd.read_csv(cdnow_file("CDNOW_sample.txt"), sep=r"\s+", header=None,
                               names=["master_id", "customer", "date", "quantity", "amount"], dtype={"date": str})
    with tenant_scope(workspace):
        customers = Customer.objects.bulk_create(
            Customer(tenant=workspace, external_id=f"CDNOW-{index}", first_seen_at=CALIBRATION_END - dt.timedelta(days=400))
            for index in sorted(transactions["customer"].unique())
        )
        by_index = {int(c.external_id.split("-")[1]): c.pk for c in customers}
        Order.objects.bulk_create(
            Order(tenant=workspace, customer_id=by_index[row.customer], external_id=f"T{position}",
                  placed_at=dt.datetime.strptime(row.date, "%Y%m%d").replace(hour=12, tzinfo=dt.UTC),
                  total=Decimal(str(row.amount)))
            for position, row in enumerate(transactions.itertuples())
        )
    # The orders after the calibration period exist but are not seen as of its end.
    result = refresh_workspace(workspace, now=CALIBRATION_END)
    assert result.customers == 2357
    assert result.model_kind == "bgnbd"
    with tenant_scope(workspace):
        run = LifecycleRun.objects.get()
        published = pd.read_csv(cdnow_file("cdnow_customers_summary.csv"))
        assert run.repeat_customers == (published["frequency"] > 0).sum()
        assert_published_bgnbd(predictive.BetaGeometricNBD(**run.model_params["bgnbd"]))
        first = CustomerMetrics.objects.get(customer_id=by_index[1])
    # Customer 1 bought on 1 Jan, 18 Jan and 2 Aug 1997 in the calibration period.
    assert (first.order_count, first.days_since_last_order) == (3, 59)
    assert first.model_kind == "bgnbd" and 0 < first.p_alive <= 1 and first.expected_purchases_12m > 0
    assert first.predicted_clv_12m > 0
