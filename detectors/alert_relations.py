"""Which alerts can explain which: related signals, blame, grain order.

Why a module of its own: the inhibitor (:mod:`spanpulse.detectors.inhibit`) decides *when* an
alert is held; these pure relations say *whether* one alert can be another's cause, and are
shared with its tests and documentation.

**Related signals.**  An alert on signal ``c`` explains a symptom on signal ``s`` when
``s == c`` (the metric without a rule's operator: ``length_share>0.05`` is ``length_share``)
or ``s`` is in :data:`EXPLAINS` ``[c]``: more length stops mean longer outputs, slower calls
and truncated JSON; input tokens (p95 and per call) and context fill measure one prompt size;
longer prompts or outputs cost more per call (a call is priced per token).
The relation is directed: a latency alert never explains a length-stop alert, nor a cost per
call alert a token one.

**Blame.**  An alert *blames* a series when its top contributor explains at least
:data:`BLAME_SHARE` of its change; the series blamed is the contributor's dimensions that the
alert does not have (``tenant=t-3`` for a ``model=o3`` alert whose top contributor is
``tenant=t-3, model=o3``), and any series between that and the contributor is "the blamed
series" (``tenant=t-3`` and the pair).  A model-wide problem spreads over the model's tenants
(none explains half of it unless it is half the traffic), so a tenant that explains most of a
model's change is that change's cause.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from spanpulse.schemas.alert import Alert

#: A contributor explaining at least this share of a change is the change's cause (the
#: evaluation's ``MIN_CONTRIBUTOR_SHARE`` uses the same bar to attribute an alert).
BLAME_SHARE: Final = 0.5

_OUTPUT: Final = frozenset({"output_tokens_p95", "output_tokens_per_call"})
_SLOWER: Final = frozenset({"latency_p95", "latency_mean"})
_PROMPT: Final = frozenset({"input_tokens_p95", "input_tokens_per_call", "context_fill_p95"})

#: Cause signal -> the signals of its symptoms (besides itself); see the module docstring.
EXPLAINS: Final[Mapping[str, frozenset[str]]] = {
    "length_share": _OUTPUT | _SLOWER | {"parse_failure_rate", "cost_per_call"},
    **{s: (_OUTPUT - {s}) | _SLOWER | {"cost_per_call"} for s in _OUTPUT},
    **{s: (_PROMPT - {s}) | {"cost_per_call"} for s in _PROMPT},
}

_OPERATOR: Final = re.compile(r"[<>=]")

Dims = Mapping[str, str]


def signal_of(alert: Alert) -> str:
    """Return the alert's signal: its metric, without a threshold rule's operator and value."""
    return _OPERATOR.split(alert.metric, maxsplit=1)[0]


def explains(cause: str, symptom: str) -> bool:
    """Whether an alert on signal ``cause`` can explain one on signal ``symptom``."""
    return cause == symptom or symptom in EXPLAINS.get(cause, ())


def grain_rank(grain: str) -> tuple[int, int]:
    """Sort key that puts fleet-level grains first: no ``tenant`` first, then fewer dimensions."""
    dims = grain.split(".") if grain else []
    return ("tenant" in dims, len(dims))


def cause_rank(signal: str) -> int:
    """Signals that explain more come first, so a window's cause is published before symptoms."""
    return -len(EXPLAINS.get(signal, ()))


def blames(top: Dims, dims: Dims, other: Dims, other_grain: str, grain: str) -> bool:
    """Whether a contributor ``top`` of an alert on ``dims`` points at the open alert ``other``."""
    added = {k: v for k, v in top.items() if k not in dims}
    return (
        bool(added)
        and grain_rank(other_grain) <= grain_rank(grain)
        and all(other.get(k) == v for k, v in added.items())
        and all(dims[k] == v for k, v in other.items() if k in dims)
    )


def is_subset(small: Dims, big: Dims) -> bool:
    """Whether the series ``small`` (non-empty) contains the series ``big`` (agrees on its dims)."""
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def is_strict_subset(small: Dims, big: Dims) -> bool:
    """Whether ``small`` is a coarser series than ``big`` that contains it."""
    return len(small) < len(big) and is_subset(small, big)
