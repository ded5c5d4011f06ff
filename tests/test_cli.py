"""The `meshgate` command line as a user runs it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import ROOT, free_port

QUICKSTART = ROOT / "examples" / "quickstart"
ERRORS = Path(__file__).parent / "golden" / "errors"


def meshgate(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshgate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_validate_ok() -> None:
    out = meshgate("validate", str(QUICKSTART))
    assert out.returncode == 0, out.stderr
    assert "valid: 1 gateways, 1 listeners, 2 routes, 2 backends" in out.stdout


@pytest.mark.parametrize("case", sorted(p.stem for p in ERRORS.glob("*.yaml")))
def test_validate_reports_each_error_class(case: str) -> None:
    """Same lines as the golden `.errors` files, on stderr, exit 1, never a traceback."""
    out = meshgate("validate", f"{case}.yaml", cwd=ERRORS)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    expected = (ERRORS / f"{case}.errors").read_text().splitlines()
    assert out.stderr.splitlines()[:-1] == expected
    assert out.stderr.splitlines()[-1] == f"{len(expected)} problem(s) found"


def test_validate_unreadable_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"apiVersion: v1\nkind: Secret\nmetadata: {name: caf\xe9}\n")
    out = meshgate("validate", str(bad), str(tmp_path / "missing.yaml"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{bad}:0: cannot read: not UTF-8" in out.stderr
    assert f"{tmp_path / 'missing.yaml'}:0: no such file or directory" in out.stderr


def test_validate_environment_and_overlay(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge}\n"
        "spec:\n  listeners:\n    - {name: http, protocol: HTTP, port: \"${PORT:-8080}\"}\n")
    (tmp_path / "gw.staging.yaml").write_text(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge}\n"
        "spec:\n  listeners:\n    - {name: http, protocol: HTTPS, port: 8443}\n")
    assert meshgate("validate", str(tmp_path)).returncode == 0
    out = meshgate("validate", str(tmp_path), "--env", "staging")
    assert out.returncode == 1
    # The error points into the overlay file, where the bad value came from.
    assert f"{tmp_path / 'gw.staging.yaml'}:6: spec.listeners[0]: protocol HTTPS needs tls" in out.stderr
    translated = meshgate("translate", str(tmp_path), "-o", "json", env={"PORT": "9999"})
    listener = json.loads(translated.stdout)["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 9999


def test_translate_is_deterministic_yaml_and_json() -> None:
    first = meshgate("translate", str(QUICKSTART))
    second = meshgate("translate", str(QUICKSTART))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    as_yaml = yaml.safe_load(first.stdout)
    as_json = json.loads(meshgate("translate", str(QUICKSTART), "-o", "json").stdout)
    assert as_yaml == as_json
    assert [c["name"] for c in as_json["clusters"]] == ["backend/default/echo", "backend/default/users"]
    assert [r["name"] for r in as_json["routes"]] == ["default/edge/8080"]


def test_translate_invalid_config_exits_1() -> None:
    out = meshgate("translate", "unknown-field.yaml", cwd=ERRORS)
    assert out.returncode == 1 and "unknown field" in out.stderr and out.stdout == ""


def test_schema_lists_every_kind() -> None:
    schemas = json.loads(meshgate("schema").stdout)
    assert set(schemas) == {
        "gateway.networking.k8s.io/v1/Gateway", "gateway.networking.k8s.io/v1/HTTPRoute",
        "gateway.networking.k8s.io/v1/GRPCRoute", "gateway.networking.k8s.io/v1beta1/ReferenceGrant",
        "gateway.networking.k8s.io/v1/ReferenceGrant", "meshgate.io/v1alpha1/ClientTrafficPolicy",
        "meshgate.io/v1alpha1/Backend", "meshgate.io/v1alpha1/HTTPRoute", "v1/Secret",
        "meshgate.io/v1alpha1/GRPCJSONTranscoder", "meshgate.io/v1alpha1/BackendTrafficPolicy",
        "meshgate.io/v1alpha1/SecurityPolicy", "v1/Namespace", "v1/Service", "discovery.k8s.io/v1/EndpointSlice",
        "v1/ConfigMap", "meshgate.io/v1alpha1/EnvoyProxy",
    }
    backend = json.loads(meshgate("schema", "Backend").stdout)["meshgate.io/v1alpha1/Backend"]
    assert "endpoints" in backend["$defs"]["BackendSpec"]["properties"]
    assert meshgate("schema", "Nope").returncode == 1


def test_run_with_invalid_config_starts_nothing(tmp_path: Path) -> None:
    out = meshgate("run", "unknown-field.yaml", "--state-dir", str(tmp_path), "--xds-address", "127.0.0.1:0",
                   "--status-address", "127.0.0.1:0", cwd=ERRORS)
    assert out.returncode == 1
    assert "unknown-field.yaml:20: spec.rules[0].matchs: unknown field" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "envoy-bootstrap.json").exists()


def test_bootstrap_is_valid_for_envoy(tmp_path: Path) -> None:
    from meshgate.envoy.process import find_envoy

    out = meshgate("bootstrap", "--xds-address", "10.1.2.3:18000", "--group", "edge", "--delta")
    path = tmp_path / "bootstrap.json"
    path.write_text(out.stdout)
    assert json.loads(out.stdout)["node"]["cluster"] == "edge"
    check = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("flag", ["--xds-address", "--status-address", "--admin-port"])
def test_run_reports_a_port_in_use_in_one_line(flag: str, tmp_path: Path) -> None:
    """A taken port is one readable line and exit 1, with nothing left running."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    ports = {"--xds-address": "127.0.0.1:0", "--status-address": "127.0.0.1:0", "--admin-port": "0"}
    ports[flag] = str(port) if flag == "--admin-port" else f"127.0.0.1:{port}"
    try:
        out = meshgate("run", str(QUICKSTART), "--state-dir", str(tmp_path), "--no-sample-upstreams",
                       *[x for kv in ports.items() for x in kv], env={"MESHGATE_HTTP_PORT": str(free_port())})
    finally:
        holder.close()
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("meshgate: ") and str(port) in last, out.stderr
    assert ("in use" in last or "Address already in use" in last), last


GOLDEN_IN = Path(__file__).parent / "golden" / "translate"


def test_run_with_invalid_config_leaves_no_state_dir(tmp_path: Path) -> None:
    """Neither --state-dir nor the default .meshgate/ is created when the config is rejected."""
    (tmp_path / "bad.yaml").write_text((ERRORS / "unknown-field.yaml").read_text())
    ports = ("--xds-address", "127.0.0.1:0", "--status-address", "127.0.0.1:0")
    out = meshgate("run", "bad.yaml", *ports, cwd=tmp_path)
    assert out.returncode == 1 and "unknown field" in out.stderr
    out = meshgate("run", "bad.yaml", "--state-dir", str(tmp_path / "state"), *ports, cwd=tmp_path)
    assert out.returncode == 1 and "unknown field" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_xds_help_matches_its_flags() -> None:
    """`xds` has no state dir; both its servers default to loopback, and -h says so."""
    help_text = " ".join(meshgate("xds", "-h").stdout.split())
    assert "STATE_DIR" not in help_text and "state-dir" not in help_text
    assert "default 127.0.0.1:18000" in help_text and "default 127.0.0.1:19000" in help_text
    assert meshgate("xds", "--state-dir", "x", "y.yaml").returncode == 2  # argparse: unknown flag


def test_xds_and_run_servers_default_to_loopback() -> None:
    from meshgate.cli import _parser, _run_options

    for command in ("xds", "run"):
        opts = _run_options(_parser().parse_args([command, "config.yaml"]))
        assert (opts.xds_host, opts.xds_port, opts.status_host, opts.status_port) == ("127.0.0.1", 18000, "127.0.0.1", 19000)


def _private_keys(text: str) -> list[bytes]:
    """Every inline value in `text` that is (base64 of) a PEM private key."""
    import base64
    import re

    found = [m.encode() for m in re.findall(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text)]
    for blob in re.findall(r"[A-Za-z0-9+/=]{200,}", text):
        decoded = base64.b64decode(blob)
        if b"PRIVATE KEY-----" in decoded:
            found.append(decoded)
    return found


@pytest.mark.parametrize("output", ["yaml", "json"])
def test_translate_redacts_private_keys(output: str) -> None:
    config = str(GOLDEN_IN / "https-and-dns.in.yaml")
    out = meshgate("translate", config, "-o", output)
    assert out.returncode == 0, out.stderr
    assert _private_keys(out.stdout) == []
    assert out.stdout.count("[redacted]") == 2  # one key per certificate
    assert "certificate_chain" in out.stdout  # certificates are public and stay
    shown = meshgate("translate", config, "-o", output, "--show-secrets")
    assert len(_private_keys(shown.stdout)) == 2 and "[redacted]" not in shown.stdout


def test_redact_secrets() -> None:
    import base64

    from meshgate.redact import redact_secrets, redact_text

    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n"
    cert = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
    rendered = {"secrets": [{"name": "s", "tls_certificate": {
        "certificate_chain": {"inline_string": cert},
        "private_key": {"inline_string": "not even PEM"},
        "password": {"filename": "/etc/key.pass"},
    }}], "listeners": [{"note": f"key: {pem}", "x": {"inline_bytes": base64.b64encode(pem.encode()).decode()}}]}
    redacted = redact_secrets(rendered)
    tls = redacted["secrets"][0]["tls_certificate"]
    assert tls["private_key"] == {"inline_string": "[redacted]"}
    assert tls["certificate_chain"] == {"inline_string": cert}
    assert tls["password"] == {"filename": "/etc/key.pass"}  # a path is not a secret
    assert redacted["listeners"][0] == {"note": "key: [redacted]\n", "x": {"inline_bytes": "[redacted]"}}
    assert rendered["secrets"][0]["tls_certificate"]["private_key"] == {"inline_string": "not even PEM"}  # a copy
    assert redact_text(cert + pem) == cert + "[redacted]\n"


@pytest.mark.parametrize("target", ["directory", "fifo", "/dev/zero"])
def test_certificate_path_that_is_not_a_file_is_one_line(tmp_path: Path, target: str) -> None:
    """A certificate path naming a directory, a FIFO or a device: one error line, at once, never
    a traceback, a hang (FIFO) or a read without end (/dev/zero)."""
    if target == "directory":
        (tmp_path / "certs").mkdir()
        path = "certs"
    elif target == "fifo":
        os.mkfifo(tmp_path / "cert.pipe")
        path = "cert.pipe"
    else:
        path = target
    (tmp_path / "gateway.yaml").write_text(f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners:
    - name: https
      protocol: HTTPS
      port: 8443
      tls: {{options: {{meshgate.io/certificate-file: {path}, meshgate.io/private-key-file: {path}}}}}
""")
    out = meshgate("validate", "gateway.yaml", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    reason = {"directory": "is a directory", "fifo": "is not a regular file (FIFO)",
              "/dev/zero": "is not a regular file (character device)"}[target]
    assert f'gateway.yaml:9: spec.listeners[0].tls.options["meshgate.io/certificate-file"]: cannot read file ' \
           f"{path} ({reason})" in out.stderr.splitlines()


@pytest.mark.parametrize("command", ["run", "xds"])
def test_an_audit_log_that_cannot_be_written_stops_the_start_with_its_path(command: str, tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "audit.log"
    out = meshgate(command, str(ROOT / "examples" / "quickstart"), "--audit-log", str(path),
                   "--xds-address", "127.0.0.1:0", "--status-address", "127.0.0.1:0", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"--audit-log {path}: cannot append to it: No such file or directory" in out.stderr


def test_a_bad_metric_export_interval_stops_run_before_anything_starts(tmp_path: Path) -> None:
    out = meshgate("run", str(QUICKSTART), "--state-dir", str(tmp_path / "state"), cwd=tmp_path,
                   env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_METRIC_EXPORT_INTERVAL": "abc"})
    assert out.returncode == 1
    assert "OTEL_METRIC_EXPORT_INTERVAL=abc: expected milliseconds, at least 100" in out.stderr
    assert not (tmp_path / "state").exists()
