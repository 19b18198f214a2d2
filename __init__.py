"""spanpulse: streaming analytics and anomaly detection for LLM telemetry.

The package is laid out as four component subpackages:

* ``spanpulse.schemas``   pure data logic: decoding, normalization, aggregation, histograms.
* ``spanpulse.detectors`` pure online anomaly detectors and the alert lifecycle.
* ``spanpulse.flows``     thin Bytewax wiring (``build_flow(settings, source, sinks)``).
* ``spanpulse.sinks``     I/O: Kafka, Parquet, DuckDB, Prometheus.
"""

__version__ = "0.1.0"
