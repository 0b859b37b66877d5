"""The drift statistics against known distributions (same vs shifted, at fixed seeds) and against scipy where
scipy has the same test."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from services.drift.statistics import (
    DriftTests, categorical_drift, chi_square_test, delta_drift, embedding_drift, jensen_shannon_test, ks_test,
    mmd_test, numeric_drift, psi_test, wasserstein_test)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_ks_matches_scipy_and_its_critical_value_agrees_with_its_p_value(rng):
    for shift in (0.0, 0.1, 0.2, 0.3, 0.5):
        reference, current = rng.normal(size=400), rng.normal(shift, 1, size=300)
        result = ks_test(reference, current)
        expected = stats.ks_2samp(reference, current, method="asymp")
        assert result.score == pytest.approx(expected.statistic)
        assert result.p_value == pytest.approx(expected.pvalue, abs=0.02)
        # the exact test gives nearly the same p-value at these sizes
        assert result.p_value == pytest.approx(stats.ks_2samp(reference, current).pvalue, abs=0.02)
        assert result.drifted == (result.p_value < 0.05) == (result.score > result.threshold)


def test_ks_sees_no_drift_in_the_same_distribution_and_drift_in_a_shifted_one(rng):
    reference = rng.normal(size=500)
    assert not ks_test(reference, rng.normal(size=300)).drifted
    assert ks_test(reference, rng.normal(0.5, 1, size=300)).drifted
    assert ks_test(reference, rng.normal(0, 2, size=300)).drifted  # same mean, wider spread


def test_wasserstein_is_scipys_distance_over_the_reference_spread(rng):
    reference, current = rng.normal(10, 4, size=5000), rng.normal(12, 4, size=5000)
    result = wasserstein_test(reference, current)
    assert result.score == pytest.approx(stats.wasserstein_distance(reference, current) / np.std(reference))
    assert result.score == pytest.approx(0.5, abs=0.05)  # the mean moved half a standard deviation
    assert result.drifted and result.p_value is None
    assert not wasserstein_test(reference, rng.normal(10, 4, size=5000)).drifted


def test_wasserstein_of_a_constant_reference_does_not_divide_by_zero():
    assert not wasserstein_test(np.zeros(2000), np.zeros(2000)).drifted
    assert wasserstein_test(np.zeros(2000), np.ones(2000)).drifted


def test_psi_is_small_on_the_same_distribution_and_large_on_a_shifted_one(rng):
    reference = rng.normal(size=5000)
    same = psi_test(reference, rng.normal(size=5000))
    shifted = psi_test(reference, rng.normal(1, 1, size=5000))
    assert same.score < 0.02 and not same.drifted
    assert shifted.score > 0.25 and shifted.drifted
    # by hand: half of the current falls in a bin that held a tenth of the reference
    reference = np.arange(1000.0)
    current = np.concatenate([np.full(500, 950.0), np.arange(0.0, 1000.0, 2)])
    ref_share = np.full(10, 0.1)
    cur_share = np.concatenate([np.full(9, 0.05), [0.55]])
    assert psi_test(reference, current).score == pytest.approx(
        float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share))))


def test_chi_square_matches_scipys_contingency_test():
    reference, current = {"person": 400, "car": 150, "bus": 20}, {"person": 120, "car": 80, "truck": 5}
    result = chi_square_test(reference, current)
    table = np.array([[20, 150, 400, 0], [0, 80, 120, 5]])
    statistic, p_value, dof, _ = stats.chi2_contingency(table, correction=False)
    assert result.score == pytest.approx(statistic) and result.p_value == pytest.approx(p_value)
    assert result.threshold == pytest.approx(stats.chi2.isf(0.05, dof))
    assert result.drifted


def test_chi_square_sees_no_drift_in_the_same_mix_and_drift_in_a_changed_one(rng):
    shares = [0.6, 0.3, 0.1]
    labels = np.array(["person", "car", "bicycle"])

    def mix(p, n):
        drawn = rng.choice(labels, size=n, p=p)
        return {str(k): int(v) for k, v in zip(*np.unique(drawn, return_counts=True))}

    reference = mix(shares, 800)
    assert not chi_square_test(reference, mix(shares, 300)).drifted
    assert chi_square_test(reference, mix([0.3, 0.6, 0.1], 300)).drifted


def test_chi_square_with_a_single_class_on_both_sides_is_no_drift():
    result = chi_square_test({"person": 10}, {"person": 500})
    assert not result.drifted and result.p_value == 1.0


def test_jensen_shannon_matches_scipy_and_is_bounded_by_one():
    reference, current = {"a": 70, "b": 30}, {"a": 30, "b": 60, "c": 10}
    result = jensen_shannon_test(reference, current)
    assert result.score == pytest.approx(distance.jensenshannon([0.7, 0.3, 0.0], [0.3, 0.6, 0.1], base=2))
    assert result.drifted
    assert jensen_shannon_test({"a": 5}, {"b": 5}).score == pytest.approx(1.0)
    assert jensen_shannon_test({"a": 700, "b": 300}, {"a": 1400, "b": 600}).score == pytest.approx(0.0, abs=1e-7)


def test_mmd_sees_no_drift_on_the_same_distribution_and_drift_on_a_shifted_one(rng):
    reference = rng.normal(size=(300, 16))
    same = mmd_test(reference, rng.normal(size=(300, 16)))
    shifted = mmd_test(reference, rng.normal(0.3, 1, size=(300, 16)))
    assert not same.drifted and same.p_value > 0.05
    assert shifted.drifted and shifted.p_value < 0.01 and shifted.score > shifted.threshold
    assert shifted.reference_size == 300  # the sizes before subsampling


def test_mmd_is_reproducible_with_its_fixed_seed(rng):
    reference, current = rng.normal(size=(250, 8)), rng.normal(0.1, 1, size=(250, 8))
    assert mmd_test(reference, current) == mmd_test(reference, current)


def test_mmd_matches_a_direct_unbiased_estimate_with_the_median_heuristic(rng):
    x, y = rng.normal(size=(30, 3)), rng.normal(0.5, 1, size=(40, 3))
    pooled = np.vstack([x, y])
    squared = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1)
    bandwidth2 = np.median(squared[np.triu_indices(70, 1)])
    kernel = np.exp(-squared / (2 * bandwidth2))
    kxx, kyy, kxy = kernel[:30, :30], kernel[30:, 30:], kernel[:30, 30:]
    expected = ((kxx.sum() - np.trace(kxx)) / (30 * 29) + (kyy.sum() - np.trace(kyy)) / (40 * 39)
                - 2 * kxy.mean())
    assert mmd_test(x, y).score == pytest.approx(expected)


def test_tests_are_chosen_by_sample_size(rng):
    small, large = rng.normal(size=500), rng.normal(size=5000)
    # the reference's size decides (as in Evidently), so a feature keeps its metric whatever a window holds
    assert numeric_drift(small, large).metric == "ks"
    assert numeric_drift(large, small).metric == "wasserstein"
    assert numeric_drift(large, large, DriftTests(numeric_large="psi")).metric == "psi"
    assert categorical_drift({"a": 500, "b": 10}, {"a": 5000, "b": 5}).metric == "chi2"
    assert categorical_drift({"a": 5000, "b": 10}, {"a": 50, "b": 5}).metric == "jensen_shannon"
    assert embedding_drift(rng.normal(size=(50, 4)), rng.normal(size=(50, 4))).metric == "mmd"
    # a part of a large reference (being calibrated) gets the statistic the whole reference will get
    assert numeric_drift(small, small, reference_size=5000).metric == "wasserstein"
    assert categorical_drift({"a": 500}, {"a": 50, "b": 5}, reference_size=5000).metric == "jensen_shannon"


def test_severity_ranks_results_across_metrics():
    assert delta_drift(0.8, 0.5, 0.1).severity == pytest.approx(3.0)
    assert delta_drift(0.8, 0.78, 0.1).severity < 1 and not delta_drift(0.8, 0.78, 0.1).drifted


def test_an_empty_sample_is_refused():
    with pytest.raises(ValueError):
        ks_test([], [1.0])
    with pytest.raises(ValueError):
        chi_square_test({"a": 1}, {})
    with pytest.raises(ValueError):
        DriftTests(numeric_large="kl")
