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

A policy with `scheme: RFC9421` is verified by meshgate.edge.rfc9421 instead; both schemes end
the same way (`Verifier._replay`): the nonce is new, in this companion's memory, or, with
`nonceStore: Redis`, in Redis, which the server (meshgate.edge.server) asks after the signature
and the clock have passed (a `NonceClaim` in the verdict).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshgate.edge import rfc9421

ALGORITHM = "MESHGATE-HMAC-SHA256"
# The request headers of the scheme (lower case, as Envoy hands them to ext_authz).
KEY_ID_HEADER = "x-meshgate-key-id"
TIMESTAMP_HEADER = "x-meshgate-timestamp"
NONCE_HEADER = "x-meshgate-nonce"
SIGNATURE_HEADER = "x-meshgate-signature"
# The response header naming why a request was refused (a fixed word, never a secret or a value).
REASON_HEADER = "x-meshgate-signature-error"

_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
# RFC 9421's nonce is any sf-string: visible ASCII here, and long enough to be unguessable.
_RFC9421_NONCE_RE = re.compile(r"[!-~]{16,128}")
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
    # RFC 9421 (scheme RFC9421) only:
    "not-covered",  # the signature doesn't cover a component the policy requires (or content-digest for a body)
    "bad-digest",  # content-digest is not the digest of the body Envoy sent
    "bad-algorithm",  # the `alg` parameter names another algorithm than the key's
    # Either scheme, nonceStore Redis: the shared nonce store can't be reached (503, not 401).
    "replay-store-unavailable",
)
SCHEMES = ("Meshgate", "RFC9421")
NONCE_STORES = ("Memory", "Redis")


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
    keys: Mapping[str, bytes]  # key id -> HMAC key, or an ed25519 public key's 32 raw bytes
    headers: tuple[str, ...] = ()  # signed headers, lower case, in signing order
    max_skew_s: int = 300
    sign_body: bool = True
    scheme: str = "Meshgate"  # or "RFC9421"
    components: tuple[str, ...] = ()  # RFC9421: derived components a signature must cover
    algorithms: Mapping[str, str] = field(default_factory=dict)  # RFC9421: key id -> algorithm (default hmac-sha256)
    nonce_store: str = "Memory"  # or "Redis": nonces shared by every companion
    failure_mode_allow: bool = False  # what a request gets when the nonce store is unreachable
    # Key objects ready to verify with (ed25519 public keys parsed once, not per request).
    verify_keys: dict[str, object] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.verify_keys = {}
        for key_id, key in self.keys.items():
            if self.algorithms.get(key_id, rfc9421.HMAC_SHA256) == rfc9421.ED25519:
                from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

                self.verify_keys[key_id] = Ed25519PublicKey.from_public_bytes(key)
            else:
                self.verify_keys[key_id] = key

    @property
    def replay_scope(self) -> str:
        """What nonces are remembered under: the policy's namespace/name, without the digest of its
        settings that ends its name (a changed setting must not forget the nonces seen)."""
        return self.name.rsplit("/", 1)[0] if self.name.count("/") >= 2 else self.name


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


@dataclass(frozen=True, slots=True)
class NonceClaim:
    """A nonce still to be claimed in the shared store (nonceStore Redis) before the request passes:
    `key` unseen, it is set with an expiry of `ttl_s` seconds (as long as its timestamp could be
    accepted); already there, the request is a replay."""

    key: str
    ttl_s: int


NONCE_KEY_PREFIX = "meshgate:nonce"


@dataclass
class Verdict:
    ok: bool
    reason: str = ""  # one of REASONS when not ok
    key_id: str = ""
    claim: NonceClaim | None = None  # set when ok and the nonce is for the shared store to check
    policy: Policy | None = None


@dataclass
class Verifier:
    """Verifies requests against the policies currently configured."""

    policies: Mapping[str, Policy] = field(default_factory=dict)
    replay: ReplayCache = field(default_factory=ReplayCache)

    def verify(self, policy_name: str, *, method: str, path: str, headers: Mapping[str, str],
               body: bytes | None, host: str | None = None, now: float | None = None,
               scheme: str = "http") -> Verdict:
        """`path` is the request's :path (path and query); `headers` lower-case names; `host` the
        authority (signed as header `host`; from `headers` if None); `body` None when Envoy didn't
        send it; `scheme` the request's (RFC 9421's @scheme and @target-uri)."""
        policy = self.policies.get(policy_name)
        if policy is None:
            return Verdict(False, "unknown-policy")
        if policy.scheme == "RFC9421":
            return self._verify_rfc9421(policy, rfc9421.Request(method, path, host or headers.get("host", ""), scheme,
                                                                headers, body), now)
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
        return self._replay(policy, key_id, nonce, int(ts), now)

    def _replay(self, policy: Policy, key_id: str, nonce: str, created: int, now: float) -> Verdict:
        """The last step of both schemes, for a valid signature within the window: the nonce must
        be new. A nonce is remembered until its timestamp leaves the window (after that the clock
        refuses it anyway)."""
        expires = created + policy.max_skew_s + 1
        if policy.nonce_store == "Redis":
            from urllib.parse import quote

            key = f"{NONCE_KEY_PREFIX}:{quote(policy.replay_scope, safe='')}:{quote(key_id, safe='')}:{quote(nonce, safe='')}"
            return Verdict(True, "", key_id, NonceClaim(key, max(int(expires - now), 1)), policy)
        if not self.replay.check_and_add(policy.replay_scope, key_id, nonce, expires, now):
            return Verdict(False, "replayed", key_id, policy=policy)
        return Verdict(True, "", key_id, policy=policy)

    def _verify_rfc9421(self, policy: Policy, request: rfc9421.Request, now: float | None) -> Verdict:
        """RFC 9421 (meshgate.edge.rfc9421): the first signature whose keyid is a key of the policy
        is checked (one signature verification per request, whatever a client sends); it must
        cover the policy's components and headers (and content-digest when there is a body to
        sign), carry `created` and a `nonce`, and verify under that key."""
        try:
            signatures = rfc9421.signatures_of(request.headers)
        except rfc9421.StructuredFieldError:
            return Verdict(False, "malformed", policy=policy)
        if not signatures:
            return Verdict(False, "missing-signature", policy=policy)
        signature = next((s for s in signatures if s.key_id is not None and s.key_id in policy.keys), None)
        if signature is None:
            named = next((s.key_id for s in signatures if s.key_id), None)
            return Verdict(False, "unknown-key" if named else "malformed", (named or "")[:64], policy=policy)
        key_id = signature.key_id or ""
        algorithm = policy.algorithms.get(key_id, rfc9421.HMAC_SHA256)
        params = signature.params
        created, expires, nonce, alg = params.get("created"), params.get("expires"), params.get("nonce"), params.get("alg")
        if (type(created) is not int or (expires is not None and type(expires) is not int)
                or not isinstance(nonce, str) or not _RFC9421_NONCE_RE.fullmatch(nonce)
                or (alg is not None and not isinstance(alg, str))):
            return Verdict(False, "malformed", key_id, policy=policy)
        if alg is not None and alg != algorithm:
            return Verdict(False, "bad-algorithm", key_id, policy=policy)
        covered = set(signature.components)
        if policy.sign_body and request.body is None:
            return Verdict(False, "body-unavailable", key_id, policy=policy)
        body_covered = policy.sign_body and bool(request.body)
        if (any(c not in covered for c in policy.components) or any(h not in covered for h in policy.headers)
                or (body_covered and rfc9421.CONTENT_DIGEST_HEADER not in covered)):
            return Verdict(False, "not-covered", key_id, policy=policy)
        base = rfc9421.signature_base(signature, request)
        if isinstance(base, str):
            return Verdict(False, "missing-header", key_id, policy=policy)
        if not rfc9421.verify_signature(algorithm, policy.verify_keys[key_id], base, signature.value):
            return Verdict(False, "bad-signature", key_id, policy=policy)
        if (policy.sign_body and rfc9421.CONTENT_DIGEST_HEADER in covered
                and not rfc9421.digest_matches(request.headers[rfc9421.CONTENT_DIGEST_HEADER], request.body or b"")):
            return Verdict(False, "bad-digest", key_id, policy=policy)
        now = time.time() if now is None else now
        if abs(now - created) > policy.max_skew_s or (expires is not None and now > expires):
            return Verdict(False, "stale-timestamp", key_id, policy=policy)
        return self._replay(policy, key_id, nonce, created, now)


__all__ = ["ALGORITHM", "NONCE_STORES", "NonceClaim", "Policy", "REASONS", "ReplayCache", "SCHEMES", "Verdict",
           "Verifier", "canonical_text", "sign", "sign_request"]
