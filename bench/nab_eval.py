"""Score the product's default level-shift detector on the Numenta Anomaly Benchmark.

Usage (from the repo root)::

    /work/venv/bin/python bench/nab_eval.py                 # scores only (~1 min)
    /work/venv/bin/python bench/nab_eval.py --write-doc     # + sensitivity, docs/nab-results.md

It runs ``spanpulse.detectors.level_shift.LevelShift()`` — the same class with the same
defaults the alert engine uses — once per NAB file, streaming (score, then learn), with the
row timestamp as the window time, and scores the output with the verified scorer in
``/work/shared/tools/nab_score.py`` on the standard, low-FP and low-FN profiles.

Honesty rules: one parameter set for the whole corpus, no per-file or per-category
settings, no use of the file length, min or max (the detector never sees them).  The NAB
threshold is the usual corpus-wide sweep per profile; we also report the score at the fixed
threshold the product alerts at (``DEFAULT_LEVEL_SHIFT_THRESHOLD``).  ``--write-doc`` adds
a one-parameter-at-a-time sensitivity table and ablations, so a reader can see the default
is not a knife-edge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

NAB_TOOLS = Path("/work/shared/tools")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(NAB_TOOLS))

import nab_score  # type: ignore[import-not-found]  # noqa: E402

from spanpulse.detectors.base import p_to_score  # noqa: E402
from spanpulse.detectors.config import DEFAULT_LEVEL_SHIFT_THRESHOLD  # noqa: E402
from spanpulse.detectors.level_shift import LevelShift, LevelShiftParams  # noqa: E402

COMMAND = "/work/venv/bin/python bench/nab_eval.py --write-doc"
PUBLISHED = {
    "ARTime": (74.9, 65.2, 80.4),
    "Numenta HTM": (70.1, 63.1, 74.3),
    "contextOSE": (69.9, 67.0, 73.2),
    "knncad": (58.0, 43.4, 64.8),
    "relativeEntropy": (54.6, 47.6, 58.8),
    "windowed Gaussian": (39.6, 20.9, 47.4),
    "River StandardAbsoluteDeviation": (40.6, None, None),
    "River HalfSpaceTrees": (14.6, None, None),
}
#: One-at-a-time variations around the defaults (sensitivity) and ablations.
VARIANTS: dict[str, dict[str, Any]] = {
    "smoothing=10": {"smoothing": 10},
    "smoothing=30": {"smoothing": 30},
    "window=150": {"window": 150},
    "window=600": {"window": 600},
    "refractory=50": {"refractory": 50},
    "refractory=200": {"refractory": 200},
    "tail_quantile=0.98": {"tail_quantile": 0.98},
    "no seasonal profile (season_slots=1)": {"season_slots": 1},
    "no range test (range_tolerance=1e9)": {"range_tolerance": 1e9},
    "no refractory (refractory=0)": {"refractory": 0},
}


def _epoch(ts: str) -> float:
    """NAB timestamps are naive wall times; read them as UTC (the detector wants epoch s)."""
    return datetime.fromisoformat(ts.strip()).replace(tzinfo=UTC).timestamp()


def make_run_fn(params: LevelShiftParams | None = None, view: str = "score") -> Any:
    """Return a NAB ``run_fn``: a fresh detector per file, score-then-learn per row.

    ``view="score"`` reports ``score_one`` (the scorer's output); ``view="window"`` reports
    the statistic the alert engine triggers on, ``p_to_score(judge(x).p_point)`` (this
    window's calibrated deviation: no smoothing, no range test, no refractory period).
    """

    def run(timestamps: Sequence[str], values: np.ndarray) -> list[float]:
        det = LevelShift(params)
        out = []
        for ts, v in zip(timestamps, values, strict=True):
            t, x = _epoch(ts), float(v)
            if view == "window":
                out.append(p_to_score(det.judge(x, t).p_point))
            else:
                out.append(det.score_one(x, t))
            det.learn_one(x, t)
        return out

    return run


def run_level_shift(timestamps: Sequence[str], values: np.ndarray) -> list[float]:
    """NAB ``run_fn`` of the product defaults (``LevelShift()``)."""
    return make_run_fn()(timestamps, values)  # type: ignore[no-any-return]


def _scores(
    corpus: list[Any], params: LevelShiftParams | None = None, view: str = "score"
) -> list[np.ndarray]:
    run = make_run_fn(params, view)
    return [np.asarray(run(list(cf.timestamps), cf.values.copy())) for cf in corpus]


def _by_category(corpus: list[Any], scores: list[np.ndarray]) -> dict[str, float]:
    out = {}
    for cat in sorted({cf.relpath.split("/")[0] for cf in corpus}):
        idx = [i for i, cf in enumerate(corpus) if cf.relpath.startswith(cat + "/")]
        sub = [corpus[i] for i in idx]
        if not any(cf.windows for cf in sub):
            continue
        res = nab_score.score_scores(sub, [scores[i] for i in idx], mode="sweep")
        out[cat] = res["standard"]["score"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--per-file", action="store_true", help="print the per-file breakdown")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    ap.add_argument(
        "--write-doc", action="store_true", help="also run the sensitivity table; write the doc"
    )
    args = ap.parse_args(argv)

    corpus = nab_score.load_corpus()
    t0 = time.perf_counter()
    scores = _scores(corpus)
    runtime = time.perf_counter() - t0
    swept = nab_score.score_scores(corpus, scores, mode="sweep")
    fixed_thr = dict.fromkeys(nab_score.DEFAULT_PROFILES, DEFAULT_LEVEL_SHIFT_THRESHOLD)
    fixed = nab_score.score_scores(corpus, scores, mode="fixed", fixed_thresholds=fixed_thr)
    rows = int(sum(cf.n for cf in corpus))
    result: dict[str, Any] = {
        "sweep": swept, "fixed": fixed, "runtime_s": runtime, "rows": rows,
        "files": len(corpus), "by_category": _by_category(corpus, scores),
    }  # fmt: skip
    for mode, res in (("sweep", swept), ("fixed", fixed)):
        for prof in nab_score.PROFILE_ORDER:
            r = res[prof]
            print(f"{mode:5s} {prof:20s} score={r['score']:7.2f} threshold={r['threshold']:.5f}")
    print(f"runtime {runtime:.1f}s for {rows} rows in {len(corpus)} files")
    if args.per_file:
        cost = nab_score.DEFAULT_PROFILES["standard"]
        for row in nab_score.per_file_scores(corpus, scores, cost, swept["standard"]["threshold"]):
            print(f"  {row['file']:60s} {row['score']:8.3f} fp={row['fp']}")
    if args.write_doc:
        result["variants"] = {}
        for name, change in VARIANTS.items():
            res = nab_score.score_scores(
                corpus, _scores(corpus, replace(LevelShiftParams(), **change))
            )
            result["variants"][name] = {p: res[p]["score"] for p in nab_score.PROFILE_ORDER}
            print(f"variant {name:40s} standard={res['standard']['score']:.2f}")
        window_scores = _scores(corpus, view="window")
        res = nab_score.score_scores(corpus, window_scores)
        result["window_view"] = {p: res[p]["score"] for p in nab_score.PROFILE_ORDER}
        fixed_w = nab_score.score_scores(
            corpus, window_scores, mode="fixed", fixed_thresholds=fixed_thr
        )
        result["window_view_fixed"] = {p: fixed_w[p]["score"] for p in nab_score.PROFILE_ORDER}
        print(f"window view (engine trigger) standard={res['standard']['score']:.2f}")
        write_doc(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return result


def write_doc(result: dict[str, Any]) -> None:
    """Write ``docs/nab-results.md`` from a full run."""
    swept, fixed = result["sweep"], result["fixed"]
    profs = nab_score.PROFILE_ORDER
    lines = [
        "# NAB results: default level-shift detector",
        "",
        "Generated by `bench/nab_eval.py`; do not edit by hand. Reproduce with:",
        "",
        "```",
        COMMAND,
        "```",
        "",
        "Detector: `spanpulse.detectors.level_shift.LevelShift()` with its defaults — the same "
        "class and parameters the alert engine uses for level shifts and spikes. Corpus: "
        f"{result['files']} files, {result['rows']} rows; scorer "
        "`/work/shared/tools/nab_score.py` (threshold swept once per profile over the whole "
        f"corpus, NAB >= 1.1 rules). Detector runtime {result['runtime_s']:.0f} s.",
        "",
        "| profile | NAB score | threshold (score) | at the product's fixed threshold "
        f"{DEFAULT_LEVEL_SHIFT_THRESHOLD} |",
        "|---|---|---|---|",
    ]
    for prof in profs:
        lines.append(
            f"| {prof} | **{swept[prof]['score']:.1f}** | {swept[prof]['threshold']:.4f} | "
            f"{fixed[prof]['score']:.1f} |"
        )
    lines += [
        "",
        "The product alerts at a much stricter threshold than NAB's optimum (about p = 1e-3 per "
        "point): a deployment evaluates millions of series-windows a day, and the alert policy "
        "adds a materiality test and a second confirming window. The last column shows what "
        "that strictness costs on NAB's single-series files.",
        "",
        "## Published references (same scorer; standard / low FP / low FN)",
        "",
        "| detector | standard | low FP | low FN |",
        "|---|---|---|---|",
    ]
    for name, vals in PUBLISHED.items():
        cells = " | ".join(f"{v:.1f}" if v is not None else "-" for v in vals)
        lines.append(f"| {name} | {cells} |")
    lines += ["", "## Standard score per category (each category swept on its own)", ""]
    lines += ["| category | standard |", "|---|---|"]
    lines += [f"| {cat} | {s:.1f} |" for cat, s in result["by_category"].items()]
    lines += [
        "",
        "## Sensitivity and ablations (one change at a time, everything else default)",
        "",
        "| variant | standard | low FP | low FN |",
        "|---|---|---|---|",
        "| **defaults** | " + " | ".join(f"{swept[p]['score']:.1f}" for p in profs) + " |",
    ]
    for name, vals in result["variants"].items():
        lines.append(f"| {name} | " + " | ".join(f"{vals[p]:.1f}" for p in profs) + " |")
    view, view_fixed = result["window_view"], result["window_view_fixed"]
    lines += [
        "",
        "The alert engine triggers on this window's own calibrated evidence, `judge(x).p_point` "
        "(no smoothed surprise, no range test, no refractory period — the alert policy's "
        "confirming window, materiality test and cooldown take those roles). The same class "
        "with the same defaults, read that way, scores "
        + " / ".join(f"{view[p]:.1f}" for p in profs)
        + " (standard / low FP / low FN) with the threshold sweep, and "
        + " / ".join(f"{view_fixed[p]:.1f}" for p in profs)
        + f" at the fixed product threshold {DEFAULT_LEVEL_SHIFT_THRESHOLD}.",
    ]
    lines += [
        "",
        "How the defaults were chosen: NAB was the development benchmark for this one detector. "
        "The design (robust baseline, self-calibrated tail, smoothed surprise, refractory "
        "period, time-of-day profile, range test) and a handful of round-number defaults were "
        "picked by looking at corpus-wide scores only — never per file or per category — and "
        "the table above shows the neighbourhood of the defaults. The detector sees only "
        "(timestamp, value) pairs, streaming; it never sees a file's length, minimum or maximum "
        "(several published NAB detectors normalise by the file's full range).",
    ]
    (REPO / "docs" / "nab-results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
