"""The edge companion's config as an xDS resource type of meshgate's own.

The companion gets its policies the way Envoy gets its listeners: from meshgate's ADS server,
as a node of its own group (`node.cluster` = `EDGE_GROUP`), subscribed to `SIGNATURE_CONFIG` and
`RATE_LIMIT_CONFIG` on one stream.
Both are full-state types (like LDS/CDS): each response is the whole set, a policy missing from
it is deleted.

The message is defined here, at run time, from a FileDescriptorProto (no .proto file, no
protoc), with protobuf's well-known `Struct` for the settings:

    package meshgate.edge.v1;
    message SignatureConfig {
      string name = 1;                    // the policy name Envoy sends as a context extension
      google.protobuf.Struct settings = 2; // {"headers": [..], "maxSkewSeconds": n, "signBody": b,
                                           //  "scheme": "Meshgate"|"RFC9421", "nonceStore": "Memory"|"Redis",
                                           //  "failureModeAllow": b, "components": [..],
                                           //  "keyAlgorithms": {key id: "ed25519"}}
      map<string, bytes> keys = 3;         // key id -> HMAC key, or an ed25519 public key's 32 bytes
    }

One resource per policy, named by the policy. Keys are `bytes`, never in a Struct (a Struct
would hold them as JSON strings, and they would show in any JSON dump of the config).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2
from google.protobuf import message_factory
from google.protobuf.message import Message

from meshgate import ir
from meshgate.edge.signing import NONCE_STORES, SCHEMES, Policy

EDGE_GROUP = "meshgate-edge"  # the node group (node.cluster) of edge companions
_PACKAGE = "meshgate.edge.v1"
SIGNATURE_CONFIG = f"type.googleapis.com/{_PACKAGE}.SignatureConfig"
# The ext_authz context extensions (set per route by Envoy's config, sent with each check): the
# route's policy, and the route's name (for the companion's metrics and logs).
POLICY_KEY = "meshgate.io/signature-policy"
ROUTE_KEY = "meshgate.io/route"


def _build_message() -> type[Message]:
    pool = descriptor_pool.Default()
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.SignatureConfig"))
    except KeyError:
        pass
    f = descriptor_pb2.FileDescriptorProto(name="meshgate/edge/v1/signature.proto", package=_PACKAGE,
                                           syntax="proto3", dependency=["google/protobuf/struct.proto"])
    m = f.message_type.add(name="SignatureConfig")
    FD = descriptor_pb2.FieldDescriptorProto
    m.field.add(name="name", number=1, type=FD.TYPE_STRING, label=FD.LABEL_OPTIONAL)
    m.field.add(name="settings", number=2, type=FD.TYPE_MESSAGE, label=FD.LABEL_OPTIONAL,
                type_name=".google.protobuf.Struct")
    entry = m.nested_type.add(name="KeysEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=FD.TYPE_STRING, label=FD.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=FD.TYPE_BYTES, label=FD.LABEL_OPTIONAL)
    m.field.add(name="keys", number=3, type=FD.TYPE_MESSAGE, label=FD.LABEL_REPEATED,
                type_name=f".{_PACKAGE}.SignatureConfig.KeysEntry")
    _ = struct_pb2.Struct  # the dependency is in the pool
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.SignatureConfig"))


SignatureConfig = _build_message()

# Global rate limits (BackendTrafficPolicy rateLimit.global): one resource per rule, named by its
# rule id ("<route>#<index>", the value of the descriptors' first entry), so that the companion's
# rate-limit service (meshgate.edge.ratelimit) knows each descriptor's limit:
#
#     message RateLimitConfig {
#       string name = 1;                     // the rule id
#       google.protobuf.Struct settings = 2; // {"requests": n, "seconds": s, "mode": "Exact"|"Budget",
#     }                                      //  "entries": [{"key": k, "value": v}, {"key": k} (any value)]}
RATE_LIMIT_CONFIG = f"type.googleapis.com/{_PACKAGE}.RateLimitConfig"
TYPE_URLS = (SIGNATURE_CONFIG, RATE_LIMIT_CONFIG)  # what a companion subscribes to, in this order


def _build_rate_limit_message() -> type[Message]:
    pool = descriptor_pool.Default()
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.RateLimitConfig"))
    except KeyError:
        pass
    f = descriptor_pb2.FileDescriptorProto(name="meshgate/edge/v1/ratelimit.proto", package=_PACKAGE,
                                           syntax="proto3", dependency=["google/protobuf/struct.proto"])
    m = f.message_type.add(name="RateLimitConfig")
    FD = descriptor_pb2.FieldDescriptorProto
    m.field.add(name="name", number=1, type=FD.TYPE_STRING, label=FD.LABEL_OPTIONAL)
    m.field.add(name="settings", number=2, type=FD.TYPE_MESSAGE, label=FD.LABEL_OPTIONAL,
                type_name=".google.protobuf.Struct")
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.RateLimitConfig"))


RateLimitConfig = _build_rate_limit_message()


def global_rate_limits(listeners: Iterable[ir.Listener]) -> dict[str, RateLimitConfig]:
    """Every rule of a global rate limit in force on some route, by rule id."""
    from meshgate.xds.translator.filters.ratelimit import rule_descriptor, rule_id  # (no import cycle)

    out: dict[str, Message] = {}
    for listener in listeners:
        for vhost in listener.virtual_hosts:
            for route in vhost.routes:
                g = route.shaping.global_rate_limit if route.shaping is not None else None
                if g is None:
                    continue
                for i, rule in enumerate(g.rules):
                    name = rule_id(route, i)
                    if name in out:
                        continue
                    _, entries = rule_descriptor(route, i, rule)
                    msg = RateLimitConfig(name=name)
                    msg.settings.update({"requests": rule.requests, "seconds": rule.interval_s, "mode": g.mode,
                                         "entries": [{"key": k} if v is None else {"key": k, "value": v}
                                                     for k, v in entries]})
                    out[name] = msg
    return out


def needs_companion(listeners: Iterable[ir.Listener]) -> bool:
    """Whether some route needs the edge companion (a signature to verify, a global limit to count)."""
    listeners = tuple(listeners)
    return bool(signature_policies(listeners)) or bool(global_rate_limits(listeners))


def signature_policies(listeners: Iterable[ir.Listener]) -> dict[str, ir.RequestSignature]:
    """Every requestSignature in force on some route, by policy name."""
    out: dict[str, ir.RequestSignature] = {}
    for listener in listeners:
        for vhost in listener.virtual_hosts:
            for route in vhost.routes:
                sig = route.security.signature if route.security is not None else None
                if sig is not None:
                    out.setdefault(sig.policy, sig)
    return out


def companion_resources(listeners: Iterable[ir.Listener]) -> dict[str, dict[str, Message]]:
    """The edge companion's resources (type URL -> name -> message) for a translation's IR."""
    listeners = tuple(listeners)
    out: dict[str, Message] = {}
    for name, sig in sorted(signature_policies(listeners).items()):
        msg = SignatureConfig(name=name)
        msg.settings.update({"headers": list(sig.headers), "maxSkewSeconds": sig.max_skew_s,
                             "signBody": sig.max_body_bytes > 0, "scheme": sig.scheme, "nonceStore": sig.nonce_store,
                             "failureModeAllow": sig.failure_mode_allow, "components": list(sig.components),
                             # key id -> algorithm, for keys that aren't HMAC (ed25519 public keys)
                             "keyAlgorithms": dict(sig.algorithms)})
        for key_id, key in sig.keys:
            msg.keys[key_id] = key
        out[name] = msg
    return {SIGNATURE_CONFIG: out, RATE_LIMIT_CONFIG: dict(sorted(global_rate_limits(listeners).items()))}


def policies_from(resources: Mapping[str, Message]) -> dict[str, Policy]:
    """The companion's side: resources received over ADS -> the verifier's policies."""
    out = {}
    for name, msg in resources.items():
        settings = msg.settings
        scheme = str(settings["scheme"]) if "scheme" in settings else "Meshgate"
        store = str(settings["nonceStore"]) if "nonceStore" in settings else "Memory"
        if scheme not in SCHEMES or store not in NONCE_STORES:
            raise ValueError(f"policy {name}: unknown scheme {scheme!r} or nonce store {store!r}")
        algorithms = {str(k): str(v) for k, v in settings["keyAlgorithms"].items()} if "keyAlgorithms" in settings else {}
        try:
            out[name] = Policy(
                name=name, keys=dict(msg.keys),
                headers=tuple(str(h) for h in settings["headers"]) if "headers" in settings else (),
                max_skew_s=int(settings["maxSkewSeconds"]) if "maxSkewSeconds" in settings else 300,
                sign_body=bool(settings["signBody"]) if "signBody" in settings else True,
                scheme=scheme, nonce_store=store, algorithms=algorithms,
                components=tuple(str(c) for c in settings["components"]) if "components" in settings else (),
                failure_mode_allow=bool(settings["failureModeAllow"]) if "failureModeAllow" in settings else False)
        except ValueError as exc:  # an ed25519 key that isn't 32 bytes: NACKed, the last good config stays
            raise ValueError(f"policy {name}: bad key: {type(exc).__name__}") from None
    return out


__all__ = ["EDGE_GROUP", "RATE_LIMIT_CONFIG", "SIGNATURE_CONFIG", "TYPE_URLS", "RateLimitConfig", "SignatureConfig",
           "companion_resources", "global_rate_limits", "needs_companion", "policies_from"]
