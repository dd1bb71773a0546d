"""bench/lifecycle.py and bench/segments.py on a tiny workspace: they run, print their figures and ratios, and
the compiled segments count the same customers as the hand-written SQL (so the scripts do not rot)."""

import pytest

from bench import lifecycle as lifecycle_bench
from bench import segments as segments_bench
from bench.generate import generate
from crm_site.tenancy import tenant_scope
from lifecycle.models import CustomerMetrics, LifecycleRun

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def tiny_bench():
    result = generate(customers=300, orders=2400, seed=3, workspace_slug="tiny-bench", lines=True, analyze=False,
                      chunk_customers=200, echo=None)
    return result


def test_lifecycle_bench_prints_the_refreshes_beside_the_baseline_and_judges_all_but_the_cold_one(tiny_bench):
    printed = []

    result = lifecycle_bench.run("tiny-bench", refreshes=3, echo=printed.append)

    report = "\n".join(printed)
    assert "300 customers, 2,400 orders" in report
    assert "baseline GROUP BY customer" in report
    assert "Refresh 1:" in report and "Refresh 3:" in report and "x its baseline" in report
    assert "cold first refresh, not judged" in report and "Refreshes as of now: 2, ratio median" in report
    assert len(result.refreshes) == 3 and len(result.baseline_seconds) == 4
    # The first refresh wrote every customer; the ones right after, as of the same moment, (almost) nobody.
    assert result.first_is_cold and result.judged == [1, 2]
    assert result.refreshes[0].rows_written == 300
    assert all(timing.rows_written < 30 and timing.events_written < 30 for timing in result.refreshes[1:])
    assert result.worst_ratio == max(result.ratio(1), result.ratio(2)) > 0
    # Each refresh is compared with the baselines measured just before and just after it.
    before, after = result.baseline_seconds[1:3]
    assert result.ratio(1) == result.refreshes[1].seconds / ((before + after) / 2)
    with tenant_scope(tiny_bench.workspace_id):
        assert CustomerMetrics.objects.count() == 300
        assert LifecycleRun.objects.count() == 3


def test_lifecycle_bench_runs_nights_as_of_the_days_after_today(tiny_bench):
    lifecycle_bench.run("tiny-bench", refreshes=1, echo=lambda *args: None)
    printed = []

    result = lifecycle_bench.run("tiny-bench", refreshes=2, nights=True, echo=printed.append)

    report = "\n".join(printed)
    assert "untimed refresh as of now" in report
    assert "night 1 (+1 d)" in report and "night 2 (+2 d)" in report and "Nights: 2, ratio median" in report
    assert not result.first_is_cold and result.judged == [0, 1]
    with tenant_scope(tiny_bench.workspace_id):
        assert LifecycleRun.objects.count() == 4  # the cold one, the untimed one, two nights


def test_segment_bench_counts_agree_and_print_percentiles_and_ratios(tiny_bench):
    lifecycle_bench.run("tiny-bench", echo=lambda *args: None)
    printed = []

    results = segments_bench.run("tiny-bench", repeats=3, echo=printed.append)

    report = "\n".join(printed)
    assert len(results) == len(segments_bench.segment_cases()) >= 4
    assert report.count("ratio ") == len(results)
    assert "compiled      p50" in report and "hand-written  p50" in report and "p95" in report
    assert all(len(timing.compiled) == len(timing.hand_written) == 3 for timing in results)
    # Somebody is in the broad segments (the counts are compared with the hand-written SQL on every run).
    assert any(timing.count > 0 for timing in results)


def test_segment_bench_refuses_a_workspace_without_metrics(tiny_bench):
    with pytest.raises(segments_bench.BenchError, match="bench/lifecycle.py"):
        segments_bench.run("tiny-bench", repeats=1, echo=lambda *args: None)
