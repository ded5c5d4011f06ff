"""Request signature verification (SecurityPolicy `requestSignature`, a meshgate extension): the
scheme itself, with no gRPC and no Envoy in it, so clients and tests can use it as is.

A client signs, with a shared key (HMAC-SHA256), a canonical text made of the request's method,
path, query, the policy's chosen headers, a SHA-256 digest of the body, a timestamp and a
one-time nonce. The gateway recomputes it and compares in constant time (`hmac.compare_digest`),
then refuses timestamps outside the clock-skew window and nonces it has seen (a replay). The
exact text is in docs/security.md ("requestSignature"); `canonical_text` is its definition.

Like AWS SigV4 and RFC 9421 (HTTP Message Signatures), the list of signed headers is itself
signed, so a header can't be dropped from the signature without it failing; unlike them there is
no URL re-encoding: the path and query are signed exactly as sent, which is simpler for clients
and leaves nothing to canonicalize differently.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ALGORITHM = "MESHGATE-HMAC-SHA256"
# The request headers of the scheme (lower case, as Envoy hands them to ext_authz).
KEY_ID_HEADER = "x-meshgate-key-id"
TIMESTAMP_HEADER = "x-meshgate-timestamp"
NONCE_HEADER = "x-meshgate-nonce"
SIGNATURE_HEADER = "x-meshgate-signature"
# The response header naming why a request was refused (a fixed word, never a secret or a value).
REASON_HEADER = "x-meshgate-signature-error"

_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_SIGNATURE_RE = re.compile(r"v1=([0-9a-f]{64})")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
EMPTY_BODY_DIGEST = hashlib.sha256(b"").hexdigest()

# Why a request is refused: the value of REASON_HEADER and the `reason` label of the metrics.
REASONS = (
    "missing-signature",  # one of the four headers of the scheme is absent
    "malformed",  # one of them is not of its form (signature v1=<64 hex>, integer timestamp, nonce)
    "unknown-key",  # the key id is not a key of this route's policy
    "missing-header",  # a header the policy signs is absent
    "bad-signature",  # the HMAC differs: wrong key, or method/path/query/header/body changed
    "stale-timestamp",  # outside the clock-skew window
    "replayed",  # the nonce was used already (within the window)
    "unknown-policy",  # the companion has no policy of that name (config not there yet)
    "body-unavailable",  # Envoy did not send the whole body (the route's body limit is off)
)


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical_text(*, method: str, path: str, query: str, headers: Sequence[tuple[str, str]],
                   body_sha256: str, timestamp: str, nonce: str, key_id: str) -> bytes:
    """The text that is signed: lines joined by "\\n" (no trailing newline), UTF-8.

        MESHGATE-HMAC-SHA256
        <timestamp>                 decimal Unix seconds, as sent in x-meshgate-timestamp
        <nonce>                     as sent in x-meshgate-nonce
        <key id>                    as sent in x-meshgate-key-id
        <METHOD>                    upper case
        <path>                      as sent, without "?" and the query
        <query>                     as sent after "?" (empty line if none), not re-encoded or sorted
        <signed header names>       the policy's headers, lower case, joined by ";"
        <name>:<value>              one line per signed header, in that order, value trimmed
        <body sha256>               lower-case hex SHA-256 of the body bytes (of b"" if none)
    """
    lines = [ALGORITHM, timestamp, nonce, key_id, method.upper(), path, query,
             ";".join(name for name, _ in headers)]
    lines += [f"{name}:{value.strip()}" for name, value in headers]
    lines.append(body_sha256)
    return "\n".join(lines).encode()


def sign(key: bytes, text: bytes) -> str:
    """The x-meshgate-signature value for a canonical text."""
    return "v1=" + hmac.new(key, text, hashlib.sha256).hexdigest()


def sign_request(key_id: str, key: bytes, *, method: str, path_and_query: str, headers: Mapping[str, str],
                 signed_headers: Sequence[str], body: bytes = b"", timestamp: int | None = None,
                 nonce: str | None = None) -> dict[str, str]:
    """A client's side: the headers to add to a request (the reference implementation the docs
    describe; tests and the bench sign with it). `headers` holds the request's own headers."""
    import secrets

    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_urlsafe(18)
    path, _, query = path_and_query.partition("?")
    lower = {k.lower(): v for k, v in headers.items()}
    text = canonical_text(method=method, path=path, query=query,
                          headers=[(h, lower.get(h, "")) for h in signed_headers],
                          body_sha256=body_digest(body), timestamp=ts, nonce=nonce, key_id=key_id)
    return {KEY_ID_HEADER: key_id, TIMESTAMP_HEADER: ts, NONCE_HEADER: nonce, SIGNATURE_HEADER: sign(key, text)}


@dataclass
class Policy:
    """One requestSignature policy as the companion holds it (from the control plane)."""

    name: str
    keys: Mapping[str, bytes]  # key id -> key
    headers: tuple[str, ...] = ()  # signed headers, lower case, in signing order
    max_skew_s: int = 300
    sign_body: bool = True


class ReplayCache:
    """Nonces seen within the window, per key id: an LRU bounded by `capacity` (in memory, one
    companion). An entry lives as long as a timestamp that carried it could still be accepted."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self.evicted_live = 0  # entries pushed out while still inside their window (capacity too small)

    def check_and_add(self, policy: str, key_id: str, nonce: str, expires: float, now: float) -> bool:
        """False if the nonce was seen and hasn't expired; otherwise remember it and return True."""
        key = (policy, key_id, nonce)
        seen = self._seen.get(key)
        if seen is not None and seen > now:
            return False
        self._seen[key] = expires
        self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            _, old = self._seen.popitem(last=False)
            if old > now:
                self.evicted_live += 1
        return True

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class Verdict:
    ok: bool
    reason: str = ""  # one of REASONS when not ok
    key_id: str = ""


@dataclass
class Verifier:
    """Verifies requests against the policies currently configured."""

    policies: Mapping[str, Policy] = field(default_factory=dict)
    replay: ReplayCache = field(default_factory=ReplayCache)

    def verify(self, policy_name: str, *, method: str, path: str, headers: Mapping[str, str],
               body: bytes | None, host: str | None = None, now: float | None = None) -> Verdict:
        """`path` is the request's :path (path and query); `headers` lower-case names; `host` the
        authority (signed as header `host`; from `headers` if None); `body` None when Envoy didn't
        send it."""
        policy = self.policies.get(policy_name)
        if policy is None:
            return Verdict(False, "unknown-policy")
        key_id, ts, nonce, signature = (headers.get(KEY_ID_HEADER), headers.get(TIMESTAMP_HEADER),
                                        headers.get(NONCE_HEADER), headers.get(SIGNATURE_HEADER))
        if key_id is None or ts is None or nonce is None or signature is None:
            return Verdict(False, "missing-signature")
        m = _SIGNATURE_RE.fullmatch(signature)
        if m is None or not _TIMESTAMP_RE.fullmatch(ts) or not _NONCE_RE.fullmatch(nonce):
            return Verdict(False, "malformed")
        key = policy.keys.get(key_id)
        if key is None:
            return Verdict(False, "unknown-key", key_id[:64])
        signed = []
        for name in policy.headers:
            value = host if name == "host" and host is not None else headers.get(name)
            if value is None:
                return Verdict(False, "missing-header", key_id)
            signed.append((name, value))
        if policy.sign_body:
            if body is None:
                return Verdict(False, "body-unavailable", key_id)
            digest = hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_DIGEST
        else:
            digest = EMPTY_BODY_DIGEST
        raw_path, _, query = path.partition("?")
        text = canonical_text(method=method, path=raw_path, query=query, headers=signed, body_sha256=digest,
                              timestamp=ts, nonce=nonce, key_id=key_id)
        expected = hmac.new(key, text, hashlib.sha256).hexdigest()
        # Constant time: how much of a guess matches must not show in how long the answer takes.
        if not hmac.compare_digest(expected, m.group(1)):
            return Verdict(False, "bad-signature", key_id)
        # Time and replay only after the signature: an unsigned request can't fill the nonce cache.
        now = time.time() if now is None else now
        if abs(now - int(ts)) > policy.max_skew_s:
            return Verdict(False, "stale-timestamp", key_id)
        if not self.replay.check_and_add(policy.name, key_id, nonce, int(ts) + policy.max_skew_s + 1, now):
            return Verdict(False, "replayed", key_id)
        return Verdict(True, "", key_id)


__all__ = ["ALGORITHM", "Policy", "REASONS", "ReplayCache", "Verdict", "Verifier", "canonical_text", "sign",
           "sign_request"]
