"""A seeded, vectorized model of production LLM traffic (the calls behind ``spanpulse generate``).

Why a model instead of a replayed capture: the detectors, the benchmarks and the evaluation need
traffic whose *normal* shape is realistic (Zipf tenants, a diurnal cycle, heavy-tailed tokens, a
few rare outcomes) and whose *abnormal* parts are known exactly.  This module produces the normal
part; :mod:`spanpulse.schemas.scenario` injects labelled incidents on top of it.

Reproducibility contract: the calls whose start time falls in a given UTC minute are a pure
function of ``(seed, model parameters, minute)``.  Each minute draws from its own generator
(``SeedSequence([seed, stream, minute])``), so ``calls(a, d1)`` followed by ``calls(a + d1, d2)``
yields exactly the calls of ``calls(a, d1 + d2)``, whatever the chunking.  No global RNG, no wall
clock: the caller passes the start time.

The frame uses the normalized *dimension* vocabulary of :mod:`spanpulse.schemas.record`
(``provider`` is the OTel ``gen_ai.provider.name`` value) but keeps ``finish_reason`` in the raw
provider vocabulary (OpenAI ``stop``/``tool_calls``, Anthropic ``end_turn``/``max_tokens``,
Gemini ``STOP``/``MAX_TOKENS``), because mapping it is the decoders' job.  Failed calls carry no
usage (all token counts 0), no finish reason, no TTFT and no parse outcome, as real error spans do.

>>> model = TrafficModel(seed=7, tenants=50, rate_per_s=5.0)
>>> df = model.calls(start_ms=1_741_078_800_000, duration_s=120)
>>> df.height > 0 and df.columns[:3] == ["end_time_ms", "start_time_ms", "trace_id"]
True
>>> df.equals(TrafficModel(seed=7, tenants=50, rate_per_s=5.0).calls(1_741_078_800_000, 120))
True
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl

MS_PER_MINUTE: Final = 60_000

#: Outcome codes drawn per call before they are spelled in a provider's vocabulary.
OUTCOMES: Final = ("stop", "tool", "length", "filter", "refusal", "stop_alt")
_STOP, _TOOL, _LENGTH, _FILTER, _REFUSAL, _STOP_ALT = range(len(OUTCOMES))

#: Raw finish reason per provider and outcome (Gemini ends function calls with ``STOP``).
FINISH_VOCAB: Final[Mapping[str, tuple[str, ...]]] = {
    "openai": ("stop", "tool_calls", "length", "content_filter", "stop", "stop"),
    "anthropic": ("end_turn", "tool_use", "max_tokens", "refusal", "refusal", "stop_sequence"),
    "gcp.gemini": ("STOP", "STOP", "MAX_TOKENS", "SAFETY", "STOP", "STOP"),
}

#: Raw finish reasons that mean "hit the output limit", per provider.
LENGTH_FINISH: Final = {p: v[_LENGTH] for p, v in FINISH_VOCAB.items()}
#: Raw finish reason a refused call ends with, per provider (OpenAI/Gemini refuse with a stop).
REFUSAL_FINISH: Final = {p: v[_REFUSAL] for p, v in FINISH_VOCAB.items()}

#: Calls are columns of this frame, in this order.
CALL_SCHEMA: Final[dict[str, pl.DataType]] = {
    "end_time_ms": pl.Int64(),
    "start_time_ms": pl.Int64(),
    "trace_id": pl.String(),
    "span_id": pl.String(),
    "tenant": pl.String(),
    "service": pl.String(),
    "environment": pl.String(),
    "feature": pl.String(),
    "provider": pl.String(),
    "model": pl.String(),
    "response_model": pl.String(),
    "operation": pl.String(),
    "prompt_version": pl.String(),
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "cached_input_tokens": pl.Int64(),
    "reasoning_tokens": pl.Int64(),
    "finish_reason": pl.String(),
    "is_error": pl.Boolean(),
    "ttft_ms": pl.Int64(),
    "parse_ok": pl.Boolean(),
    "refusal": pl.Boolean(),
}


@dataclass(frozen=True)
class ModelSpec:
    """One requestable model and the constants that shape its calls.

    ``next_snapshot`` is a made-up later snapshot used to simulate a provider model update.
    """

    name: str
    provider: str
    response_model: str
    next_snapshot: str
    context_window: int
    tokens_per_s: float
    output_scale: float
    thinking_share: float  # share of calls that emit reasoning tokens


@dataclass(frozen=True)
class FeatureSpec:
    """One application feature: its service, current prompt and token/outcome shape."""

    name: str
    service: str
    prompt_version: str
    share: float
    input_median: float
    input_sigma: float
    output_median: float
    output_sigma: float
    max_tokens: int
    tool_share: float
    stream_share: float
    cache_share: float
    parses: bool
    models: Mapping[str, float]


MODELS: Final = (
    ModelSpec("gpt-4o", "openai", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20",
              128_000, 85.0, 1.0, 0.0),
    ModelSpec("gpt-4o-mini", "openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini-2025-02-11",
              128_000, 110.0, 0.9, 0.0),
    ModelSpec("o3-mini", "openai", "o3-mini-2025-01-31", "o3-mini-2025-06-10",
              200_000, 150.0, 4.0, 1.0),
    ModelSpec("claude-sonnet-4", "anthropic", "claude-sonnet-4-20250514",
              "claude-sonnet-4-20251022", 200_000, 65.0, 1.2, 0.25),
    ModelSpec("claude-3-5-haiku", "anthropic", "claude-3-5-haiku-20241022",
              "claude-3-5-haiku-20250610", 200_000, 120.0, 0.8, 0.0),
    ModelSpec("gemini-2.0-flash", "gcp.gemini", "gemini-2.0-flash-001", "gemini-2.0-flash-002",
              1_048_576, 180.0, 1.0, 0.0),
)  # fmt: skip

FEATURES: Final = (
    FeatureSpec("chat", "chat-api", "chat-v12", 0.40, 1500, 0.9, 280, 0.8, 1024, 0.05, 0.85,
                0.5, False, {"gpt-4o": .3, "gpt-4o-mini": .3, "claude-sonnet-4": .15,
                             "claude-3-5-haiku": .1, "gemini-2.0-flash": .15}),
    FeatureSpec("summarize", "docs-api", "summarize-v7", 0.15, 6000, 1.0, 350, 0.6, 1024, 0.0,
                0.2, 0.2, False, {"gpt-4o-mini": .4, "claude-3-5-haiku": .3,
                                  "gemini-2.0-flash": .3}),
    FeatureSpec("extract", "docs-api", "extract-v3", 0.15, 3000, 0.8, 450, 0.7, 2048, 0.0, 0.0,
                0.6, True, {"gpt-4o": .35, "gpt-4o-mini": .35, "claude-sonnet-4": .2,
                            "gemini-2.0-flash": .1}),
    FeatureSpec("agent", "agent-runner", "agent-v21", 0.15, 9000, 0.9, 180, 1.0, 4096, 0.55,
                0.1, 0.8, False, {"gpt-4o": .25, "o3-mini": .2, "claude-sonnet-4": .45,
                                  "gpt-4o-mini": .1}),
    FeatureSpec("search", "search-api", "search-v5", 0.15, 2500, 0.7, 220, 0.7, 512, 0.1, 0.5,
                0.3, False, {"gpt-4o-mini": .5, "gemini-2.0-flash": .3,
                             "claude-3-5-haiku": .2}),
)  # fmt: skip

MODEL_BY_NAME: Final = {m.name: m for m in MODELS}
FEATURE_BY_NAME: Final = {f.name: f for f in FEATURES}
PROVIDERS: Final = tuple(dict.fromkeys(m.provider for m in MODELS))
ENVIRONMENTS: Final = ("prod", "staging")
#: Seconds of fixed per-request overhead before the first token, per provider (median).
PROVIDER_OVERHEAD_S: Final = {"openai": 0.30, "anthropic": 0.45, "gcp.gemini": 0.25}
#: Prefill time per input token (about 50k tokens/s).
PREFILL_S_PER_TOKEN: Final = 2e-5


def tenant_name(index: int) -> str:
    """Name of the tenant at Zipf rank ``index`` (``t-0000`` is the largest)."""
    return f"t-{index:04d}"


def context_window_expr(model: pl.Expr | None = None) -> pl.Expr:
    """Context window (tokens) of the request model, null for models outside :data:`MODELS`."""
    windows = {m.name: m.context_window for m in MODELS}
    expr = pl.col("model") if model is None else model
    return expr.replace_strict(windows, default=None, return_dtype=pl.Int64)


def context_fill_expr() -> pl.Expr:
    """Share of the context window filled by the input (``input_tokens / context_window``)."""
    return (pl.col("input_tokens") / context_window_expr()).alias("context_fill")


def diurnal_factor(
    t_ms: npt.NDArray[np.float64], amplitude: float, peak_hour_utc: float
) -> npt.NDArray[np.float64]:
    """Load multiplier at epoch-ms ``t_ms``: a 24 h sinusoid, mean 1, peak at ``peak_hour_utc``."""
    hours = (t_ms / 3_600_000.0) % 24.0
    return 1.0 + amplitude * np.cos(2.0 * math.pi * (hours - peak_hour_utc) / 24.0)


def _categorical_cdf(weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    cdf = np.cumsum(weights, axis=-1)
    cdf /= cdf[..., -1:]
    return cdf


def _hex_ids(rng: np.random.Generator, n: int, n_bytes: int) -> pl.Series:
    """``n`` random lowercase hex ids of ``n_bytes`` bytes, built without a Python loop."""
    raw = rng.bytes(n * n_bytes).hex().encode("ascii")
    return pl.Series(np.frombuffer(raw, dtype=f"S{2 * n_bytes}")).cast(pl.String)


#: Feature and model constants as arrays indexed like FEATURES / MODELS, for vectorized draws.
_FEATURE_ARRAYS: Final = {
    key: np.array([float(getattr(f, key)) for f in FEATURES])
    for key in (
        "input_median",
        "input_sigma",
        "output_median",
        "output_sigma",
        "max_tokens",
        "tool_share",
        "stream_share",
        "cache_share",
        "parses",
    )
}
_MODEL_ARRAYS: Final = {
    "window": np.array([float(m.context_window) for m in MODELS]),
    "output_scale": np.array([m.output_scale for m in MODELS]),
    "thinking_share": np.array([m.thinking_share for m in MODELS]),
    "tokens_per_s": np.array([m.tokens_per_s for m in MODELS]),
    "overhead": np.array([PROVIDER_OVERHEAD_S[m.provider] for m in MODELS]),
}


class TrafficModel:
    """Seeded generator of normal LLM-call traffic.

    Args:
        seed: root seed; every draw derives from it.
        tenants: number of tenants, Zipf-distributed by rank (``t-0000`` largest).
        rate_per_s: mean calls per second over a whole day (the diurnal cycle averages to 1).
        zipf_s: Zipf exponent of tenant traffic (1.1: the top tenant has ~18 % of the calls).
        diurnal_amplitude: relative amplitude of the 24 h load cycle.
        peak_hour_utc: hour of the daily load peak.
        error_rate: share of failed calls.
        length_rate: share of calls that stop at ``max_tokens``.
        refusal_rate: share of refused calls.
        content_filter_rate: share of calls blocked by a provider filter.
        parse_failure_rate: share of structured-output parses that fail on ``extract``.
        staging_share: share of calls from the staging environment.
        pin_share: share of a (tenant, feature)'s calls that use its pinned model.
        block_cache: minutes of generated traffic kept to serve sub-minute chunks cheaply.
    """

    def __init__(
        self,
        seed: int,
        tenants: int = 500,
        rate_per_s: float = 50.0,
        *,
        zipf_s: float = 1.1,
        diurnal_amplitude: float = 0.4,
        peak_hour_utc: float = 15.0,
        error_rate: float = 0.005,
        length_rate: float = 0.01,
        refusal_rate: float = 0.002,
        content_filter_rate: float = 0.0005,
        parse_failure_rate: float = 0.01,
        staging_share: float = 0.08,
        pin_share: float = 0.85,
        block_cache: int = 4,
    ) -> None:
        _check_args(seed, tenants, rate_per_s, diurnal_amplitude)
        self.seed = seed
        self.tenants = tenants
        self.rate_per_s = rate_per_s
        self.diurnal_amplitude = diurnal_amplitude
        self.peak_hour_utc = peak_hour_utc
        self.error_rate = error_rate
        self.length_rate = length_rate
        self.refusal_rate = refusal_rate
        self.content_filter_rate = content_filter_rate
        self.parse_failure_rate = parse_failure_rate
        self.staging_share = staging_share
        self.pin_share = pin_share
        self._block_cache_size = block_cache
        self._blocks: OrderedDict[int, pl.DataFrame] = OrderedDict()
        self.tenant_names = tuple(tenant_name(i) for i in range(tenants))
        self._tenant_index = {name: i for i, name in enumerate(self.tenant_names)}
        weights = 1.0 / np.arange(1, tenants + 1, dtype=np.float64) ** zipf_s
        self.tenant_weights: npt.NDArray[np.float64] = weights / weights.sum()
        self._init_tenant_tables(np.random.default_rng(np.random.SeedSequence([seed, 0])))

    # ------------------------------------------------------------------ setup
    def _init_tenant_tables(self, rng: np.random.Generator) -> None:
        """Draw each tenant's feature mix, pinned models and prompt-size scale once."""
        shares = np.array([f.share for f in FEATURES])
        self._tenant_cdf = _categorical_cdf(rng.dirichlet(shares * 4.0, size=self.tenants))
        self._feature_model_cdf = np.stack(
            [
                _categorical_cdf(np.array([f.models.get(m.name, 0.0) for m in MODELS]))
                for f in FEATURES
            ]
        )
        u = rng.random((self.tenants, len(FEATURES)))
        self._pinned = np.stack(
            [
                np.searchsorted(self._feature_model_cdf[j], u[:, j], side="right")
                for j in range(len(FEATURES))
            ],
            axis=1,
        )
        self._tenant_scale = rng.lognormal(0.0, 0.25, size=self.tenants)
        self._tenant_cdf_all = _categorical_cdf(self.tenant_weights)

    # ------------------------------------------------------------------ public API
    def expected_rate(self, t_ms: float, tenant: str | None = None) -> float:
        """Return the expected calls per second at ``t_ms`` (for one tenant when given)."""
        factor = float(
            diurnal_factor(np.array([t_ms]), self.diurnal_amplitude, self.peak_hour_utc)[0]
        )
        share = 1.0 if tenant is None else float(self.tenant_weights[self.tenant_index(tenant)])
        return self.rate_per_s * factor * share

    def tenant_index(self, tenant: str) -> int:
        """Zipf rank of ``tenant``; raises ``KeyError`` for a tenant this model does not have."""
        return self._tenant_index[tenant]

    def calls(self, start_ms: int, duration_s: float) -> pl.DataFrame:
        """All calls starting in ``[start_ms, start_ms + duration_s)``, sorted by end time."""
        end_ms = start_ms + round(duration_s * 1000)
        frames = [
            self._base_block(minute)
            for minute in range(start_ms // MS_PER_MINUTE, -(-end_ms // MS_PER_MINUTE))
        ]
        return _window(frames, start_ms, end_ms)

    def iter_calls(
        self, start_ms: int, duration_s: float, chunk_s: float = 60.0
    ) -> Iterator[pl.DataFrame]:
        """Yield :meth:`calls` chunk by chunk so an hour or a day never sits in memory at once."""
        if chunk_s <= 0:
            msg = f"chunk_s must be > 0, got {chunk_s}"
            raise ValueError(msg)
        end_ms = start_ms + round(duration_s * 1000)
        step = round(chunk_s * 1000)
        for lo in range(start_ms, end_ms, step):
            yield self.calls(lo, (min(lo + step, end_ms) - lo) / 1000.0)

    def tenant_calls(
        self, tenant: str, start_ms: int, duration_s: float, multiplier: float, stream: int
    ) -> pl.DataFrame:
        """Extra calls of one tenant at ``multiplier`` x its expected rate (an independent stream).

        ``stream`` (>= 1) salts the generator so that several extra streams never coincide with
        each other or with the base traffic.
        """
        if stream < 1:
            msg = f"stream must be >= 1 (0 is the base traffic), got {stream}"
            raise ValueError(msg)
        index = self.tenant_index(tenant)
        end_ms = start_ms + round(duration_s * 1000)
        frames = [
            self._block(minute, stream, index, multiplier)
            for minute in range(start_ms // MS_PER_MINUTE, -(-end_ms // MS_PER_MINUTE))
        ]
        return _window(frames, start_ms, end_ms)

    # ------------------------------------------------------------------ generation
    def _base_block(self, minute: int) -> pl.DataFrame:
        block = self._blocks.get(minute)
        if block is None:
            block = self._block(minute, 0, None, 1.0)
            self._blocks[minute] = block
            while len(self._blocks) > self._block_cache_size:
                self._blocks.popitem(last=False)
        return block

    def _block(self, minute: int, stream: int, tenant: int | None, mult: float) -> pl.DataFrame:
        """Generate every call of one stream that starts in one UTC minute."""
        if minute < 0:
            msg = "traffic before 1970 is not supported (negative minute)"
            raise ValueError(msg)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, stream, minute]))
        mid = np.array([(minute + 0.5) * MS_PER_MINUTE])
        share = 1.0 if tenant is None else float(self.tenant_weights[tenant])
        lam = self.rate_per_s * 60.0 * mult * share
        lam *= float(diurnal_factor(mid, self.diurnal_amplitude, self.peak_hour_utc)[0])
        n = int(rng.poisson(lam))
        start = minute * MS_PER_MINUTE + np.floor(rng.random(n) * MS_PER_MINUTE).astype(np.int64)
        if tenant is None:
            tenants = np.searchsorted(self._tenant_cdf_all, rng.random(n), side="right")
        else:
            tenants = np.full(n, tenant, dtype=np.int64)
        return self._calls_frame(rng, start, tenants)

    def _calls_frame(
        self, rng: np.random.Generator, start: npt.NDArray[np.int64], tenants: npt.NDArray[np.int64]
    ) -> pl.DataFrame:
        n = int(start.shape[0])
        feature = (rng.random(n)[:, None] > self._tenant_cdf[tenants]).sum(axis=1).astype(np.int64)
        model = self._draw_model(rng, tenants, feature)
        staging = rng.random(n) < self.staging_share
        outcome = self._draw_outcome(rng, feature, model)
        tokens = self._draw_tokens(rng, tenants, feature, model, outcome)
        is_error = rng.random(n) < self.error_rate
        for arr in tokens.values():
            arr[is_error] = 0
        latency_s, ttft_s, stream = self._draw_timing(rng, feature, model, tokens, is_error)
        parse_ok = self._draw_parse(rng, feature, outcome)
        cols = _Columns(n, feature, model, outcome)
        frame = pl.DataFrame(
            {
                "end_time_ms": start + np.round(latency_s * 1000.0).astype(np.int64),
                "start_time_ms": start,
                "trace_id": _hex_ids(rng, n, 16),
                "span_id": _hex_ids(rng, n, 8),
                "tenant": pl.Series(self.tenant_names).gather(tenants),
                "environment": pl.Series(ENVIRONMENTS).gather(staging.astype(np.int64)),
                **cols.dimensions(),
                **{k: v.astype(np.int64) for k, v in tokens.items()},
                "finish_reason": cols.finish_reason(),
                "is_error": is_error,
                "ttft_ms": np.round(ttft_s * 1000.0).astype(np.int64),
                "parse_ok": parse_ok == 1,
                "refusal": (outcome == _REFUSAL) | ((outcome == _FILTER) & cols.is_anthropic),
            }
        )
        return frame.with_columns(
            pl.when(pl.Series(stream & ~is_error)).then(pl.col("ttft_ms")).alias("ttft_ms"),
            pl.when(pl.Series((parse_ok >= 0) & ~is_error)).then(pl.col("parse_ok")),
            pl.when(pl.Series(~is_error)).then(pl.col("finish_reason")),
            pl.col("refusal") & pl.Series(~is_error),
        ).select(list(CALL_SCHEMA))

    def _draw_model(
        self,
        rng: np.random.Generator,
        tenants: npt.NDArray[np.int64],
        feature: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.int64]:
        pinned = self._pinned[tenants, feature]
        free = (rng.random(len(tenants))[:, None] > self._feature_model_cdf[feature]).sum(axis=1)
        return np.where(rng.random(len(tenants)) < self.pin_share, pinned, free).astype(np.int64)

    def _draw_outcome(
        self, rng: np.random.Generator, feature: npt.NDArray[np.int64], model: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        n = int(feature.shape[0])
        tool = np.array([f.tool_share for f in FEATURES])[feature]
        u = rng.random(n)
        edges = np.cumsum([self.length_rate, self.content_filter_rate, self.refusal_rate])
        outcome = np.full(n, _STOP, dtype=np.int64)
        outcome[u < edges[2] + tool] = _TOOL
        outcome[u < edges[2]] = _REFUSAL
        outcome[u < edges[1]] = _FILTER
        outcome[u < edges[0]] = _LENGTH
        is_anthropic = np.array([m.provider == "anthropic" for m in MODELS])[model]
        outcome[(outcome == _STOP) & is_anthropic & (rng.random(n) < 0.05)] = _STOP_ALT
        return outcome

    def _draw_tokens(
        self,
        rng: np.random.Generator,
        tenants: npt.NDArray[np.int64],
        feature: npt.NDArray[np.int64],
        model: npt.NDArray[np.int64],
        outcome: npt.NDArray[np.int64],
    ) -> dict[str, npt.NDArray[np.int64]]:
        """Heavy-tailed lognormal usage; cache and reasoning are subsets of input and output."""
        n = int(feature.shape[0])
        fa = _FEATURE_ARRAYS
        ma = _MODEL_ARRAYS
        window = ma["window"][model]
        med_in = fa["input_median"][feature] * self._tenant_scale[tenants]
        inp = np.clip(rng.lognormal(np.log(med_in), fa["input_sigma"][feature]), 16, window * 0.95)
        max_tokens = fa["max_tokens"][feature]
        med_out = fa["output_median"][feature] * ma["output_scale"][model]
        out = np.clip(
            rng.lognormal(np.log(med_out), fa["output_sigma"][feature]), 1, max_tokens - 1
        )
        out = np.where(outcome == _TOOL, np.minimum(out, rng.lognormal(np.log(60), 0.5, n)), out)
        out = np.where(outcome == _REFUSAL, rng.lognormal(np.log(40), 0.4, n), out)
        out = np.where(outcome == _FILTER, np.minimum(out, rng.integers(0, 30, n)), out)
        out = np.where(outcome == _LENGTH, max_tokens, np.floor(out))
        thinks = rng.random(n) < ma["thinking_share"][model]
        reasoning = np.where(thinks, np.floor(out * rng.beta(4.0, 3.0, n)), 0.0)
        cached = (rng.random(n) < fa["cache_share"][feature]) & (inp >= 1024)
        cached_tokens = np.where(cached, np.floor(inp * rng.beta(6.0, 3.0, n)), 0.0)
        return {
            "input_tokens": np.floor(inp).astype(np.int64),
            "output_tokens": out.astype(np.int64),
            "cached_input_tokens": cached_tokens.astype(np.int64),
            "reasoning_tokens": reasoning.astype(np.int64),
        }

    def _draw_timing(
        self,
        rng: np.random.Generator,
        feature: npt.NDArray[np.int64],
        model: npt.NDArray[np.int64],
        tokens: Mapping[str, npt.NDArray[np.int64]],
        is_error: npt.NDArray[np.bool_],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Latency grows with output tokens; TTFT covers overhead, prefill and reasoning."""
        n = int(feature.shape[0])
        ma = _MODEL_ARRAYS
        overhead = rng.lognormal(np.log(ma["overhead"][model]), 0.4)
        prefill = tokens["input_tokens"] * PREFILL_S_PER_TOKEN
        speed = ma["tokens_per_s"][model] * rng.lognormal(0.0, 0.25, n)
        ttft = overhead + prefill + tokens["reasoning_tokens"] / speed
        latency = overhead + prefill + tokens["output_tokens"] / speed
        failed = np.clip(rng.lognormal(np.log(0.8), 1.0, n), 0.05, 60.0)
        latency = np.where(is_error, failed, latency)
        stream = rng.random(n) < _FEATURE_ARRAYS["stream_share"][feature]
        return latency, np.minimum(ttft, latency), stream

    def _draw_parse(
        self,
        rng: np.random.Generator,
        feature: npt.NDArray[np.int64],
        outcome: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.int64]:
        """1 parsed, 0 failed, -1 not attempted; truncated or refused output never parses."""
        parses = _FEATURE_ARRAYS["parses"][feature].astype(bool)
        ok = rng.random(feature.shape[0]) >= self.parse_failure_rate
        bad_outcome = np.isin(outcome, (_LENGTH, _FILTER, _REFUSAL))
        return np.where(parses, np.where(ok & ~bad_outcome, 1, 0), -1).astype(np.int64)


class _Columns:
    """Turns per-call index arrays into the string columns of the frame (gather, no loops)."""

    def __init__(
        self,
        n: int,
        feature: npt.NDArray[np.int64],
        model: npt.NDArray[np.int64],
        outcome: npt.NDArray[np.int64],
    ) -> None:
        self.n = n
        self.feature = feature
        self.model = model
        self.outcome = outcome
        provider_index = {p: i for i, p in enumerate(PROVIDERS)}
        self.provider = np.array([provider_index[m.provider] for m in MODELS])[model]
        self.is_anthropic = self.provider == provider_index["anthropic"]

    def dimensions(self) -> dict[str, pl.Series]:
        return {
            "service": pl.Series([f.service for f in FEATURES]).gather(self.feature),
            "feature": pl.Series([f.name for f in FEATURES]).gather(self.feature),
            "provider": pl.Series(PROVIDERS).gather(self.provider),
            "model": pl.Series([m.name for m in MODELS]).gather(self.model),
            "response_model": pl.Series([m.response_model for m in MODELS]).gather(self.model),
            "operation": pl.Series(["chat"]).gather(np.zeros(self.n, dtype=np.int64)),
            "prompt_version": pl.Series([f.prompt_version for f in FEATURES]).gather(self.feature),
        }

    def finish_reason(self) -> pl.Series:
        flat = [reason for p in PROVIDERS for reason in FINISH_VOCAB[p]]
        return pl.Series(flat).gather(self.provider * len(OUTCOMES) + self.outcome)


def _window(frames: list[pl.DataFrame], start_ms: int, end_ms: int) -> pl.DataFrame:
    """Concatenate minute blocks, keep calls starting in ``[start_ms, end_ms)``, sort by end."""
    if not frames:
        return pl.DataFrame(schema=CALL_SCHEMA)
    df = pl.concat(frames, rechunk=False)
    in_range = (pl.col("start_time_ms") >= start_ms) & (pl.col("start_time_ms") < end_ms)
    return df.filter(in_range).sort("end_time_ms", maintain_order=True)


def _check_args(seed: int, tenants: int, rate_per_s: float, amplitude: float) -> None:
    if seed < 0:
        msg = f"seed must be >= 0, got {seed}"
        raise ValueError(msg)
    if tenants < 1:
        msg = f"tenants must be >= 1, got {tenants}"
        raise ValueError(msg)
    if not rate_per_s > 0:
        msg = f"rate_per_s must be > 0, got {rate_per_s}"
        raise ValueError(msg)
    if not 0 <= amplitude < 1:
        msg = f"diurnal_amplitude must be in [0, 1), got {amplitude}"
        raise ValueError(msg)


def in_end_time_order(chunks: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """Re-cut chunks of calls (generated by start time) so calls come out in end-time order.

    Why: an exporter emits a span when it *ends*.  Chunks cut by start time put a long call
    before the short calls of the next chunk that ended earlier, which a stream job rightly
    sees as out of order (and, past the allowed lateness, as late).  A call of a later chunk
    starts, and so ends, at or after that chunk's first start, so everything that ended before
    the newest chunk's earliest start can be emitted; the rest waits for the next chunk.
    """
    carry: pl.DataFrame | None = None
    for chunk in chunks:
        if chunk.is_empty():
            continue
        frame = chunk if carry is None else pl.concat([carry, chunk], how="vertical_relaxed")
        frame = frame.sort("end_time_ms", maintain_order=True)
        horizon = chunk["start_time_ms"].min()
        ready = frame.filter(pl.col("end_time_ms") < horizon)
        carry = frame.filter(pl.col("end_time_ms") >= horizon)
        if not ready.is_empty():
            yield ready
    if carry is not None and not carry.is_empty():
        yield carry
