"""The runnable example of docs/security.md ("requestSignature", RFC 9421): `meshgate run
examples/signing/` and its client (examples/signing/client.py, signing with the independent
`http-message-signatures`), exactly as the docs say to run them: a signed POST passes, the same
request again is a replay, for ed25519 (RFC 9421's test key) and hmac-sha256."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import Meshgate, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "signing"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    work = tmp_path_factory.mktemp("signing-example")
    # The example as it is, but for its upstream's fixed port (a free one here).
    config = work / "signing.yaml"
    config.write_text((EXAMPLE / "signing.yaml").read_text().replace("port: 9122", f"port: {free_port()}"))
    mg = Meshgate([str(config)], work, env={"MESHGATE_HTTP_PORT": str(port)})
    try:
        mg.start()
        mg.port = port
        yield mg
        assert mg.stop() == 0, mg.output()
    finally:
        mg.stop()


@pytest.mark.parametrize("alg", ["ed25519", "hmac-sha256"])
def test_the_example_client(gw: Meshgate, alg: str) -> None:
    out = subprocess.run([sys.executable, str(EXAMPLE / "client.py"), "--port", str(gw.port), "--alg", alg, "--replay"],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["200 ", "401 replayed"], out.stdout
