"""Which rows of a closed window break a series down one level: the candidates for contributors.

Why a module of its own: the contributors an alert names (:mod:`spanpulse.detectors.contributors`)
can only come from rows the window already has, and which rows split a series exactly is a
question about grains, not about detectors.

* **Refinements.**  A configured grain that adds one dimension (``tenant.model`` for
  ``tenant``) splits each series of the coarser grain exactly.
* **Version stand-ins.**  A series of a *versioned* grain (``feature.prompt_version``) has no
  tenant breakdown among the default grains, so "a prompt version's cost per call rose" could
  never say that one tenant's prompts grew.  ``tenant.feature`` rows split the same calls
  whenever the feature ran one prompt version in that window -- which is most windows: a
  rollout is a short overlap.  For such a series, the rows of a grain that swaps the version
  dimension for another one are used as its children, labelled with the one version; while
  two versions overlap, none are (they would mix both versions' calls).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import polars as pl

#: Dimensions that name a version of what the rest of a grain names (a feature's prompt, a
#: model's snapshot): see the module docstring.
VERSION_DIMENSIONS: Final = frozenset({"prompt_version", "response_model"})

#: Stand-in children kept per series and window, busiest first: a feature has hundreds of
#: tenants, the contributor baselines keep only the 50 busiest anyway
#: (``DetectorConfig.max_children``), and scoring every tenant of every prompt version each
#: window cost 17 % more detection CPU (measured, session 10) for rows that could never be named.
STAND_IN_LIMIT: Final = 50


def child_grains(
    grain_dims: Sequence[str], grains: Sequence[Sequence[str]]
) -> list[tuple[str, ...]]:
    """Return every configured grain that refines ``grain_dims`` by exactly one dimension."""
    parent = set(grain_dims)
    return [tuple(d) for d in grains if len(d) == len(grain_dims) + 1 and parent < set(d)]


def stand_in_grains(
    grain_dims: Sequence[str], grains: Sequence[Sequence[str]]
) -> list[tuple[tuple[str, ...], str]]:
    """Return ``(grain, version dimension)`` for grains that swap a version dimension of ``grain_dims``.

    ``tenant.feature`` for ``feature.prompt_version``: same size, all but the version dimension
    in common, one dimension added.
    """
    parent = set(grain_dims)
    out: list[tuple[tuple[str, ...], str]] = []
    for dims in grains:
        other = set(dims)
        if len(dims) != len(grain_dims) or len(other - parent) != 1:
            continue
        (dropped,) = parent - other
        if dropped in VERSION_DIMENSIONS:
            out.append((tuple(dims), dropped))
    return out


def window_children(
    by_grain: Mapping[str, pl.DataFrame],
    grain_dims: Sequence[str],
    grains: Sequence[Sequence[str]],
    stand_in_limit: int = STAND_IN_LIMIT,
) -> pl.DataFrame | None:
    """Return one window's child rows of every series of ``grain_dims`` (or None).

    ``by_grain`` holds the window's rows per grain name.  Refinement rows come as they are;
    stand-in rows (see the module docstring) get the version dimension's column, set only
    where the series' base had a single version in the window (other rows are left out), and
    only the ``stand_in_limit`` busiest per series.  Their ``grain`` names the parent's
    dimensions plus the one they add (``feature.prompt_version.tenant``), so a contributor
    carries the parent's dimensions as every other contributor does.
    """
    parts = [
        by_grain[n] for c in child_grains(grain_dims, grains) if (n := ".".join(c)) in by_grain
    ]
    own = by_grain.get(".".join(grain_dims))
    if own is not None and not own.is_empty():
        for dims, version in stand_in_grains(grain_dims, grains):
            rows = by_grain.get(".".join(dims))
            if rows is None or rows.is_empty():
                continue
            base = [d for d in grain_dims if d != version]
            single = (
                own.group_by(base)
                .agg(pl.col(version).unique())
                .filter(pl.col(version).list.len() == 1)
                .with_columns(pl.col(version).list.first())
            )
            (added,) = set(dims) - set(grain_dims)
            labelled = (
                rows.drop(version, strict=False)
                .join(single, on=base, how="inner")
                .filter(
                    pl.col("calls").rank("ordinal", descending=True).over(base) <= stand_in_limit
                )
                .with_columns(pl.lit(".".join((*grain_dims, added))).alias("grain"))
            )
            parts.append(labelled.select(rows.columns) if version in rows.columns else labelled)
    return pl.concat(parts, how="diagonal_relaxed") if parts else None
