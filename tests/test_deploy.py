"""Static validation of the deployment stack (there is no Docker engine in CI).

Checks each file against its tool or schema (Compose spec, promtool, amtool) and, above all,
that the files agree with each other: topics, ports, volumes and service names are repeated
across docker-compose.yml, deploy/spanpulse.toml, the collector, Prometheus and Grafana configs,
and a mismatch there only shows up when the stack is started.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from spanpulse.config import load as load_settings
from spanpulse.sinks.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]
COMPOSE_SPEC = Path(__file__).resolve().parents[2] / "shared/data/compose-spec.json"
DEPLOY = REPO / "deploy"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(REPO / "docker-compose.yml")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def job_config() -> dict[str, Any]:
    return tomllib.loads((DEPLOY / "spanpulse.toml").read_text())


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return load_yaml(DEPLOY / "otelcol/config.yaml")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return load_yaml(DEPLOY / "prometheus.yml")  # type: ignore[no-any-return]


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH; install it with `apt-get install -y {package}`")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source for a service's short-syntax volumes."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


def published(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port of a service's short-syntax port mappings."""
    pairs = (str(p).split(":") for p in service.get("ports", []))
    return {int(c): int(h) for h, c in pairs}


def env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


# ---------------------------------------------------------------- docker-compose.yml


def test_compose_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    if not COMPOSE_SPEC.is_file():
        pytest.fail(f"Compose spec JSON schema missing at {COMPOSE_SPEC} (shared/data)")
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SPEC.read_text()))
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    # the validator is a real check: a misspelled service key is rejected
    broken = {**compose, "services": {**compose["services"], "x": {"image": "a", "portz": [1]}}}
    assert any("portz" in e.message for e in validator.iter_errors(broken))


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "otel-collector", "spanpulse", "prometheus", "grafana", "generator"} <= set(
        services
    )
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert not any("zookeeper" in name for name in services)


def test_kafka_runs_single_node_kraft(compose: dict[str, Any]) -> None:
    kafka = env(compose["services"]["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kafka['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER" in kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)


def test_compose_named_volumes_are_declared_and_bind_sources_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            assert PurePosixPath(target).is_absolute(), (name, target)
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"


def test_generator_is_a_one_shot_profile(compose: dict[str, Any]) -> None:
    gen = compose["services"]["generator"]
    assert gen["profiles"] == ["generator"]
    assert gen["restart"] == "no"
    assert gen["image"] == compose["services"]["spanpulse"]["image"]
    cmd = gen["command"]
    assert cmd[0] == "generate"
    assert cmd[cmd.index("--duration") + 1] == "10m"


# ---------------------------------------------------------------- collector config


def test_collector_pipeline_is_wired(collector: dict[str, Any]) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert pipeline["exporters"] == ["kafka"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline.get(kind, [])) <= set(collector[kind]), kind
    used = {
        p for pl in collector["service"]["pipelines"].values() for p in pl.get("processors", [])
    }
    assert used == set(collector["processors"]), "defined but unused processors"
    assert pipeline["processors"][0] == "memory_limiter"
    assert pipeline["processors"][-1] == "batch"
    assert set(collector["service"].get("extensions", [])) <= set(collector.get("extensions", {}))


def test_collector_kafka_exporter_writes_otlp_proto_to_the_compose_broker(
    collector: dict[str, Any], compose: dict[str, Any]
) -> None:
    kafka = collector["exporters"]["kafka"]
    assert kafka["traces"] == {"topic": "otlp_spans", "encoding": "otlp_proto"}
    broker_env = env(compose["services"]["kafka"])
    advertised = broker_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert kafka["brokers"] == ["kafka:9092"]
    assert "PLAINTEXT://kafka:9092" in advertised


def content_patterns(collector: dict[str, Any]) -> list[re.Pattern[str]]:
    statements = collector["processors"]["transform/drop_content"]["trace_statements"]
    found = [
        re.search(r'delete_matching_keys\(attributes, "(.*)"\)', s)
        for block in statements
        for s in block["statements"]
    ]
    assert all(found)
    return [re.compile(m.group(1)) for m in found if m]


@pytest.mark.parametrize(
    ("key", "dropped"),
    [
        ("gen_ai.input.messages", True),
        ("gen_ai.output.messages", True),
        ("gen_ai.system_instructions", True),
        ("gen_ai.prompt", True),
        ("gen_ai.prompt.0.content", True),
        ("gen_ai.completion.0.content", True),
        ("gen_ai.completion.0.tool_calls.1.arguments", True),
        ("gen_ai.tool.call.arguments", True),
        ("llm.input_messages.0.message.content", True),
        ("llm.output_messages.0.message.contents.0.message_content.text", True),
        ("llm.prompt_template.variables", True),
        ("input.value", True),
        ("traceloop.entity.output", True),
        # metadata the decoders need survives
        ("gen_ai.prompt.name", False),
        ("gen_ai.prompt.version", False),
        ("gen_ai.completion.0.finish_reason", False),
        ("gen_ai.response.finish_reasons", False),
        ("gen_ai.usage.input_tokens", False),
        ("gen_ai.request.model", False),
        ("llm.output_messages.0.message.role", False),
        ("llm.prompt_template.version", False),
        ("input.mime_type", False),
    ],
)
def test_collector_drops_prompt_and_completion_content(
    collector: dict[str, Any], key: str, dropped: bool
) -> None:
    span_pattern = content_patterns(collector)[0]
    assert bool(span_pattern.fullmatch(key)) is dropped


# ---------------------------------------------------------------- cross-file consistency


def test_job_config_has_the_documented_shape(job_config: dict[str, Any]) -> None:
    assert set(job_config) == {"kafka", "inputs", "window", "rollups", "recovery", "metrics"}
    assert set(job_config["kafka"]) == {"bootstrap_servers", "dead_letter_topic", "alert_topic"}
    assert job_config["inputs"] == [{"topic": "otlp_spans", "encoding": "otlp_proto"}]
    assert job_config["window"] == {"length": "1m", "allowed_lateness": "30s"}
    assert isinstance(job_config["metrics"]["port"], int)


def test_job_config_loads_with_the_real_loader_and_feeds_the_metrics(
    job_config: dict[str, Any],
) -> None:
    settings = load_settings(DEPLOY / "spanpulse.toml", environ={})
    assert settings.metrics.port == job_config["metrics"]["port"]
    assert str(settings.recovery.dir) == job_config["recovery"]["dir"]
    assert str(settings.rollups.output_dir) == job_config["rollups"]["output_dir"]
    # the grains the Prometheus metrics read are rolled up by this config
    grains = {g.name for g in settings.rollups.grains}
    assert Metrics(CollectorRegistry()).required_grains() <= grains


def test_metrics_port_agrees_across_compose_toml_prometheus_and_dockerfile(
    compose: dict[str, Any], job_config: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    port = job_config["metrics"]["port"]
    assert port in published(compose["services"]["spanpulse"])
    targets = [
        t
        for job in prometheus_config["scrape_configs"]
        if job["job_name"] == "spanpulse"
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == [f"spanpulse:{port}"]
    assert f"localhost:{port}/metrics" in str(compose["services"]["spanpulse"]["healthcheck"])
    assert f"EXPOSE {port}" in (REPO / "Dockerfile").read_text()


def test_topics_agree_across_collector_toml_generator_and_topic_creation(
    compose: dict[str, Any], job_config: dict[str, Any], collector: dict[str, Any]
) -> None:
    (source,) = job_config["inputs"]
    assert collector["exporters"]["kafka"]["traces"]["topic"] == source["topic"]
    assert collector["exporters"]["kafka"]["traces"]["encoding"] == source["encoding"]
    gen = compose["services"]["generator"]["command"]
    assert gen[gen.index("--topic") + 1] == source["topic"]
    script = "\n".join(compose["services"]["kafka-init"]["command"])
    created = set(re.findall(r"([\w.]+):\d+", script.split("for topic in", 1)[1].split(";")[0]))
    kafka = job_config["kafka"]
    assert created == {source["topic"], kafka["dead_letter_topic"], kafka["alert_topic"]}
    assert env(compose["services"]["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_bootstrap_points_at_the_kafka_service_listener(
    compose: dict[str, Any], job_config: dict[str, Any]
) -> None:
    bootstrap = job_config["kafka"]["bootstrap_servers"]
    host, _, port = bootstrap.partition(":")
    assert host in compose["services"]
    advertised = env(compose["services"][host])["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{bootstrap}" in advertised
    assert f"//:{port}" in env(compose["services"][host])["KAFKA_LISTENERS"]
    gen = compose["services"]["generator"]["command"]
    assert gen[gen.index("--bootstrap") + 1] == bootstrap
    init = "\n".join(compose["services"]["kafka-init"]["command"])
    assert f"--bootstrap-server {bootstrap}" in init


def test_job_volumes_and_config_mount(compose: dict[str, Any], job_config: dict[str, Any]) -> None:
    job = compose["services"]["spanpulse"]
    m = mounts(job)
    assert m[job_config["recovery"]["dir"]] == "spanpulse-recovery"
    assert m[job_config["rollups"]["output_dir"]] == "spanpulse-rollups"
    cmd = job["command"]
    assert cmd[:2] == ["run", "--config"]
    assert m[cmd[2]] == "./deploy/spanpulse.toml"
    assert job["build"]["dockerfile"] == "Dockerfile"
    assert job["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


def test_prometheus_mounts_resolve_config_and_rules(
    compose: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    prom = compose["services"]["prometheus"]
    m = mounts(prom)
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file"))
    assert m[config_path] == "./deploy/prometheus.yml"
    config_dir = PurePosixPath(config_path).parent
    for rule_file in prometheus_config["rule_files"]:
        in_container = config_dir / rule_file
        mount_target = next(t for t in m if in_container.is_relative_to(t))
        local = REPO / m[mount_target] / in_container.relative_to(mount_target)
        assert local.is_file(), f"rule file {rule_file} resolves to missing {local}"
    am_targets = prometheus_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    am_host, _, am_port = am_targets[0].partition(":")
    assert int(am_port) in published(compose["services"][am_host])


def test_collector_config_mount_matches_its_flag(compose: dict[str, Any]) -> None:
    otel = compose["services"]["otel-collector"]
    path = otel["command"][0].split("=", 1)[1]
    assert mounts(otel)[path] == "./deploy/otelcol/config.yaml"
    assert {4317, 4318} <= set(published(otel))


def test_grafana_provisioning_points_at_mounted_dashboards_and_prometheus(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    m = mounts(grafana)
    assert m["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/spanpulse.yml")["providers"][0]
    assert m[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    datasource = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (ds,) = datasource["datasources"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", ds["url"]).groups()  # type: ignore[union-attr]
    assert host in compose["services"]
    assert int(port) in published(compose["services"][host])


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_a_non_root_spanpulse_image(job_config: dict[str, Any]) -> None:
    text = (REPO / "Dockerfile").read_text()
    instructions = [ln.split(None, 1) for ln in text.splitlines() if ln and not ln.startswith("#")]
    froms = [rest for op, *rest in instructions if op == "FROM"]
    assert froms and all(r[0].startswith("python:3.11-slim") for r in froms)
    users = [rest[0] for op, *rest in instructions if op == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert ["ENTRYPOINT", '["spanpulse"]'] in instructions
    for path in (job_config["recovery"]["dir"], job_config["rollups"]["output_dir"]):
        assert path in text  # created and chowned so fresh named volumes are writable
    assert f"chown -R {users[-1]}:{users[-1]} /var/lib/spanpulse" in text


def test_dockerignore_keeps_what_the_build_needs() -> None:
    ignored = {
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    needed = {"pyproject.toml", "README.md", "schemas", "sinks", "flows", "detectors"}
    assert not needed & ignored
    assert {".git", "tests"} <= ignored


# ---------------------------------------------------------------- Prometheus / Alertmanager


def test_promtool_checks_prometheus_config_and_its_rule_files() -> None:
    proc = run(tool("promtool", "prometheus"), "check", "config", "deploy/prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout + proc.stderr
    assert re.search(r"SUCCESS: \d+ rules found", proc.stdout + proc.stderr)


def test_promtool_checks_rules() -> None:
    proc = run(tool("promtool", "prometheus"), "check", "rules", "deploy/rules/spanpulse-rules.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    proc = run(
        tool("promtool", "prometheus"), "test", "rules", "deploy/rules/spanpulse-rules.test.yml"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    rules = (DEPLOY / "rules/spanpulse-rules.yml").read_text()
    assert "> 0.05" in rules
    (tmp_path / "spanpulse-rules.yml").write_text(rules.replace("> 0.05", "> 0.2"))
    shutil.copy(DEPLOY / "rules/spanpulse-rules.test.yml", tmp_path)
    proc = run(
        tool("promtool", "prometheus"), "test", "rules", str(tmp_path / "spanpulse-rules.test.yml")
    )
    assert proc.returncode != 0
    assert "LLMLengthStopShareHigh" in proc.stdout + proc.stderr


def test_alertmanager_config_is_valid() -> None:
    amtool = tool("amtool", "prometheus-alertmanager")
    proc = run(amtool, "check-config", "deploy/alertmanager/alertmanager.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- metric names in PromQL

METRIC_NAME = re.compile(r"\b((?:llm|spanpulse)_[A-Za-z0-9_]+)\b")


def exposed_metric_names() -> set[str]:
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    reg = CollectorRegistry()
    Metrics(reg)
    return {mf.name + s for mf in reg.collect() for s in suffixes[mf.type]}


def dashboard_targets() -> list[dict[str, Any]]:
    dash = json.loads((DEPLOY / "grafana/dashboards/spanpulse.json").read_text())
    return [t for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_parses_and_every_panel_queries_prometheus() -> None:
    dash = json.loads((DEPLOY / "grafana/dashboards/spanpulse.json").read_text())
    ds = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert len(panels) >= 12
    for p in panels:
        assert p["datasource"]["uid"] == ds["uid"], p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]


def test_dashboard_covers_the_main_signals() -> None:
    exprs = " ".join(t["expr"] for t in dashboard_targets())
    for needle in (
        "llm_calls_total",
        "llm_cost_usd_total",
        'finish_class="length"',
        "llm_latency_seconds_bucket",
        "llm_context_fill_ratio_bucket",
        "llm_parse_failures_total",
        "spanpulse_broker_up",
        "spanpulse_window_lag_seconds",
        "spanpulse_dead_letters_total",
    ):
        assert needle in exprs


def test_dashboard_and_rules_only_use_metrics_that_spanpulse_exposes() -> None:
    exposed = exposed_metric_names()
    assert {"llm_calls_total", "llm_latency_seconds_bucket", "spanpulse_broker_up"} <= exposed
    rules = load_yaml(DEPLOY / "rules/spanpulse-rules.yml")
    dash = json.loads((DEPLOY / "grafana/dashboards/spanpulse.json").read_text())
    exprs = [t["expr"] for t in dashboard_targets()]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {name for e in exprs for name in METRIC_NAME.findall(e)}
    assert used, "no metric names found: the pattern is broken"
    assert used - exposed == set()


def test_metric_name_check_is_not_vacuous() -> None:
    assert METRIC_NAME.findall("rate(llm_calls_totl[5m])") == ["llm_calls_totl"]
    assert "llm_calls_totl" not in exposed_metric_names()
