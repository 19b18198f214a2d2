"""Assemble the production job from :class:`~spanpulse.config.Settings`.

``build_job`` is what ``spanpulse run`` uses; ``get_flow`` is the entry point for running the
same dataflow under ``python -m bytewax.run`` (multi-worker / multi-process scale-out)::

    python -m bytewax.run "spanpulse.flows.job:get_flow('spanpulse.toml')" -w 1 \
        -r /var/lib/spanpulse/recovery -s 30 -b 0
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import polars as pl
from bytewax.dataflow import Dataflow, Stream
from prometheus_client import CollectorRegistry

from spanpulse.config import Settings, detector_config, load
from spanpulse.detectors.engine import SeriesDetector
from spanpulse.detectors.grain_detectors import GrainDetectors
from spanpulse.flows.detect import attach_detectors
from spanpulse.flows.rollup import FlowParams, FlowSinks, build_flow
from spanpulse.schemas.aggregate import Aggregator
from spanpulse.schemas.batch import BatchDecoder, BatchProcessor
from spanpulse.schemas.conventions import AttributeKeys
from spanpulse.schemas.decode import Decoder, Encoding
from spanpulse.schemas.pricing import Pricing, TokenPrice
from spanpulse.schemas.privacy import TenantHasher
from spanpulse.sinks.alerts import AlertSink
from spanpulse.sinks.kafka_source import BrokerHealth, SpanSource
from spanpulse.sinks.metrics import Metrics
from spanpulse.sinks.observer import MetricsObserver
from spanpulse.sinks.outputs import DeadLetterSink, RollupSink
from spanpulse.sinks.parquet import RollupWriter

log = logging.getLogger("spanpulse")


@dataclass
class Job:
    """A built dataflow plus the objects a runner needs to report on it."""

    flow: Dataflow
    observer: MetricsObserver
    registry: CollectorRegistry
    source: SpanSource


def make_processor(settings: Settings) -> BatchProcessor:
    """Build decoders (one per encoding in use) and the aggregator from settings."""
    a = settings.attributes
    keys = AttributeKeys(
        tenant=a.tenant, feature=a.feature, prompt_version=a.prompt_version,
        parse_ok=a.parse_ok, refusal=a.refusal,
    )  # fmt: skip
    overrides = {
        model: TokenPrice(p.input, p.output, p.cached_input, p.cache_write)
        for model, p in settings.pricing.items()
    }
    pricing = Pricing(overrides=overrides, context_windows=settings.context_windows)
    thr = settings.rollups.context_fill_threshold
    decoders: dict[str, BatchDecoder] = {
        enc: Decoder(cast(Encoding, enc), keys, pricing, fill_threshold=thr)
        for enc in {i.encoding for i in settings.inputs}
    }
    agg = Aggregator(
        grains=tuple(g.dims for g in settings.rollups.grains),
        window_ms=settings.window.length_ms,
        fill_threshold=thr,
        exemplars=settings.rollups.exemplars,
    )
    hasher = TenantHasher(settings.tenant_salt.encode()) if settings.hash_tenant_ids else None
    return BatchProcessor(decoders, agg, tenant_hasher=hasher)


def build_job(
    settings: Settings, *, bounded: bool = False, registry: CollectorRegistry | None = None
) -> Job:
    """Build the full job; raises ``SourceError`` early when Kafka or a topic is unusable."""
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    observer = MetricsObserver(metrics)
    client = settings.kafka.client_config()
    source = SpanSource(
        client_config=client,
        topics={i.topic: i.encoding for i in settings.inputs},
        batch_size=settings.kafka.batch_size,
        start_from=settings.kafka.start_from,
        bounded=bounded,
        health=BrokerHealth(on_change=_broker_state_reporter(metrics)),
    )
    params = FlowParams(
        processor=make_processor(settings),
        partitions=source.partition_ids(),
        window_ms=settings.window.length_ms,
        lateness_ms=settings.window.allowed_lateness_ms,
        idle_timeout_ms=settings.window.idle_timeout_ms,
        grains=tuple(g.dims for g in settings.rollups.grains),
        cardinality_limits=dict(settings.cardinality.limits),
        series_limit=settings.cardinality.series_limit,
        exemplars=settings.rollups.exemplars,
        dedup_horizon_ms=settings.dedup.horizon_ms,
        dedup_max_ids=settings.dedup.max_ids,
    )
    sinks = FlowSinks(
        rollups=(rollups := RollupSink(RollupWriter(Path(settings.rollups.output_dir)))),
        # Late rows effectively once across crashes: lost epochs are taken back on resume.
        late_rollups=rollups.late_sink(params.partitions, rewind=settings.recovery.dir is not None),
        dead_letters=DeadLetterSink(
            client, settings.kafka.dead_letter_topic, settings.dead_letter_payloads
        ),
        observer=observer,
        windows=_detection(settings, client, metrics)
        if settings.detectors.get("enabled", True)
        else None,
    )
    return Job(build_flow(params, source, sinks), observer, registry, source)


def _detection(
    settings: Settings, client: Mapping[str, str], metrics: Metrics
) -> Callable[[Dataflow, Stream[pl.DataFrame]], None]:
    """Detectors on every configured grain, alerts to the alert topic, firing counts to metrics."""
    config = detector_config(settings.detectors)
    dims = {g.name: g.dims for g in settings.rollups.grains}
    firing: dict[str, Counter[tuple[str, str]]] = {}

    def make_bank(grain: str) -> GrainDetectors:
        return GrainDetectors.build(
            dims[grain], config, factory=functools.partial(SeriesDetector, config)
        )

    def on_firing(bank: GrainDetectors) -> None:
        firing[".".join(bank.series.grain_dims)] = Counter(bank.firing)
        total: Counter[tuple[str, str]] = Counter()
        for c in firing.values():
            total.update(c)
        for (detector, severity), n in total.items():
            metrics.set_alerts_firing(detector, severity, n)

    def on_result(status: str, delivered: bool) -> None:
        if delivered:
            metrics.count_alerts_published(status, 1)

    sink = AlertSink(client, settings.kafka.alert_topic, on_result=on_result)

    def attach(flow: Dataflow, windows: Stream[pl.DataFrame]) -> None:
        attach_detectors(
            flow, windows, grains=[g.dims for g in settings.rollups.grains],
            make_bank=make_bank, alerts=sink, on_firing=on_firing,
            on_inhibited=metrics.count_alerts_inhibited,
            persist=settings.recovery.dir is not None,
        )  # fmt: skip

    return attach


def _broker_state_reporter(metrics: Metrics) -> Callable[[bool], None]:
    """Export broker reachability and log each change once (not every retry)."""
    seen_down = [False]

    def report(up: bool) -> None:
        if up and seen_down[0]:
            log.warning("kafka: broker reachable again; resuming")
        elif not up:
            seen_down[0] = True
            log.error(
                "kafka: broker unreachable; retrying with backoff (no data is lost, windows wait)"
            )
        metrics.set_broker_up(up)

    return report


def get_flow(config_path: str, until_caught_up: bool = False) -> Dataflow:
    """Entry point for ``python -m bytewax.run "spanpulse.flows.job:get_flow('spanpulse.toml')"``.

    With ``until_caught_up=True`` every process stops at the end offsets it saw at start.
    Sets the job's collector thresholds (:mod:`spanpulse.flows.gc_tuning`) in this process.
    When the config names ``[recovery] dir`` (give it the ``-r`` directory), drops the snapshots
    a killed run left past its recorded progress first (:mod:`spanpulse.sinks.recovery_store`).
    """
    from spanpulse.flows.gc_tuning import tune_gc
    from spanpulse.sinks.recovery_store import prune_uncommitted

    tune_gc()
    settings = load(Path(config_path))
    if settings.recovery.dir is not None and settings.recovery.dir.is_dir():
        prune_uncommitted(settings.recovery.dir)
    return build_job(settings, bounded=until_caught_up).flow
