"""The scorer contract every detector family implements (River's two-method shape).

Why a contract in prose and a tiny protocol: the alert policy, the engine, the conformance
suite and the NAB benchmark only need two methods, so any scorer can be dropped into any of
them.  The rules:

* ``score_one(x)`` returns a float, **higher = more anomalous**, and never changes state.
  Each scorer documents its range; the statistical ones return ``s / (s + 10)`` in ``[0, 1)``
  where ``s = -log10(p-value)`` (see :func:`surprise_to_score`), so one threshold means the
  same evidence for every statistical family.
* ``learn_one(x)`` updates the state.  The caller always scores first and learns second;
  scorers keep anomalous observations out of their own baseline (River's ``protect``
  habit), so an incident cannot teach the detector that it is normal.
* Hyperparameters are constructor arguments; any randomness takes a seed.
* State is plain data (lists, ``array``, numbers), so scorers pickle cheaply; that is what
  Bytewax recovery snapshots.
"""

from __future__ import annotations

import math
from typing import Final, Protocol, TypeVar, runtime_checkable

X_contra = TypeVar("X_contra", contravariant=True)

#: Scale of :func:`surprise_to_score`: a score of 0.5 means a p-value of ``10**-SURPRISE_SCALE``.
SURPRISE_SCALE: Final = 10.0

#: Smallest p-value we report; keeps ``-log10`` finite.
MIN_P: Final = 1e-300


@runtime_checkable
class Scorer(Protocol[X_contra]):
    """Online anomaly scorer: score first, then learn."""

    def score_one(self, x: X_contra) -> float:
        """Return the anomaly score of ``x`` without changing state."""
        ...

    def learn_one(self, x: X_contra) -> None:
        """Update the state with ``x`` (after it has been scored)."""
        ...


def surprise(p_value: float) -> float:
    """Return ``-log10(p)`` ("decimal digits of surprise"), clamped to finite values."""
    return -math.log10(min(1.0, max(p_value, MIN_P)))


def surprise_to_score(s: float) -> float:
    """Map a surprise ``s >= 0`` to a score in ``[0, 1)``: ``s / (s + 10)``.

    Monotone, so ordering (what NAB and the alert threshold use) is preserved, and bounded,
    so a single absurd p-value cannot dominate a dashboard.

    >>> surprise_to_score(surprise(1e-3))
    0.23076923076923078
    """
    s = max(0.0, s)
    return s / (s + SURPRISE_SCALE)


def score_to_p(score: float) -> float:
    """Invert :func:`surprise_to_score` back to a p-value (used in docs and messages)."""
    if score <= 0.0:
        return 1.0
    if score >= 1.0:
        return MIN_P
    s = SURPRISE_SCALE * score / (1.0 - score)
    return float(10.0**-s)


def p_to_score(p_value: float) -> float:
    """Return the score of a p-value: ``surprise_to_score(surprise(p))``."""
    return surprise_to_score(surprise(p_value))
