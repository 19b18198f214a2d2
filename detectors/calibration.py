"""Turn a series' own history of deviations into p-values (empirical body, Pareto tail).

Why: a robust z-score of 6 is routine for a bursty tweet count and a once-a-year event for a
smooth CPU gauge.  One fixed threshold on raw z-scores therefore either floods the noisy
series or misses everything on the calm ones.  Calibrating each series against its *own*
past deviations makes "p = 1e-4" mean the same rarity everywhere, so one alert threshold
works without per-series tuning.

How: a histogram of ``log2(z)`` in fixed bins (constant memory).  Below the
``tail_quantile`` the p-value is the empirical exceedance frequency.  Beyond it — where a
few hundred points hold too few samples — the tail is extrapolated with a Pareto
(exponential in ``log z``) fit whose exponent is the mean log-excess of the observed tail
(the peaks-over-threshold / Hill estimator).  Heavy-tailed series get a heavy tail and need
a much larger deviation for the same p-value.
"""

from __future__ import annotations

import math
from array import array
from typing import Final, NamedTuple

#: Histogram layout over ``log2(z)``: bins of 1/4 octave from 2**-12 to 2**28.
_LOG2_LO: Final = -12.0
_STEP: Final = 0.25
_NBINS: Final = 160
#: The Pareto tail is fitted on at least this many observations (a 1 % tail of 300 points
#: is 3 points: far too few to estimate a tail exponent from).
_MIN_TAIL: Final = 20.0


def _bin(z: float) -> int:
    if z <= 0.0:
        return 0
    b = int((math.log2(z) - _LOG2_LO) / _STEP)
    return min(max(b, 0), _NBINS - 1)


class TailCalibrator:
    """Online p-values ``P(Z >= z)`` for a non-negative deviation statistic ``Z``.

    Args:
        tail_quantile: where the empirical body ends and the Pareto tail begins.
        min_count: below this many observations every p-value is 1 (not calibrated yet).

    >>> cal = TailCalibrator()
    >>> for i in range(1000):
    ...     cal.add(1.0 + (i % 10) / 10)
    >>> cal.p_value(1.0) > 0.5, cal.p_value(50.0) < 1e-3
    (True, True)
    """

    __slots__ = ("_cache", "_counts", "_n", "min_count", "tail_quantile")

    def __init__(self, tail_quantile: float = 0.99, min_count: int = 50) -> None:
        if not 0.5 <= tail_quantile < 1.0:
            msg = f"tail_quantile must be in [0.5, 1), got {tail_quantile}"
            raise ValueError(msg)
        self.tail_quantile = tail_quantile
        self.min_count = min_count
        self._counts = array("d", bytes(8 * _NBINS))
        self._n = 0.0
        self._cache: _TailCache | None = None

    def __getstate__(self) -> tuple[float, int, dict[int, float], float]:
        # Most bins are empty: a sparse snapshot is a fraction of the 1.3 KB array.
        sparse = {i: c for i, c in enumerate(self._counts) if c}
        return (self.tail_quantile, self.min_count, sparse, self._n)

    def __setstate__(self, state: tuple[float, int, dict[int, float], float]) -> None:
        self.tail_quantile, self.min_count, sparse, self._n = state
        self._counts = array("d", bytes(8 * _NBINS))
        for i, c in sparse.items():
            self._counts[i] = c
        self._cache = None

    @property
    def count(self) -> float:
        """Number of observations learned."""
        return self._n

    def add(self, z: float) -> None:
        """Learn one observation of the statistic."""
        self._counts[_bin(z)] += 1.0
        self._n += 1.0
        self._cache = None

    def p_value(self, z: float) -> float:
        """Return the estimated exceedance probability of ``z`` (1.0 until calibrated)."""
        if self._n < self.min_count:
            return 1.0
        cache = self._cache or self._build_cache()
        b = _bin(z)
        if b <= cache.tail_bin:
            above = cache.suffix[b + 1]
            return (above + 0.5 * self._counts[b] + 1.0) / (self._n + 1.0)
        log_u = _LOG2_LO + cache.tail_bin * _STEP
        excess = (math.log2(z) - log_u) / cache.mean_excess
        return cache.tail_n / (self._n + 1.0) * math.exp(-excess)

    def _build_cache(self) -> _TailCache:
        """Suffix sums and the Pareto fit (``P(u) * exp(-log2(z/u) / mean_excess)``)."""
        counts, n = self._counts, self._n
        suffix = [0.0] * (_NBINS + 1)
        for i in range(_NBINS - 1, -1, -1):
            suffix[i] = suffix[i + 1] + counts[i]
        target = max((1.0 - self.tail_quantile) * n, min(_MIN_TAIL, n))
        tail_bin = next((i for i in range(_NBINS - 1, -1, -1) if suffix[i] >= target), 0)
        tail_n = suffix[tail_bin]
        excess = sum(
            counts[i] * ((i - tail_bin) * _STEP + _STEP / 2) for i in range(tail_bin, _NBINS)
        )
        mean_excess = max(excess / tail_n, _STEP / 2) if tail_n > 0 else _STEP / 2
        self._cache = _TailCache(suffix, tail_bin, tail_n, mean_excess)
        return self._cache


class _TailCache(NamedTuple):
    """Derived from the counts; rebuilt lazily after :meth:`TailCalibrator.add`, never pickled."""

    suffix: list[float]
    tail_bin: int
    tail_n: float
    mean_excess: float


class EwStats:
    """Exponentially weighted mean and variance (West's update), constant memory.

    Used for the distribution of the smoothed surprise, where a Gaussian tail is a good
    approximation because the statistic is an average.
    """

    __slots__ = ("alpha", "mean", "n", "var")

    def __init__(self, halflife: float) -> None:
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife)
        self.mean = 0.0
        self.var = 0.0
        self.n = 0

    def __getstate__(self) -> tuple[float, float, float, int]:
        return (self.alpha, self.mean, self.var, self.n)

    def __setstate__(self, state: tuple[float, float, float, int]) -> None:
        self.alpha, self.mean, self.var, self.n = state

    def add(self, x: float) -> None:
        """Learn one value (the first values get larger weights so the start is unbiased)."""
        self.n += 1
        a = max(self.alpha, 1.0 / self.n)
        d = x - self.mean
        self.mean += a * d
        self.var = (1.0 - a) * (self.var + a * d * d)

    def upper_p(self, x: float, min_sd: float) -> float:
        """Return the Gaussian upper-tail probability of ``x``."""
        sd = max(math.sqrt(self.var), min_sd)
        return 0.5 * math.erfc((x - self.mean) / (sd * math.sqrt(2.0)))
