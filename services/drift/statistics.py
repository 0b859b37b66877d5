"""Drift statistics, chosen by the feature's type and the sample size (as Evidently chooses them): numeric features by
the two-sample Kolmogorov-Smirnov test on small samples and the normalized Wasserstein distance (or PSI) on large
ones; a categorical mix by chi-square on small samples and the Jensen-Shannon distance on large ones; embeddings by
MMD with a permutation test. Pure functions of numpy arrays and counts; nothing here knows of windows or Kafka.

Every result reads the same way: `score > threshold` is drift. For the tests with a p-value, the score is the
test statistic and the threshold its critical value at `alpha`, so a row of drift_scores needs no per-metric
reading; the p-value is kept beside it."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats
from scipy.spatial import distance

# Up to this many observations in the reference, numeric and categorical features are tested with a hypothesis
# test (KS, chi-square); above it, with a distance (Wasserstein, PSI, Jensen-Shannon). The tests' power grows with
# the sample: on thousands of observations a shift too small to matter (a cloud passing) gives p < 0.05, while a
# distance measures how much moved whatever the size. 1,000 in the reference is Evidently's boundary; the
# reference, not the window, decides, so a feature keeps one metric from window to window (and the reference's
# calibrated threshold for that metric, see profiles.py) however many frames each window happens to hold.
SMALL_SAMPLE_MAX = 1000

# Defaults as Evidently's: p < 0.05 for the tests, 0.1 for the normalized Wasserstein and Jensen-Shannon
# distances, 0.1 for PSI (its conventional "moderate shift"; 0.25 is "major").
ALPHA = 0.05
WASSERSTEIN_THRESHOLD = 0.1
JENSEN_SHANNON_THRESHOLD = 0.1
PSI_THRESHOLD = 0.1
PSI_BINS = 10
# A floor for the reference's spread when normalizing Wasserstein: a constant feature (an empty scene's count
# of detections) would otherwise divide by zero.
MIN_NORMALIZER = 1e-3
# A floor for a bin's share in PSI: an empty bin would give an infinite log ratio.
PSI_EPSILON = 1e-4

# MMD: each side subsampled to at most this many vectors, so the kernel matrix (and the permutations over it) stay
# cheap at window close; the permutation count bounds the smallest p-value at 1/(permutations+1).
MMD_MAX_SAMPLES = 100
MMD_PERMUTATIONS = 200
MMD_SEED = 20261128


@dataclass(frozen=True)
class DriftResult:
    """One feature compared between a window and its reference. `drifted` is `score > threshold`."""

    metric: str  # "ks", "wasserstein", "psi", "chi2", "jensen_shannon", "mmd", "delta"
    score: float
    threshold: float
    drifted: bool
    p_value: float | None = None
    feature: str = ""
    reference_size: int = 0
    current_size: int = 0

    @property
    def severity(self) -> float:
        """Score over threshold: comparable across metrics, so features can be ranked (> 1 is drift)."""
        return self.score / self.threshold if self.threshold > 0 else math.inf if self.score > 0 else 0.0

    def named(self, feature: str) -> DriftResult:
        return replace(self, feature=feature)

    def with_threshold_at_least(self, threshold: float) -> DriftResult:
        """The same score against a threshold raised to `threshold` if that is higher (a reference's own
        window-to-window spread, see profiles.calibrated_thresholds)."""
        if threshold <= self.threshold:
            return self
        return replace(self, threshold=threshold, drifted=self.score > threshold)


@dataclass(frozen=True)
class DriftTests:
    """Which statistic for which sample, and their thresholds (the service's settings map onto this)."""

    small_sample_max: int = SMALL_SAMPLE_MAX
    alpha: float = ALPHA
    numeric_large: str = "wasserstein"  # or "psi"
    wasserstein_threshold: float = WASSERSTEIN_THRESHOLD
    psi_threshold: float = PSI_THRESHOLD
    jensen_shannon_threshold: float = JENSEN_SHANNON_THRESHOLD
    mmd_permutations: int = MMD_PERMUTATIONS
    mmd_max_samples: int = MMD_MAX_SAMPLES
    mmd_seed: int = MMD_SEED

    def __post_init__(self) -> None:
        if self.numeric_large not in ("wasserstein", "psi"):
            raise ValueError(f"numeric_large must be 'wasserstein' or 'psi', not {self.numeric_large!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), not {self.alpha}")


def _sample(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError("a drift statistic needs a non-empty sample on each side")
    return array


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """The largest gap between the two empirical CDFs (as scipy's ks_2samp computes it)."""
    ref, cur = np.sort(reference), np.sort(current)
    pooled = np.concatenate([ref, cur])
    gaps = np.searchsorted(ref, pooled, side="right") / ref.size - np.searchsorted(cur, pooled, side="right") / cur.size
    return float(np.max(np.abs(gaps)))


def ks_test(reference, current, alpha: float = ALPHA) -> DriftResult:
    """Two-sample KS: score is the largest gap between the two empirical CDFs, threshold its critical value.
    Smirnov's limiting distribution gives both the p-value and the critical value, so that `score > threshold`
    and `p_value < alpha` agree exactly. (scipy's "asymp" method evaluates the finite-n Kolmogorov distribution,
    and its inverse for a critical value: 17 ms a feature, most of a window's close in the benchmark; this is
    microseconds, within 0.02 of scipy's p-value from a hundred observations a side.)"""
    ref, cur = _sample(reference), _sample(current)
    m, n = float(ref.size), float(cur.size)
    scale = math.sqrt(m * n / (m + n))
    statistic = ks_statistic(ref, cur)
    p_value = float(stats.kstwobign.sf(statistic * scale))
    critical = float(stats.kstwobign.isf(alpha)) / scale
    return DriftResult("ks", statistic, critical, statistic > critical, p_value,
                       reference_size=ref.size, current_size=cur.size)


def wasserstein_test(reference, current, threshold: float = WASSERSTEIN_THRESHOLD) -> DriftResult:
    """Earth mover's distance in units of the reference's standard deviation (Evidently's "normed" Wasserstein):
    0.1 means the mass moved a tenth of a standard deviation on average."""
    ref, cur = _sample(reference), _sample(current)
    normalizer = max(float(np.std(ref)), MIN_NORMALIZER)
    score = float(stats.wasserstein_distance(ref, cur)) / normalizer
    return DriftResult("wasserstein", score, threshold, score > threshold,
                       reference_size=ref.size, current_size=cur.size)


def psi_test(reference, current, threshold: float = PSI_THRESHOLD, bins: int = PSI_BINS) -> DriftResult:
    """Population stability index over the reference's quantile bins (values beyond the reference's range fall
    into the outer bins): sum over bins of (current share - reference share) * ln(current / reference)."""
    ref, cur = _sample(reference), _sample(current)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    ref_share = np.maximum(ref_share, PSI_EPSILON)
    cur_share = np.maximum(cur_share, PSI_EPSILON)
    score = float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))
    return DriftResult("psi", score, threshold, score > threshold, reference_size=ref.size, current_size=cur.size)


def _aligned_counts(reference: Mapping[str, float], current: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    categories = sorted(set(reference) | set(current))
    ref = np.array([reference.get(c, 0) for c in categories], dtype=np.float64)
    cur = np.array([current.get(c, 0) for c in categories], dtype=np.float64)
    if ref.sum() <= 0 or cur.sum() <= 0:
        raise ValueError("a categorical drift statistic needs at least one observation on each side")
    return ref, cur


def chi_square_test(reference: Mapping[str, float], current: Mapping[str, float], alpha: float = ALPHA) -> DriftResult:
    """Chi-square test of homogeneity on the 2 x k table of counts (reference, current): unlike a goodness-of-fit
    test against the reference's shares, a class absent from the reference does not divide by zero."""
    ref, cur = _aligned_counts(reference, current)
    seen = (ref + cur) > 0
    ref, cur = ref[seen], cur[seen]
    sizes = (int(ref.sum()), int(cur.sum()))
    if ref.size < 2:  # one class on both sides: nothing can have moved
        return DriftResult("chi2", 0.0, math.inf, False, 1.0, reference_size=sizes[0], current_size=sizes[1])
    statistic, p_value, dof, _ = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    critical = float(stats.chi2.isf(alpha, dof))
    return DriftResult("chi2", float(statistic), critical, float(statistic) > critical, float(p_value),
                       reference_size=sizes[0], current_size=sizes[1])


def jensen_shannon_test(reference: Mapping[str, float], current: Mapping[str, float],
                        threshold: float = JENSEN_SHANNON_THRESHOLD) -> DriftResult:
    """Jensen-Shannon distance (base 2, so in [0, 1]) between the two mixes."""
    ref, cur = _aligned_counts(reference, current)
    score = float(distance.jensenshannon(ref / ref.sum(), cur / cur.sum(), base=2))
    return DriftResult("jensen_shannon", score, threshold, score > threshold,
                       reference_size=int(ref.sum()), current_size=int(cur.sum()))


def _squared_distances(x: np.ndarray) -> np.ndarray:
    norms = np.einsum("ij,ij->i", x, x)
    return np.maximum(norms[:, None] + norms[None, :] - 2.0 * x @ x.T, 0.0)


def _mmd2(kernel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each row of `labels` (True marks the first sample), all rows in one matrix product.
    `kernel` has a zero diagonal (the unbiased estimate leaves out each vector's kernel with itself)."""
    x = labels.astype(np.float64)
    y = 1.0 - x
    n, m = x.sum(axis=1), y.sum(axis=1)
    kx = x @ kernel
    return (np.einsum("ij,ij->i", kx, x) / (n * (n - 1)) + np.einsum("ij,ij->i", y @ kernel, y) / (m * (m - 1))
            - 2.0 * np.einsum("ij,ij->i", kx, y) / (n * m))


def mmd_test(reference, current, alpha: float = ALPHA, permutations: int = MMD_PERMUTATIONS,
             max_samples: int = MMD_MAX_SAMPLES, seed: int = MMD_SEED) -> DriftResult:
    """Maximum mean discrepancy between two sets of vectors with an RBF kernel whose bandwidth is the median
    pairwise distance of the pooled sample (the median heuristic), and a permutation test: the p-value is the
    share of random relabellings of the pooled sample whose MMD^2 reaches the observed one. Score is the
    unbiased MMD^2, threshold the (1 - alpha) quantile of the permuted ones. A fixed seed makes the same two
    samples give the same answer (on a replay, after a restart)."""
    rng = np.random.default_rng(seed)
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ref, cur = (a.reshape(len(a), -1) if a.ndim != 2 else a for a in (ref, cur))
    if len(ref) < 2 or len(cur) < 2:
        raise ValueError("MMD needs at least two vectors on each side")
    sizes = (len(ref), len(cur))
    if len(ref) > max_samples:
        ref = ref[rng.choice(len(ref), max_samples, replace=False)]
    if len(cur) > max_samples:
        cur = cur[rng.choice(len(cur), max_samples, replace=False)]
    pooled = np.vstack([ref, cur])
    squared = _squared_distances(pooled)
    upper = squared[np.triu_indices(len(pooled), k=1)]
    bandwidth2 = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-squared / (2.0 * bandwidth2))
    np.fill_diagonal(kernel, 0.0)
    first = np.zeros(len(pooled), dtype=bool)
    first[:len(ref)] = True
    observed = float(_mmd2(kernel, first[None, :])[0])
    null = _mmd2(kernel, rng.permuted(np.tile(first, (permutations, 1)), axis=1))
    p_value = float((1 + np.sum(null >= observed)) / (1 + permutations))
    critical = float(np.quantile(null, 1 - alpha))
    return DriftResult("mmd", observed, critical, p_value < alpha and observed > critical, p_value,
                       reference_size=sizes[0], current_size=sizes[1])


def numeric_drift(reference, current, tests: DriftTests = DriftTests(), reference_size: int | None = None
                  ) -> DriftResult:
    """KS when the reference is small, else the configured distance. `reference_size` (default: the reference's)
    decides instead when the reference is a part of the one live windows are compared with (calibration)."""
    ref, cur = _sample(reference), _sample(current)
    if (ref.size if reference_size is None else reference_size) <= tests.small_sample_max:
        return ks_test(ref, cur, tests.alpha)
    if tests.numeric_large == "psi":
        return psi_test(ref, cur, tests.psi_threshold)
    return wasserstein_test(ref, cur, tests.wasserstein_threshold)


def categorical_drift(reference: Mapping[str, float], current: Mapping[str, float],
                      tests: DriftTests = DriftTests(), reference_size: int | None = None) -> DriftResult:
    """Chi-square when the reference has few observations, else Jensen-Shannon (`reference_size` as above)."""
    if (sum(reference.values()) if reference_size is None else reference_size) <= tests.small_sample_max:
        return chi_square_test(reference, current, tests.alpha)
    return jensen_shannon_test(reference, current, tests.jensen_shannon_threshold)


def embedding_drift(reference, current, tests: DriftTests = DriftTests()) -> DriftResult:
    return mmd_test(reference, current, tests.alpha, tests.mmd_permutations, tests.mmd_max_samples, tests.mmd_seed)


def delta_drift(reference: float, current: float, tolerance: float) -> DriftResult:
    """A window's summary number (a performance estimate) against its reference's: drift when it moved by more
    than `tolerance` (absolute)."""
    score = abs(current - reference)
    return DriftResult("delta", score, tolerance, score > tolerance)
