"""Observability config without a running Envoy: the tracing settings read from OTEL_* variables,
the golden translation with tracing on (also fed to `envoy --mode validate`), and the bootstrap's
stats listener (validated likewise). End to end: tests/test_e2e_observability.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from meshgate.api.config import load_translation
from meshgate.controlplane.pipeline import compile_config
from meshgate.envoy.bootstrap import BootstrapOptions, render_bootstrap
from meshgate.envoy.process import find_envoy
from meshgate.errors import StartupError
from meshgate.xds.render import resources_to_dict
from meshgate.xds.snapshot import Snapshot
from meshgate.xds.translator import TranslateOptions
from meshgate.xds.translator.tracing import TracingOptions, tracing_from_env
from test_envoy_accepts import static_bootstrap

GOLDEN = Path(__file__).parent / "golden"


def _validate(config: dict, tmp_path: Path) -> None:
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id", "-l", "error"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- tracing from the environment -------------------------------------------------------------------


def test_tracing_is_off_without_an_endpoint() -> None:
    assert tracing_from_env({}) is None
    assert tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}) is None


def test_tracing_from_otel_variables() -> None:
    assert tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}) == TracingOptions("127.0.0.1", 4317)
    got = tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:1", "OTEL_SERVICE_NAME": "edge",
                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector.observability:4317",
                            "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert got == TracingOptions("collector.observability", 4317, sampling_percent=25.0, service_name="edge")


@pytest.mark.parametrize("env, problem", [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317"}, "TLS"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/v1/traces"}, "expected http://HOST:PORT"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "gRPC only"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_SAMPLER_ARG": "5"}, "from 0 to 1"),
])
def test_bad_tracing_variables_are_refused(env: dict[str, str], problem: str) -> None:
    with pytest.raises(StartupError, match=problem):
        tracing_from_env(env)


def test_envoy_metrics_over_otlp_follow_their_own_variables(tmp_path: Path) -> None:
    """OTEL_EXPORTER_OTLP_METRICS_ENDPOINT wins over the shared one, OTEL_METRICS_EXPORTER=none
    turns metrics off alone, and the bootstrap with the stat sink is one Envoy accepts."""
    from meshgate.xds.translator.tracing import otlp_grpc_endpoint

    shared = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert otlp_grpc_endpoint(shared, "METRICS") == ("collector", 4317)
    assert otlp_grpc_endpoint({**shared, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:5317"},
                              "METRICS") == ("127.0.0.1", 5317)
    assert otlp_grpc_endpoint({**shared, "OTEL_METRICS_EXPORTER": "none"}, "METRICS") is None
    assert tracing_from_env({**shared, "OTEL_METRICS_EXPORTER": "none"}) is not None
    bootstrap = render_bootstrap(BootstrapOptions(xds_port=18000, node_id="n", otlp_metrics=("collector", 4317)))
    [sink] = bootstrap["stats_sinks"]
    assert sink["name"] == "envoy.stat_sinks.open_telemetry"
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    out = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


# -- golden pair and Envoy validation ------------------------------------------------------------------


def test_tracing_golden(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """`tracing.in.yaml` translated with tracing on (10% sampling) is `tracing.out.yaml`; with
    tracing off the same input gives no OTLP cluster and no `tracing` block."""
    source = GOLDEN / "observability" / "tracing.in.yaml"
    translation, problems = load_translation([str(source)], environ={})
    assert not problems
    options = TranslateOptions(access_log_path="/dev/stdout",
                               tracing=TracingOptions("127.0.0.1", 4317, sampling_percent=10.0, service_name="edge"))
    resources = compile_config(translation, options)
    Snapshot.build(resources).check_consistent()
    actual = yaml.safe_dump(resources_to_dict(resources), sort_keys=False, width=120)
    golden = GOLDEN / "observability" / "tracing.out.yaml"
    if request.config.getoption("--update-golden"):
        golden.write_text(actual)
    assert actual == golden.read_text(), "tracing.out.yaml differs (run with --update-golden and review the diff)"
    _validate(static_bootstrap(resources), tmp_path)

    untraced = yaml.safe_dump(resources_to_dict(compile_config(translation, TranslateOptions())), sort_keys=False)
    assert "meshgate/otlp" not in untraced and "tracing:" not in untraced


def test_bootstrap_with_stats_listener_passes_envoy_validate(tmp_path: Path) -> None:
    bootstrap = render_bootstrap(BootstrapOptions(xds_port=18000, node_id="n1", stats_host="0.0.0.0", stats_port=19902))
    (listener,) = bootstrap["static_resources"]["listeners"]
    assert listener["name"] == "meshgate_stats"
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 19902}
    names = [c["name"] for c in bootstrap["static_resources"]["clusters"]]
    assert names == ["meshgate_xds", "meshgate_admin"]
    _validate(bootstrap, tmp_path)
    with pytest.raises(ValueError, match="fixed admin port"):
        render_bootstrap(BootstrapOptions(xds_port=18000, admin_port=0, stats_port=19902))
    assert "listeners" not in render_bootstrap(BootstrapOptions(xds_port=18000))["static_resources"]  # off by default
