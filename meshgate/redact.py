"""Secrets out of printed output: `meshgate translate` shows the Envoy resources a config
becomes, and those carry TLS keys (SDS secrets with the key inline), API keys and htpasswd
hashes (inline in routes: Envoy's api_key_auth and basic_auth filters have no SDS). Printing them to a
terminal, a CI log or a bug report leaks them, so they are replaced unless asked for.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

__all__ = ["REDACTED", "redact_secrets", "redact_text"]

REDACTED = "[redacted]"

# Fields of Envoy messages whose DataSource holds key material (TlsCertificate.private_key and
# .password, GenericSecret.secret, TlsSessionTicketKeys.keys, basic auth's htpasswd `users`); a
# `filename` there is kept.
SECRET_FIELDS = frozenset({"private_key", "password", "secret", "keys", "users"})
_INLINE = frozenset({"inline_bytes", "inline_string"})
# A PEM private key of any type: RSA, EC, ENCRYPTED, OPENSSH, plain PKCS#8.
_PEM_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)
_PEM_KEY_BYTES = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


def redact_text(text: str) -> str:
    """`text` with every PEM private key block replaced by "[redacted]"."""
    return _PEM_KEY.sub(REDACTED, text) if "PRIVATE KEY-----" in text else text


def redact_secrets(value: Any, _secret: bool = False) -> Any:
    """A copy of rendered resources (plain dicts and lists, as `resources_to_dict` makes them)
    with private keys replaced by "[redacted]": inline data under a secret field, PEM key
    blocks in any string, and base64 inline bytes that decode to a PEM key."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if _secret and key in _INLINE:
                out[key] = REDACTED
            elif key == "inline_bytes" and isinstance(item, str) and _is_encoded_key(item):
                out[key] = REDACTED
            elif key == "credentials" and isinstance(item, list):
                # api_key_auth's keys: the client ids stay, the keys go.
                out[key] = [{**c, "key": REDACTED} if isinstance(c, dict) and "key" in c else c for c in item]
            else:
                out[key] = redact_secrets(item, key in SECRET_FIELDS)
        return out
    if isinstance(value, list):
        return [redact_secrets(item, _secret) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def _is_encoded_key(text: str) -> bool:
    try:
        return bool(_PEM_KEY_BYTES.search(base64.b64decode(text, validate=True)))
    except (binascii.Error, ValueError):
        return False
