"""From loaded YAML documents to a validated `Config`: schemas first, then references.

Stage 1 (per document): `apiVersion` + `kind` pick a model from `models.KINDS`; pydantic checks
fields and types. Stage 2 (across documents): duplicate names, parentRefs to Gateways and their
listeners, backendRefs to Backends (across namespaces only with a ReferenceGrant), TLS sources,
port and hostname conflicts, and routes whose matches collide. Every problem becomes a
`ConfigError` naming the file, line and field; validation never stops at the first one.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from meshgate.errors import ConfigError, ConfigErrors, format_field_path
from meshgate.api.loader import DocumentCache, SourceDocument, load_documents
from meshgate.api.models import (
    CERT_FILE_OPTION,
    KEY_FILE_OPTION,
    KINDS,
    Backend,
    BackendRef,
    Gateway,
    GRPCRoute,
    HTTPRoute,
    Listener,
    MeshgateHTTPRoute,
    ParentReference,
    ReferenceGrant,
    Resource,
    Secret,
)

AnyHTTPRoute = HTTPRoute | MeshgateHTTPRoute
AnyRoute = HTTPRoute | MeshgateHTTPRoute | GRPCRoute


@dataclass(frozen=True)
class TLSCertificate:
    """A certificate + key for one HTTPS listener: PEM bytes, or files Envoy reads itself."""

    cert_file: str | None = None
    key_file: str | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None


@dataclass(frozen=True)
class Attachment:
    """One route attached to one Gateway listener, with the hostnames it serves there."""

    gateway: Gateway
    listener: Listener
    hostnames: tuple[str, ...]  # effective hostnames; ("*",) when any host


@dataclass
class Config:
    """A complete, validated configuration: the input of translation."""

    gateways: list[Gateway] = field(default_factory=list)
    http_routes: list[AnyHTTPRoute] = field(default_factory=list)
    grpc_routes: list[GRPCRoute] = field(default_factory=list)
    backends: dict[tuple[str, str], Backend] = field(default_factory=dict)  # (namespace, name)
    # (gateway ns, gateway name, listener name) -> certificate
    certificates: dict[tuple[str, str, str], TLSCertificate] = field(default_factory=dict)
    # id(route) -> the listeners it is attached to
    attachments: dict[int, list[Attachment]] = field(default_factory=dict)
    sources: dict[int, SourceDocument] = field(default_factory=dict)  # id(resource) -> document

    def source(self, resource: Resource) -> SourceDocument:
        return self.sources[id(resource)]

    def backend_for(self, route: Resource, ref: BackendRef) -> Backend:
        return self.backends[(ref.namespace or route.metadata.namespace, ref.name)]

    def summary(self) -> dict[str, int]:
        return {
            "gateways": len(self.gateways),
            "listeners": sum(len(g.spec.listeners) for g in self.gateways),
            "routes": len(self.http_routes) + len(self.grpc_routes),
            "backends": len(self.backends),
        }


def load_config(
    paths: Sequence[str], env: str | None = None, environ: Mapping[str, str] | None = None,
    cache: DocumentCache | None = None,
) -> Config:
    """Load, validate and cross-check config files. Raises `ConfigErrors` listing every problem.

    With a `cache`, files unchanged since the last call are neither re-read nor re-validated.
    """
    docs, errors = load_documents(paths, env=env, environ=environ, cache=cache)
    # A document that failed to load may hold the Gateway or Backend others refer to: checking
    # references then would bury the real problem under "not found" errors.
    config, more = build_config(docs, check_references=not errors)
    errors = sorted(set(errors + more), key=lambda e: (e.file, e.line, e.field, e.message))
    if errors:
        raise ConfigErrors(errors)
    return config


def parse_document(doc: SourceDocument) -> tuple[Resource | None, list[ConfigError]]:
    """Validate one document against the schema its apiVersion and kind select (once per document)."""
    if doc.parsed is None:
        doc.parsed = _parse_document(doc)
    return doc.parsed


def _parse_document(doc: SourceDocument) -> tuple[Resource | None, list[ConfigError]]:
    data = doc.data
    api_version, kind = data.get("apiVersion"), data.get("kind")
    if not isinstance(api_version, str) or not api_version:
        return None, [doc.error(("apiVersion",), "required field is missing")]
    if not isinstance(kind, str) or not kind:
        return None, [doc.error(("kind",), "required field is missing")]
    model = KINDS.get((api_version, kind))
    if model is None:
        known = ", ".join(sorted({f"{v} {k}" for v, k in KINDS}))
        return None, [doc.error(("kind",), f"unknown kind {kind!r} for apiVersion {api_version!r} (known: {known})")]
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, [doc.error(tuple(e["loc"]), _message(e)) for e in exc.errors()]


def _message(error: Mapping[str, Any]) -> str:
    """A pydantic error in words a YAML author understands."""
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if kind == "string_pattern_mismatch":
        return f"{error.get('input')!r} has the wrong format (expected pattern {error['ctx']['pattern']})"
    return msg[0].lower() + msg[1:]


def build_config(docs: Iterable[SourceDocument], check_references: bool = True) -> tuple[Config, list[ConfigError]]:
    """Schema-validate every document, then (if all are valid) check references between them."""
    checker = _Checker()
    for doc in docs:
        resource, errs = parse_document(doc)
        checker.errors.extend(errs)
        if resource is not None:
            checker.add(resource, doc)
    if check_references and not checker.errors:
        checker.check()
    return checker.config, checker.errors


class _Checker:
    """Cross-document validation; collects errors instead of raising."""

    def __init__(self) -> None:
        self.config = Config()
        self.errors: list[ConfigError] = []
        self.by_key: dict[tuple[str, str, str, str], Resource] = {}
        self.grants: list[ReferenceGrant] = []
        self.secrets: dict[tuple[str, str], Secret] = {}

    def err(self, resource: Resource, path: tuple[str | int, ...], message: str) -> None:
        self.errors.append(self.config.source(resource).error(path, message))

    def add(self, resource: Resource, doc: SourceDocument) -> None:
        self.config.sources[id(resource)] = doc
        key = (resource.api_version.split("/")[0], resource.kind, resource.metadata.namespace, resource.metadata.name)
        if key in self.by_key:
            first = self.config.source(self.by_key[key])
            self.err(resource, ("metadata", "name"), f"duplicate {resource.ref}, first defined at {first.file}:{first.line}")
            return
        self.by_key[key] = resource
        ns_name = (resource.metadata.namespace, resource.metadata.name)
        if isinstance(resource, Gateway):
            self.config.gateways.append(resource)
        elif isinstance(resource, (HTTPRoute, MeshgateHTTPRoute)):
            self.config.http_routes.append(resource)
        elif isinstance(resource, GRPCRoute):
            self.config.grpc_routes.append(resource)
        elif isinstance(resource, Backend):
            self.config.backends[ns_name] = resource
        elif isinstance(resource, Secret):
            self.secrets[ns_name] = resource
        elif isinstance(resource, ReferenceGrant):
            self.grants.append(resource)

    def check(self) -> None:
        ordered = lambda rs: sorted(rs, key=lambda r: (r.metadata.namespace, r.metadata.name))  # noqa: E731
        self.config.gateways = ordered(self.config.gateways)
        self.config.http_routes = ordered(self.config.http_routes)
        self.config.grpc_routes = ordered(self.config.grpc_routes)
        self.check_ports()
        for gateway in self.config.gateways:
            self.check_tls(gateway)
        for route in [*self.config.http_routes, *self.config.grpc_routes]:
            self.check_parents(route)
            self.check_backends(route)
        self.check_route_conflicts()

    # -- Gateways ---------------------------------------------------------------------------

    def check_ports(self) -> None:
        # Envoy has one listener per port: every Gateway listener on a port must agree on the
        # protocol, and (port, hostname) must be unique so that a request has one home.
        seen: dict[tuple[int, str | None], tuple[Gateway, int]] = {}
        protocol: dict[int, str] = {}
        for gateway in self.config.gateways:
            for i, listener in enumerate(gateway.spec.listeners):
                where = ("spec", "listeners", i)
                if protocol.setdefault(listener.port, listener.protocol) != listener.protocol:
                    self.err(gateway, (*where, "protocol"), f"port {listener.port} is already used with protocol {protocol[listener.port]}")
                    continue
                first = seen.setdefault((listener.port, listener.hostname), (gateway, i))
                if first != (gateway, i):
                    other = first[0].spec.listeners[first[1]]
                    self.err(gateway, (*where, "port"), f"port {listener.port} with hostname {listener.hostname or '(any)'} "
                             f"is already used by {first[0].ref} listener {other.name}")

    def check_tls(self, gateway: Gateway) -> None:
        for i, listener in enumerate(gateway.spec.listeners):
            if listener.tls is None:
                continue
            where = ("spec", "listeners", i, "tls")
            key = (gateway.metadata.namespace, gateway.metadata.name, listener.name)
            options = listener.tls.options
            if CERT_FILE_OPTION in options:
                base = os.path.dirname(self.config.source(gateway).file)
                files = {}
                for option in (CERT_FILE_OPTION, KEY_FILE_OPTION):
                    path = os.path.normpath(os.path.join(base, options[option]))
                    if not os.access(path, os.R_OK) or not os.path.isfile(path):
                        self.err(gateway, (*where, "options", option), f"cannot read file {path}")
                    files[option] = os.path.abspath(path)
                problem = None
                if all(os.access(p, os.R_OK) for p in files.values()):
                    with open(files[CERT_FILE_OPTION], "rb") as c, open(files[KEY_FILE_OPTION], "rb") as k:
                        problem = pem_problem(c.read(), k.read())
                if problem:
                    self.err(gateway, (*where, "options"), problem)
                self.config.certificates[key] = TLSCertificate(cert_file=files[CERT_FILE_OPTION], key_file=files[KEY_FILE_OPTION])
                continue
            ref = listener.tls.certificate_refs[0]
            ref_path = (*where, "certificateRefs", 0)
            ns = ref.namespace or gateway.metadata.namespace
            secret = self.secrets.get((ns, ref.name))
            if secret is None:
                self.err(gateway, (*ref_path, "name"), f"Secret {ns}/{ref.name} not found")
                continue
            if ns != gateway.metadata.namespace and not self.granted(gateway, "", "Secret", ns, ref.name):
                self.err(gateway, (*ref_path, "namespace"), f"Secret {ns}/{ref.name} is in another namespace and no ReferenceGrant allows it")
                continue
            cert, key_pem = self.secret_pem(secret)
            if cert is None or key_pem is None:
                self.err(gateway, ref_path, f"Secret {ns}/{ref.name} needs tls.crt and tls.key (data or stringData)")
                continue
            problem = pem_problem(cert, key_pem)
            if problem:
                self.err(gateway, ref_path, f"Secret {ns}/{ref.name}: {problem}")
                continue
            self.config.certificates[key] = TLSCertificate(cert_pem=cert, key_pem=key_pem)

    def secret_pem(self, secret: Secret) -> tuple[bytes | None, bytes | None]:
        def get(name: str) -> bytes | None:
            if name in secret.string_data:
                return secret.string_data[name].encode()
            if name in secret.data:
                try:
                    return base64.b64decode(secret.data[name], validate=True)
                except ValueError:
                    self.err(secret, ("data", name), "not valid base64")
            return None

        return get("tls.crt"), get("tls.key")

    # -- Routes -----------------------------------------------------------------------------

    def check_parents(self, route: AnyRoute) -> None:
        attachments: list[Attachment] = []
        gateways = {(g.metadata.namespace, g.metadata.name): g for g in self.config.gateways}
        for i, ref in enumerate(route.spec.parent_refs):
            where = ("spec", "parentRefs", i)
            ns = ref.namespace or route.metadata.namespace
            gateway = gateways.get((ns, ref.name))
            if gateway is None:
                self.err(route, (*where, "name"), f"Gateway {ns}/{ref.name} not found")
                continue
            listeners = self.matching_listeners(route, gateway, ref, where)
            for listener in listeners:
                hostnames = effective_hostnames(route.spec.hostnames, listener.hostname)
                if hostnames:
                    attachments.append(Attachment(gateway, listener, hostnames))
            if listeners and not any(a.gateway is gateway for a in attachments):
                self.err(route, ("spec", "hostnames"), f"no hostname of this route is served by {gateway.ref} "
                         f"(listener hostnames: {', '.join(sorted({l.hostname or '*' for l in listeners}))})")
        self.config.attachments[id(route)] = attachments

    def matching_listeners(self, route: AnyRoute, gateway: Gateway, ref: ParentReference, where: tuple) -> list[Listener]:
        listeners = list(gateway.spec.listeners)
        if ref.section_name is not None:
            listeners = [l for l in listeners if l.name == ref.section_name]
            if not listeners:
                self.err(route, (*where, "sectionName"), f"{gateway.ref} has no listener named {ref.section_name!r}")
                return []
        if ref.port is not None:
            listeners = [l for l in listeners if l.port == ref.port]
            if not listeners:
                self.err(route, (*where, "port"), f"{gateway.ref} has no listener on port {ref.port}")
                return []
        admitted = [l for l in listeners if l.allowed_routes.namespaces.from_ == "All"
                    or route.metadata.namespace == gateway.metadata.namespace]
        if not admitted:
            self.err(route, (*where, "name"), f"{gateway.ref} only admits routes from namespace {gateway.metadata.namespace}")
        return admitted

    def check_backends(self, route: AnyRoute) -> None:
        for r, rule in enumerate(route.spec.rules):
            for b, ref in enumerate(rule.backend_refs):
                where = ("spec", "rules", r, "backendRefs", b)
                ns = ref.namespace or route.metadata.namespace
                if (ref.group, ref.kind) != ("meshgate.io", "Backend"):
                    self.err(route, (*where, "kind"), f"{ref.kind or 'Service'} {ns}/{ref.name}: only meshgate.io Backends can be "
                             "referenced here (set group: meshgate.io and kind: Backend)")
                    continue
                backend = self.config.backends.get((ns, ref.name))
                if backend is None:
                    self.err(route, (*where, "name"), f"Backend {ns}/{ref.name} not found")
                    continue
                if ns != route.metadata.namespace and not self.granted(route, "meshgate.io", "Backend", ns, ref.name):
                    self.err(route, (*where, "namespace"), f"Backend {ns}/{ref.name} is in another namespace and no ReferenceGrant allows it")
                if isinstance(route, GRPCRoute) and backend.spec.protocol == "HTTP1":
                    self.err(route, (*where, "name"), f"Backend {ns}/{ref.name} speaks HTTP1; a GRPCRoute needs protocol GRPC or HTTP2")

    def granted(self, source: Resource, to_group: str, to_kind: str, to_ns: str, to_name: str) -> bool:
        """Whether a ReferenceGrant in the target namespace admits this cross-namespace reference."""
        group = source.api_version.split("/")[0] if "/" in source.api_version else ""
        for grant in self.grants:
            if grant.metadata.namespace != to_ns:
                continue
            from_ok = any(f.group == group and f.kind == source.kind and f.namespace == source.metadata.namespace for f in grant.spec.from_)
            to_ok = any(t.group == to_group and t.kind == to_kind and t.name in (None, to_name) for t in grant.spec.to)
            if from_ok and to_ok:
                return True
        return False

    def check_route_conflicts(self) -> None:
        # Two rules with the same match on the same port and hostname: Envoy would only ever
        # use the first, so the second is almost surely a mistake. Report it where it is.
        owners: dict[tuple, tuple[Resource, tuple]] = {}
        for route in [*self.config.http_routes, *self.config.grpc_routes]:
            places = [(att.listener.port, host) for att in self.config.attachments.get(id(route), []) for host in att.hostnames]
            for r, rule in enumerate(route.spec.rules):
                for m, match in enumerate(rule.matches):
                    where, identity = ("spec", "rules", r, "matches", m), match_identity(match)
                    for port, host in places:
                        first, first_where = owners.setdefault((port, host, identity), (route, where))
                        if first is route and first_where[:3] == where[:3]:
                            continue  # this very rule (repeating itself is harmless)
                        src = self.config.source(first)
                        self.err(route, where, f"same match as {first.ref} {format_field_path(first_where)} "
                                 f"({src.file}:{src.locate(first_where)[1]}) on port {port}, host {host}")
                        break  # one report per match


def pem_problem(cert: bytes, key: bytes) -> str | None:
    """Why Envoy would reject this certificate/key pair, or None. Checked here so a bad
    certificate is a config error with a line number, not an Envoy NACK."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(cert)
    except ValueError:
        return "the certificate is not a PEM-encoded X.509 certificate"
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        return "the private key is not an unencrypted PEM-encoded key"
    if certs[0].public_key().public_numbers() != private.public_key().public_numbers():
        return "the private key does not belong to the certificate"
    return None


def match_identity(match: Any) -> tuple:
    """What makes two matches the same request set (order of headers/params doesn't matter)."""
    headers = tuple(sorted((h.name.lower(), h.type, h.value) for h in match.headers))
    if hasattr(match, "query_params"):
        query = tuple(sorted((q.name, q.type, q.value) for q in match.query_params))
        return ("http", match.path.type, match.path.value, match.method, headers, query)
    method = match.method
    grpc = (method.type, method.service, method.method) if method else None
    return ("grpc", grpc, headers)


def effective_hostnames(route_hostnames: Sequence[str], listener_hostname: str | None) -> tuple[str, ...]:
    """Hostnames a route serves on a listener, by Gateway API's intersection rules.

    A route without hostnames takes the listener's; a listener without one takes the route's;
    otherwise each pair intersects to the more specific name (`*.example.com` ∩ `a.example.com`
    is `a.example.com`). Empty result: the route does not attach to that listener.
    """
    if not route_hostnames:
        return (listener_hostname or "*",)
    if listener_hostname is None:
        return tuple(dict.fromkeys(route_hostnames))
    out: list[str] = []
    for host in route_hostnames:
        if host == listener_hostname:
            out.append(host)
        elif _wildcard_covers(listener_hostname, host):
            out.append(host)
        elif _wildcard_covers(host, listener_hostname):
            out.append(listener_hostname)
    return tuple(dict.fromkeys(out))


def _wildcard_covers(pattern: str, host: str) -> bool:
    return pattern.startswith("*.") and host != pattern and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
