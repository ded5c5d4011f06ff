"""Sign and send requests to examples/signing/ (`meshgate run examples/signing/`) with an RFC 9421
client: `http-message-signatures` (`pip install http-message-signatures`), not meshgate's code.

    python examples/signing/client.py [--port 8080] [--alg ed25519|hmac-sha256] [--replay]

Prints each answer's status and the reason header of a refusal. The keys are those of
signing.yaml: RFC 9421's published ed25519 test key and an example shared key; never use them
for anything real.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import secrets

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

# RFC 9421 Appendix B.1.4, test-key-ed25519: the private key the RFC publishes.
ED25519_PRIVATE = Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode("n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU="))
SHARED_KEY = b"example-shared-key-do-not-use-0123456789"


class Request:  # what the signer reads and writes: method, url, headers
    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method, self.url, self.headers = method, url, headers


def signed_headers(alg: str, method: str, url: str, headers: dict[str, str], body: bytes | None) -> dict[str, str]:
    key_id, key, algorithm = (("test-key-ed25519", ED25519_PRIVATE, algorithms.ED25519) if alg == "ed25519"
                              else ("partner-hmac", SHARED_KEY, algorithms.HMAC_SHA256))
    request = Request(method, url, dict(headers))
    signer = HTTPMessageSigner(signature_algorithm=algorithm,
                               key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: key}))
    signer.sign(request, key_id=key_id, label="sig1", nonce=secrets.token_urlsafe(18),
                created=datetime.datetime.now(datetime.timezone.utc),
                covered_component_ids=["@method", "@authority", "@path", "@query", "content-type"],
                body=body)  # with a body: adds Content-Digest (sha-256) and covers it
    return request.headers


def send(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers={k: v for k, v in headers.items() if k.lower() != "host"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("x-meshgate-signature-error") or ""
    finally:
        conn.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--alg", choices=["ed25519", "hmac-sha256"], default="ed25519")
    p.add_argument("--replay", action="store_true", help="send the same signed request twice")
    args = p.parse_args()
    host = f"127.0.0.1:{args.port}"
    body = json.dumps({"amount": 10}).encode()
    headers = signed_headers(args.alg, "POST", f"http://{host}/partners/payments?currency=EUR",
                             {"Host": host, "Content-Type": "application/json"}, body)
    for _ in range(2 if args.replay else 1):
        status, reason = send(args.port, "POST", "/partners/payments?currency=EUR", headers, body)
        print(status, reason)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
