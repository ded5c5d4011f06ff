"""RFC 9421 HTTP Message Signatures (SecurityPolicy `requestSignature` with `scheme: RFC9421`):
the verifier's side, with no gRPC and no Envoy in it.

A client sends two headers (RFC 9421 section 4), both RFC 8941 structured-field dictionaries
keyed by a label of its choosing:

    Signature-Input: sig1=("@method" "@authority" "@path" "@query" "content-digest");created=1767225600;keyid="partner-1";nonce="..."
    Signature: sig1=:<base64 of the signature bytes>:

The signature is over the *signature base* (section 2.5): one line per covered component,
`"<name>": <value>`, then `"@signature-params": <the inner list above, re-serialized>`, joined
by LF. The algorithm is the key's (hmac-sha256 for a shared key, ed25519 for a public key); an
`alg` parameter, if sent, must name it. Bodies are covered through `content-digest` (RFC 9530),
which the companion checks against the bytes Envoy sent.

The structured-field parser here is a small one of our own (only what the two fields and
Content-Digest use), so the tests can sign with an independent implementation
(`http-message-signatures`, which uses `http-sf`) and compare.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

HMAC_SHA256 = "hmac-sha256"
ED25519 = "ed25519"
ALGORITHMS = (HMAC_SHA256, ED25519)
SIGNATURE_INPUT_HEADER = "signature-input"
SIGNATURE_HEADER = "signature"
CONTENT_DIGEST_HEADER = "content-digest"
# The derived components (RFC 9421 section 2.2) the companion can resolve from a CheckRequest.
DERIVED = ("@method", "@target-uri", "@authority", "@scheme", "@request-target", "@path", "@query")
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
MAX_NONCE_LENGTH = 128
MAX_HEADER_LENGTH = 8192  # a Signature-Input or Signature longer than this is refused unparsed


class StructuredFieldError(ValueError):
    """A header that is not a valid RFC 8941 structured field (of the kind expected)."""


# -- RFC 8941 structured fields: the subset RFC 9421 and RFC 9530 use ----------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """An sf-token (kept apart from a string: they serialize differently)."""

    value: str


_KEY_RE = re.compile(r"[a-z*][a-z0-9_.*-]*")
_TOKEN_RE = re.compile(r"[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*")
_NUMBER_RE = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,3})?")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/=]*")
_STRING_RE = re.compile(r'"((?:[ !#-\[\]-~]|\\["\\])*)"')
_UNESCAPE_RE = re.compile(r"\\(.)")


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_HEADER_LENGTH:
            raise StructuredFieldError("field too long")
        self.s, self.i = text, 0

    def _sp(self) -> None:
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1

    def _ows(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def dictionary(self) -> dict[str, tuple[object, dict]]:
        out: dict[str, tuple[object, dict]] = {}
        self._sp()
        while self.i < len(self.s):
            key = self._key()
            if self._peek() == "=":
                self.i += 1
                value = self._member()
            else:
                value = (True, self._params())
            out[key] = value  # a key seen twice: the last one (RFC 8941 section 4.2.2)
            self._ows()
            if self.i >= len(self.s):
                return out
            if self._peek() != ",":
                raise StructuredFieldError("expected ','")
            self.i += 1
            self._ows()
            if self.i >= len(self.s):
                raise StructuredFieldError("trailing ','")
        return out

    def _member(self) -> tuple[object, dict]:
        if self._peek() == "(":
            return self._inner_list()
        return self._bare_item(), self._params()

    def _inner_list(self) -> tuple[object, dict]:
        self.i += 1  # "("
        items: list[tuple[object, dict]] = []
        while True:
            self._sp()
            if self._peek() == ")":
                self.i += 1
                return items, self._params()
            items.append((self._bare_item(), self._params()))
            if self._peek() not in (" ", ")"):
                raise StructuredFieldError("expected ' ' or ')' in an inner list")

    def _params(self) -> dict[str, object]:
        params: dict[str, object] = {}
        while self._peek() == ";":
            self.i += 1
            self._sp()
            key = self._key()
            value: object = True
            if self._peek() == "=":
                self.i += 1
                value = self._bare_item()
            params[key] = value
        return params

    def _key(self) -> str:
        m = _KEY_RE.match(self.s, self.i)
        if m is None:
            raise StructuredFieldError("expected a key")
        self.i = m.end()
        return m.group()

    def _bare_item(self) -> object:
        c = self._peek()
        if c == '"':
            return self._string()
        if c == ":":
            end = self.s.find(":", self.i + 1)
            if end < 0 or not _BASE64_RE.fullmatch(self.s, self.i + 1, end):
                raise StructuredFieldError("bad byte sequence")
            raw = self.s[self.i + 1:end]
            self.i = end + 1
            try:
                return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
            except ValueError:
                raise StructuredFieldError("bad byte sequence") from None
        if c == "?":
            if self.s[self.i + 1:self.i + 2] not in ("0", "1"):
                raise StructuredFieldError("bad boolean")
            self.i += 2
            return self.s[self.i - 1] == "1"
        if c == "-" or c.isdigit():
            m = _NUMBER_RE.match(self.s, self.i)
            if m is None:
                raise StructuredFieldError("bad number")
            self.i = m.end()
            return float(m.group()) if m.group(1) else int(m.group())
        m = _TOKEN_RE.match(self.s, self.i)
        if m is None:
            raise StructuredFieldError("expected an item")
        self.i = m.end()
        return Token(m.group())

    def _string(self) -> str:
        # One regex match, not a loop per character: printable ASCII, with \" and \\ escapes.
        m = _STRING_RE.match(self.s, self.i)
        if m is None:
            raise StructuredFieldError("bad string")
        self.i = m.end()
        value = m.group(1)
        return _UNESCAPE_RE.sub(r"\1", value) if "\\" in value else value


def parse_dictionary(text: str) -> dict[str, tuple[object, dict]]:
    """An sf-dictionary: member name -> (value, parameters); an inner list is a list of
    (item, parameters)."""
    p = _Parser(text.strip(" "))
    return p.dictionary()


def serialize_item(value: object) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Token):
        return value.value
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode() + ":"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise StructuredFieldError(f"cannot serialize {type(value).__name__}")


def serialize_params(params: Mapping[str, object]) -> str:
    return "".join(f";{k}" if v is True else f";{k}={serialize_item(v)}" for k, v in params.items())


def serialize_inner_list(items: list[tuple[object, dict]], params: Mapping[str, object]) -> str:
    return "(" + " ".join(serialize_item(v) + serialize_params(p) for v, p in items) + ")" + serialize_params(params)


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """What the signature base is made of, as Envoy's CheckRequest gives it."""

    method: str
    path: str  # :path, with the query
    host: str  # the authority
    scheme: str  # "http" or "https"
    headers: Mapping[str, str]  # lower-case names
    body: bytes | None = None  # None when Envoy didn't send it


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature of a request, parsed: its label, covered components and parameters."""

    label: str
    components: tuple[str, ...]
    params: dict[str, object]
    value: bytes
    signature_params: str  # the serialized inner list, the last line of the base

    @property
    def key_id(self) -> str | None:
        k = self.params.get("keyid")
        return k if isinstance(k, str) else None


def signatures_of(headers: Mapping[str, str]) -> list[Signature] | None:
    """The request's signatures, in Signature-Input order; None if it has none; raises
    StructuredFieldError if a field is malformed, a label has no signature, or a component has
    parameters (`;sf`, `;key`, `;req`, ...: not supported)."""
    inputs, values = headers.get(SIGNATURE_INPUT_HEADER), headers.get(SIGNATURE_HEADER)
    if inputs is None or values is None:
        return None
    parsed_inputs, parsed_values = parse_dictionary(inputs), parse_dictionary(values)
    out = []
    for label, (items, params) in parsed_inputs.items():
        value = parsed_values.get(label, (None, {}))[0]
        if not isinstance(items, list) or not isinstance(value, bytes):
            raise StructuredFieldError(f"signature {label!r} is not an inner list with a byte sequence")
        components = []
        for item, item_params in items:
            if not isinstance(item, str) or item_params or item != item.lower():
                raise StructuredFieldError("a component is not a plain lower-case string")
            components.append(item)
        if len(set(components)) != len(components):
            raise StructuredFieldError("a component is covered twice")
        out.append(Signature(label, tuple(components), params, value, serialize_inner_list(items, params)))
    return out


def component_value(name: str, request: Request) -> str | None:
    """A covered component's value (RFC 9421 section 2.1, 2.2), or None if the request lacks it."""
    if name.startswith("@"):
        path, sep, query = request.path.partition("?")
        authority = request.host.lower()
        if name == "@method":
            return request.method
        if name == "@authority":
            return authority
        if name == "@scheme":
            return request.scheme.lower()
        if name == "@target-uri":
            return f"{request.scheme.lower()}://{authority}{request.path}"
        if name == "@request-target":
            return request.path
        if name == "@path":
            return path or "/"
        if name == "@query":
            return "?" + query
        return None  # @query-param, @status, ...: not supported
    value = request.headers.get(name)
    # Field values trimmed of surrounding spaces; Envoy has already joined repeated fields.
    return value.strip(" \t") if value is not None else None


def signature_base(signature: Signature, request: Request) -> bytes | str:
    """The signature base (bytes), or the name of the first component the request lacks (str)."""
    lines = []
    for name in signature.components:
        value = component_value(name, request)
        if value is None:
            return name
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {signature.signature_params}')
    return "\n".join(lines).encode()


def verify_signature(algorithm: str, key: object, base: bytes, value: bytes) -> bool:
    """Whether `value` is the signature of `base` under `key` (bytes for hmac-sha256, a
    cryptography Ed25519PublicKey for ed25519). HMACs are compared in constant time."""
    if algorithm == HMAC_SHA256:
        return hmac.compare_digest(hmac.new(key, base, hashlib.sha256).digest(), value)  # type: ignore[arg-type]
    if algorithm == ED25519:
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(value, base)  # type: ignore[attr-defined]
        except InvalidSignature:
            return False
        return True
    return False


def digest_matches(field: str, body: bytes) -> bool:
    """Whether a Content-Digest field (RFC 9530) holds a sha-256 or sha-512 digest of `body`
    and no supported digest that differs (others, unknown to us, are ignored)."""
    try:
        members = parse_dictionary(field)
    except StructuredFieldError:
        return False
    checked = False
    for name, (value, _) in members.items():
        hasher = _DIGESTS.get(name)
        if hasher is None:
            continue
        if not isinstance(value, bytes) or not hmac.compare_digest(hasher(body).digest(), value):
            return False
        checked = True
    return checked


def content_digest(body: bytes) -> str:
    """A Content-Digest value for `body` (sha-256), as a client sends it."""
    return "sha-256=" + serialize_item(hashlib.sha256(body).digest())


def load_public_key(text: str | bytes):  # noqa: ANN201 - an Ed25519PublicKey
    """An ed25519 public key from PEM (SubjectPublicKeyInfo) or from base64 (standard or URL-safe)
    of its 32 raw bytes; ValueError if it is neither."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = text.encode() if isinstance(text, str) else text
    if raw.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(raw.strip())
        except (ValueError, TypeError):
            raise ValueError("not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM public key is not an ed25519 key")
        return key
    compact = raw.strip().replace(b"-", b"+").replace(b"_", b"/")
    try:
        decoded = base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
    except ValueError:
        raise ValueError("neither PEM nor base64") from None
    if len(decoded) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(decoded)


def public_key_bytes(key) -> bytes:  # noqa: ANN001 - an Ed25519PublicKey
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


__all__ = ["ALGORITHMS", "DERIVED", "ED25519", "HMAC_SHA256", "Request", "Signature", "StructuredFieldError",
           "component_value", "content_digest", "digest_matches", "load_public_key", "parse_dictionary",
           "public_key_bytes", "signature_base", "signatures_of", "verify_signature"]
