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

from meshgate.api.config import load_translation
from meshgate.controlplane.pipeline import compile_config
from meshgate.envoy.process import find_envoy
from meshgate.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshgate.xds.translator import TranslateOptions

GOLDEN = Path(__file__).parent / "golden" / "translate"
EXAMPLES = Path(__file__).parent.parent / "examples"
# Every golden input, and every example a user may run (`meshgate run examples/NAME/`).
CASES = sorted(p.name[: -len(".in.yaml")] for p in GOLDEN.glob("*.in.yaml")) + [
    f"../../../examples/{d.name}/" for d in sorted(EXAMPLES.iterdir()) if d.is_dir()]


def static_bootstrap(resources) -> dict:
    """Inline RDS into listeners and EDS into clusters, and SDS secrets as static secrets, so
    Envoy needs no control plane."""
    def as_dict(m):
        return MessageToDict(m, preserving_proto_field_name=True)

    listeners = []
    for listener in resources[LISTENER].values():
        d = as_dict(listener)
        for chain in d["filter_chains"]:
            hcm = next(f["typed_config"] for f in chain["filters"] if f["name"].endswith("http_connection_manager"))
            name = hcm.pop("rds")["route_config_name"]
            hcm["route_config"] = as_dict(resources[ROUTE][name])
            tls = chain.get("transport_socket", {}).get("typed_config", {}).get("common_tls_context", {})
            for sds in tls.get("tls_certificate_sds_secret_configs", []):
                sds.pop("sds_config")  # static secret of that name
            for http_filter in hcm.get("http_filters", []):  # the oauth2 filter's secrets, likewise
                credentials = http_filter.get("typed_config", {}).get("config", {}).get("credentials", {})
                for key in ("token_secret", "hmac_secret"):
                    credentials.get(key, {}).pop("sds_config", None)
        listeners.append(d)
    clusters = []
    for name, cluster in resources[CLUSTER].items():
        d = as_dict(cluster)
        if d.get("type") == "EDS":
            d.pop("eds_cluster_config")
            d["type"] = "STATIC"
            d["load_assignment"] = as_dict(resources[ENDPOINT][name])
        # Upstream TLS: the client certificate and the CA bundle become static secrets too.
        tls = d.get("transport_socket", {}).get("typed_config", {}).get("common_tls_context", {})
        for sds in tls.get("tls_certificate_sds_secret_configs", []):
            sds.pop("sds_config")
        tls.get("combined_validation_context", {}).get("validation_context_sds_secret_config", {}).pop("sds_config", None)
        clusters.append(d)
    secrets = [as_dict(s) for s in resources.get(SECRET, {}).values()]
    # The oauth2 filter needs a node id and cluster (as every Envoy meshgate runs has).
    return {"node": {"id": "validate", "cluster": "edge"},
            "static_resources": {"listeners": listeners, "clusters": clusters, "secrets": secrets}}


@pytest.mark.parametrize("name", CASES)
def test_envoy_accepts_translation(name: str, tmp_path: Path) -> None:
    path = GOLDEN / f"{name}.in.yaml" if not name.endswith("/") else (GOLDEN / name).resolve()
    translation, problems = load_translation([str(path)], environ={})  # partly invalid goldens too
    if name.startswith("../"):
        assert not problems, problems  # an example must be entirely valid
    resources = compile_config(translation, TranslateOptions(access_log_path=str(tmp_path / "access.log")))
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(static_bootstrap(resources)))
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
