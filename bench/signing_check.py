#!/usr/bin/env python3
"""What one request-signature check costs in the edge companion's Python, per scheme and nonce
store: `Companion.check` (the real code: parse the CheckRequest, verify, answer) called on
serialized CheckRequests, without gRPC and Envoy around it (bench/companion.py measures those,
end to end). Each request is validly signed with its own nonce, so each is accepted.

- **meshgate**: the x-meshgate-* HMAC scheme, nonces in memory;
- **rfc9421-hmac**: RFC 9421, hmac-sha256, covering @method @authority @path @query content-type
  content-digest, with a 1 KiB body;
- **rfc9421-ed25519**: the same with an ed25519 key;
- **rfc9421-hmac-redis**: rfc9421-hmac with `nonceStore: Redis` (a real redis-server on
  loopback, started here; skipped without one): adds one SET NX EX round trip.

Reports µs of CPU (process time) and of wall time per check. Usage:
.venv/bin/python bench/signing_check.py [--checks 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from envoy.service.auth.v3 import external_auth_pb2  # noqa: E402

from meshgate.edge.config import POLICY_KEY, ROUTE_KEY  # noqa: E402
from meshgate.edge.rfc9421 import public_key_bytes  # noqa: E402
from meshgate.edge.server import Companion, EdgeOptions  # noqa: E402
from meshgate.edge.signing import Policy, sign_request  # noqa: E402
from rfc9421_client import sign as sign_rfc9421  # noqa: E402

HMAC_KEY = b"bench-signing-key-0123456789abcdef"
ED25519 = Ed25519PrivateKey.generate()
BODY = b'{"data": "' + b"x" * 1000 + b'"}'
HOST = "api.example.com"
PATH = "/v1/payments?currency=EUR"
COVERED = ("@method", "@authority", "@path", "@query", "content-type")


def _check_request(policy: str, headers: dict[str, str], body: bytes) -> bytes:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host, http.scheme = "POST", PATH, HOST, "https"
    http.headers.update({k: v for k, v in headers.items() if k != "host"})
    http.raw_body = body
    request.attributes.context_extensions[POLICY_KEY] = policy
    request.attributes.context_extensions[ROUTE_KEY] = "bench"
    return request.SerializeToString()


def _requests(variant: str, count: int) -> list[bytes]:
    base = {"host": HOST, "content-type": "application/json"}
    out = []
    for _ in range(count):
        if variant == "meshgate":
            headers = {**base, **sign_request("k", HMAC_KEY, method="POST", path_and_query=PATH, headers=base,
                                              signed_headers=("host", "content-type"), body=BODY)}
        elif variant == "rfc9421-ed25519":
            headers = sign_rfc9421(method="POST", url=f"https://{HOST}{PATH}", key_id="ed", key=ED25519,
                                   alg="ed25519", headers=base, body=BODY, covered=COVERED)
        else:
            headers = sign_rfc9421(method="POST", url=f"https://{HOST}{PATH}", key_id="k", key=HMAC_KEY,
                                   headers=base, body=BODY, covered=COVERED)
        out.append(_check_request(variant, headers, BODY))
    return out


def _policies() -> dict[str, Policy]:
    rfc = dict(keys={"k": HMAC_KEY, "ed": public_key_bytes(ED25519.public_key())}, algorithms={"ed": "ed25519"},
               headers=("content-type",), scheme="RFC9421", components=("@method", "@authority", "@path", "@query"))
    return {
        "meshgate": Policy(name="meshgate", keys={"k": HMAC_KEY}, headers=("host", "content-type")),
        "rfc9421-hmac": Policy(name="rfc9421-hmac", **rfc),
        "rfc9421-ed25519": Policy(name="rfc9421-ed25519", **rfc),
        "rfc9421-hmac-redis": Policy(name="rfc9421-hmac-redis", nonce_store="Redis", **rfc),
    }


async def _run(variant: str, companion: Companion, requests: list[bytes]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for data in requests:
        await companion.check(data, None)  # type: ignore[arg-type] - no trace context is read for an allowed check
    return ((time.process_time() - cpu) / len(requests) * 1e6, (time.perf_counter() - wall) / len(requests) * 1e6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=5000)
    args = ap.parse_args()
    redis_binary = shutil.which("redis-server")
    variants = ["meshgate", "rfc9421-hmac", "rfc9421-ed25519"] + (["rfc9421-hmac-redis"] if redis_binary else [])
    with tempfile.TemporaryDirectory() as tmp:
        redis = None
        url = "redis://127.0.0.1:1/0"
        if redis_binary:
            from harness import free_port

            port = free_port()
            redis = subprocess.Popen([redis_binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                      "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            url = f"redis://127.0.0.1:{port}/0"
            time.sleep(0.5)
        try:
            async def all_variants() -> None:
                companion = Companion(EdgeOptions(redis_url=url, metrics_address=None, redis_timeout_s=1.0))
                companion.verifier.policies = _policies()
                try:
                    print(f"{'variant':<20} {'CPU µs/check':>13} {'wall µs/check':>14}")
                    for variant in variants:
                        requests = _requests(variant, args.checks)
                        await _run(variant, companion, requests[: min(200, len(requests))])  # warm-up (nonces spent)
                        cpu, wall = await _run(variant, companion, _requests(variant, args.checks))
                        print(f"{variant:<20} {cpu:>13.1f} {wall:>14.1f}")
                    denied = sum(v for k, v in companion.metrics.decisions._metrics.items() if k[1] == "deny"
                                 for v in [v._value.get()])
                    print(f"refused: {int(denied)} (should be 0)")
                finally:
                    await companion.ratelimit.redis.aclose()

            asyncio.run(all_variants())
        finally:
            if redis is not None:
                redis.terminate()  # our own redis-server, by its Popen
                redis.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
