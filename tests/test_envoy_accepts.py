"""Every golden translation is accepted by the real Envoy (`envoy --mode validate`).

Golden files prove the output is what we meant; this proves Envoy agrees it is valid config
(unknown fields, bad regexes, wrong extension names, invalid templates all fail here). The
resources are inlined into a static bootstrap because validate mode doesn't talk to ADS.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from meshgate.api.config import load_config
from meshgate.controlplane.pipeline import compile_config
from meshgate.envoy.process import find_envoy
from meshgate.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshgate.xds.translate import TranslateOptions

GOLDEN = Path(__file__).parent / "golden" / "translate"
CASES = sorted(p.name[: -len(".in.yaml")] for p in GOLDEN.glob("*.in.yaml")) + ["../../../examples/quickstart/"]


def static_bootstrap(resources) -> dict:
    """Inline RDS into listeners and EDS into clusters, so Envoy needs no control plane."""
    def as_dict(m):
        return MessageToDict(m, preserving_proto_field_name=True)

    listeners = []
    for listener in resources[LISTENER].values():
        d = as_dict(listener)
        for chain in d["filter_chains"]:
            hcm = chain["filters"][0]["typed_config"]
            name = hcm.pop("rds")["route_config_name"]
            hcm["route_config"] = as_dict(resources[ROUTE][name])
        listeners.append(d)
    clusters = []
    for name, cluster in resources[CLUSTER].items():
        d = as_dict(cluster)
        if d.get("type") == "EDS":
            d.pop("eds_cluster_config")
            d["type"] = "STATIC"
            d["load_assignment"] = as_dict(resources[ENDPOINT][name])
        clusters.append(d)
    return {"static_resources": {"listeners": listeners, "clusters": clusters}}


@pytest.mark.parametrize("name", CASES)
def test_envoy_accepts_translation(name: str, tmp_path: Path) -> None:
    path = GOLDEN / f"{name}.in.yaml" if not name.endswith("/") else (GOLDEN / name).resolve()
    resources = compile_config(load_config([str(path)], environ={}), TranslateOptions(access_log_path=str(tmp_path / "access.log")))
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(static_bootstrap(resources)))
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
