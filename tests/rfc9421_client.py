"""An independent RFC 9421 client for the tests: `http-message-signatures` (PyPI, its own
structured-field library `http-sf`), not meshgate's code, signs the requests that meshgate's
verifier (meshgate.edge.rfc9421) must accept."""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

DEFAULT_COVERED = ("@method", "@authority", "@path", "@query")


@dataclass
class _Message:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


def sign(*, method: str, url: str, key_id: str, key: object, alg: str = "hmac-sha256", headers: Mapping[str, str] = {},
         body: bytes | None = None, covered: Sequence[str] = DEFAULT_COVERED, nonce: str | None = None,
         created: int | None = None, expires: int | None = None, include_alg: bool = True,
         label: str = "sig1") -> dict[str, str]:
    """The request's headers with Signature-Input, Signature (and, for a body, Content-Digest)
    added. `key`: the shared secret (bytes) for hmac-sha256, an Ed25519PrivateKey for ed25519."""
    algorithm = {"hmac-sha256": algorithms.HMAC_SHA256, "ed25519": algorithms.ED25519}[alg]
    message = _Message(method, url, dict(headers))
    signer = HTTPMessageSigner(signature_algorithm=algorithm,
                               key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: key}))
    when = datetime.datetime.fromtimestamp(created, datetime.timezone.utc) if created is not None else None
    until = datetime.datetime.fromtimestamp(expires, datetime.timezone.utc) if expires is not None else None
    signer.sign(message, key_id=key_id, created=when, expires=until, label=label, include_alg=include_alg,
                nonce=secrets.token_urlsafe(18) if nonce is None else nonce, covered_component_ids=list(covered),
                body=body)
    return {k.lower(): v for k, v in message.headers.items()}
