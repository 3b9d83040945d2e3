"""The one statistics helper of the studies: mean, spread and comparisons over seeds.

Over seeds (results tables, accuracy-by-size tables, transfer sweeps) the studies report
the mean and the *sample* standard deviation (divisor n − 1, the unbiased variance
estimate; 0 for a single value), or the mean with the half-width of its 95 % confidence
interval (Student's t, :func:`mean_ci`); two rows are compared by Welch's t-test
(:func:`welch_p`, unequal variances; :func:`diff_ci` the interval of their difference). Missing values (None, NaN) are left out; infinite values
are kept, so a diverged seed with an infinite metric makes the mean infinite instead of
vanishing from the table.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping, Sequence


def _values(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)]


def mean_std(values: Iterable[Any]) -> tuple[float, float]:
    """``(mean, sample standard deviation)`` of the numbers in ``values`` (see the module
    docstring); ``(nan, nan)`` when none is left. With an infinite value the mean is
    ±inf and the standard deviation NaN."""
    vals = _values(values)
    if not vals:
        return math.nan, math.nan
    infinite = {v for v in vals if math.isinf(v)}
    if infinite:
        return (infinite.pop() if len(infinite) == 1 else math.nan), math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def mean_ci(values: Iterable[Any], level: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the ``level`` confidence interval of the mean, Student's t with
    n − 1 degrees of freedom: ``t_{(1+level)/2, n-1} · s / √n``. The half-width is NaN for
    fewer than two finite values (no interval from one seed)."""
    from scipy import stats

    vals = _values(values)
    mean, std = mean_std(vals)
    n = len(vals)
    if n < 2 or not math.isfinite(std):
        return mean, math.nan
    return mean, float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)


def welch_p(a: Iterable[Any], b: Iterable[Any]) -> float:
    """Two-sided p-value of Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) that
    ``a`` and ``b`` have equal means; NaN with fewer than two finite values on either side,
    or when both are constant (no variance to test against)."""
    from scipy import stats

    x, y = _values(a), _values(b)
    if len(x) < 2 or len(y) < 2 or not all(map(math.isfinite, x + y)):
        return math.nan
    if statistics.pvariance(x) == 0 and statistics.pvariance(y) == 0:
        return math.nan
    return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def diff_ci(a: Iterable[Any], b: Iterable[Any], level: float = 0.95) -> tuple[float, float]:
    """``(mean(a) − mean(b), half-width)`` of the Welch interval of a difference of means: t with
    the Welch–Satterthwaite degrees of freedom times √(s_a²/n_a + s_b²/n_b). The half-width is
    NaN with fewer than two finite values on either side or no variance on both."""
    from scipy import stats

    x, y = _values(a), _values(b)
    if not x or not y:
        return math.nan, math.nan
    diff = statistics.fmean(x) - statistics.fmean(y)
    if len(x) < 2 or len(y) < 2 or not all(map(math.isfinite, x + y)):
        return diff, math.nan
    vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    if vx + vy == 0:
        return diff, math.nan
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return diff, float(stats.t.ppf((1 + level) / 2, df)) * math.sqrt(vx + vy)


def summarize(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], by: Sequence[str]) -> list[dict[str, Any]]:
    """One record per distinct ``by`` key (in order of first appearance) with
    ``<metric>_mean``, ``<metric>_std`` (:func:`mean_std`) for every metric and ``n``
    (the number of rows in the group)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        rec: dict[str, Any] = dict(zip(by, key, strict=True))
        for m in metrics:
            rec[f"{m}_mean"], rec[f"{m}_std"] = mean_std(r.get(m) for r in rs)
        rec["n"] = len(rs)
        out.append(rec)
    return out


__all__ = ["diff_ci", "mean_ci", "mean_std", "summarize", "welch_p"]
