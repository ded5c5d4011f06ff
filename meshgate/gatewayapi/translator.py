"""Resources → IR, with a status for every object (Envoy Gateway's `internal/gatewayapi`).

`translate(objects)` takes the valid objects of a store (each with the document it came from) and
returns the IR and a `StatusBook`. It follows Gateway API's rules for partial validity: an invalid
object, listener, parentRef or backendRef is reported on its own object and left out (or, for a
backendRef, answered with HTTP 500), and everything else is programmed:

- a listener whose port is taken by another protocol, or whose (port, hostname) is taken, is
  `Conflicted` and not programmed; one with an unusable certificate is `ResolvedRefs=False`;
- a parentRef naming a missing Gateway or `sectionName`, or a listener whose `allowedRoutes`
  excludes the route's namespace, or whose hostname doesn't intersect the route's, leaves the
  route unattached there (`Accepted=False`), attached elsewhere;
- a backendRef that is missing, of an unknown kind or cross-namespace without a ReferenceGrant is
  `ResolvedRefs=False` and its share of the rule's requests gets HTTP 500;
- of two rules with identical matches on the same port and host, the older route wins (then the
  alphabetically first); the other match is `Conflicted` and left out.

Order between objects ("oldest first, then alphabetical") uses `metadata.creationTimestamp` when
the object has one (Kubernetes), else namespace/name.
"""

from __future__ import annotations

import base64
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from meshgate.providers.file import FileReadError, SourceDocument, read_regular_file
from meshgate.api.models import (
    CERT_FILE_OPTION,
    KEY_FILE_OPTION,
    Backend,
    Gateway,
    GRPCRoute,
    HTTPRoute,
    Listener,
    MeshgateHTTPRoute,
    Namespace,
    ReferenceGrant,
    Resource,
    Secret,
    ConfigMap,
)
from meshgate.api.policies import ClientTrafficPolicy
from meshgate.api.backend_traffic_policy import BackendTrafficPolicy
from meshgate.errors import format_field_path, format_location
from meshgate.gatewayapi import policies
from meshgate.gatewayapi.backend_policy import BackendTraffic
from meshgate.gatewayapi.security import SecurityPolicies
from meshgate.api.security_policy import SecurityPolicy
from meshgate.gatewayapi.checks import effective_hostnames, match_identity, pem_problem
from meshgate.gatewayapi.backend_tls import resolve_backend_tls
from meshgate.gatewayapi.config_maps import inline_value_refs
from meshgate.gatewayapi import failover
from meshgate.gatewayapi import global_ratelimit
from meshgate.gatewayapi import incremental
from meshgate.gatewayapi.failover import FailoverResolver
from meshgate.gatewayapi.routes import backend_cluster, build_routes
from meshgate.gatewayapi.services import ServiceIndex
from meshgate.api.service import EndpointSlice, Service
from meshgate.gatewayapi import envoy_proxy
from meshgate.gatewayapi.transcoding import TranscoderResolver
from meshgate.gatewayapi.status import Condition, ObjectKey, ObjectStatus, StatusBook, object_key
from meshgate.providers.store import StoreView
from meshgate import ir

AnyRoute = HTTPRoute | MeshgateHTTPRoute | GRPCRoute
ReadFile = Callable[[str], bytes]

ACCEPTED = Condition("Accepted", "True", "Accepted")
# On a Gateway: routes of different namespaces may serve the same hostnames (off: tenants are
# namespaces, and a hostname belongs to the namespace whose route took it first).
SHARED_HOSTNAMES_ANNOTATION = "meshgate.io/share-hostnames-across-namespaces"
PROGRAMMED = Condition("Programmed", "True", "Programmed")
RESOLVED = Condition("ResolvedRefs", "True", "ResolvedRefs")


def _read_file(path: str) -> bytes:
    """Certificate files: regular files only, bounded, never blocking (a FIFO or /dev/zero named
    by mistake must not hang or exhaust the control plane)."""
    return read_regular_file(path, max_bytes=1 << 20)


@dataclass
class Translation:
    """What translation produced: the IR, every object's status, and the objects themselves."""

    ir: ir.IR
    status: StatusBook
    gateways: list[Gateway] = field(default_factory=list)
    routes: list[AnyRoute] = field(default_factory=list)
    backends: dict[tuple[str, str], Backend] = field(default_factory=dict)  # (namespace, name)
    policies: list[Resource] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {
            "gateways": len(self.gateways),
            "listeners": sum(len(g.spec.listeners) for g in self.gateways),
            "routes": len(self.routes),
            "backends": len(self.backends),
            "policies": len(self.policies),
        }


def precedence_order(resources: Iterable[Resource]) -> list:
    """Oldest first (creationTimestamp, when known), then by namespace and name."""
    return sorted(resources, key=_order_key)


def _order_key(r: Resource) -> tuple:
    return (r.metadata.creation_timestamp or "", r.metadata.namespace, r.metadata.name)


@dataclass(frozen=True)
class _RouteResult:
    """What translating one route produced: where it attached, its IR routes, its status."""

    route: Resource
    context: tuple
    attachments: list  # (gateway key, listener name, port, hostnames)
    built: list  # (precedence key, IR route) per match
    matches: list  # (field path, identity) per match, for conflict detection
    status: ObjectStatus
    problems: tuple


@dataclass
class TranslationMemo:
    """Per-route results kept between reloads, so that an edit re-translates only what changed."""

    routes: dict = field(default_factory=dict)
    context: tuple = ()
    keys: dict = field(default_factory=dict)  # id(resource) -> (resource, key, precedence sort key)
    # What the last pass over all routes added up (vhosts, match claims, hostname owners), so
    # that an edit to a few routes patches it instead of passing over every route again
    # (meshgate.gatewayapi.incremental); None when that pass can't be patched.
    fold: Any = None


@dataclass(frozen=True)
class _Attachment:
    gateway: Gateway
    listener: Listener
    hostnames: tuple[str, ...]


class _Translator:
    def __init__(self, objects: Sequence[tuple[Resource, SourceDocument]], invalid: set[ObjectKey],
                 read_file: ReadFile, memo: TranslationMemo | None = None, *, patching: bool = False) -> None:
        """`patching`: `objects` are the objects that are not routes; the routes come from the
        memo's fold (meshgate.gatewayapi.incremental), changed ones added with `_add`."""
        self.status = StatusBook()
        self.non_route: list[tuple[Resource, SourceDocument]] = []  # in `objects` order
        self.duplicates = False  # some key is defined twice (reported; the fold can't be kept)
        self.memo = memo
        self.invalid = invalid  # keys of objects that exist but failed validation (their own errors say why)
        self.read_file = read_file
        self.docs: dict[ObjectKey, SourceDocument] = {}
        self.gateways: list[Gateway] = []
        self.routes: list[AnyRoute] = []
        self.backends: dict[tuple[str, str], Backend] = {}
        self.secrets: dict[tuple[str, str], Secret] = {}
        self.config_maps: dict[tuple[str, str], ConfigMap] = {}  # what valueRefs name (config_maps.py)
        self.inlined: list[Resource] = []  # policies replaced by a copy with their ConfigMap values inline
        self.grants: list[ReferenceGrant] = []
        self.namespace_labels: dict[str, dict[str, str]] = {}  # from Namespace objects (allowedRoutes selectors)
        self.policies: list[Resource] = []
        self.services = ServiceIndex()  # Kubernetes Services and EndpointSlices, for backendRefs to Services
        self.key_of: dict[int, ObjectKey] = self.status.keys  # id(resource) -> its key, computed once
        self.route_docs: dict[ObjectKey, SourceDocument] = {}
        for resource, doc in objects:
            self._add(resource, doc)
        self.gateways = precedence_order(self.gateways)
        if patching:
            pass
        elif memo is not None:
            self.routes.sort(key=lambda r: memo.keys[id(r)][2])
            if len(memo.keys) > 2 * len(objects) + 64:  # forget objects long gone
                alive = {id(r) for r, _ in objects}
                memo.keys = {k: v for k, v in memo.keys.items() if k in alive}
        else:
            self.routes = precedence_order(self.routes)
        # What a route's translation can depend on besides itself: the objects that are not
        # routes (Backends only through what routes use of them: name, protocol, hash key, so
        # that an endpoint change re-translates nothing) and which objects are invalid.
        self.context = (
            tuple(id(r) for r, _ in objects
                  if not isinstance(r, (HTTPRoute, MeshgateHTTPRoute, GRPCRoute, Backend, EndpointSlice))),
            tuple(sorted((k, b.spec.protocol, b.spec.load_balancer.model_dump_json(), b.spec.fallback,
                          b.spec.tls.model_dump_json() if b.spec.tls else None) for k, b in self.backends.items())),
            frozenset(k for k in invalid if k[1] not in ("HTTPRoute", "GRPCRoute")))
        self._context_objects = [r for r, _ in objects]  # keeps the ids above from being reused

    def _settle_context(self, programmed: list[tuple[Gateway, Listener]]) -> None:
        """Complete the context with which Gateway listeners could be programmed (a certificate
        file that turns unreadable changes where routes attach, with no object changed), and make
        it the memo's very object when it equals the last one (memo hits compare by identity)."""
        self.context = (*self.context, tuple((id(g), l.name) for g, l in programmed))
        memo = self.memo
        if memo is not None:
            if memo.context == self.context:
                self.context = memo.context
            memo.context = self.context

    def _add(self, resource: Resource, doc: SourceDocument) -> None:
        known = self.memo.keys.get(id(resource)) if self.memo is not None else None
        if known is not None and known[0] is resource:
            key = known[1]
        else:
            key = object_key(resource)
            if self.memo is not None:
                self.memo.keys[id(resource)] = (resource, key, _order_key(resource))
        self.key_of[id(resource)] = key
        if key in self.docs:
            self.duplicates = True
            first = self.docs[key]
            # Not tracked: the status slot belongs to the first definition.
            self.status.problems.append(doc.error(("metadata", "name"),
                                                  f"duplicate {resource.ref}, first defined at {format_location(first.file, first.line)}"))
            return
        self.docs[key] = doc
        if isinstance(resource, (HTTPRoute, MeshgateHTTPRoute, GRPCRoute)):
            self.routes.append(resource)  # its status is made (or reused) in _route
            return
        self.non_route.append((resource, doc))
        self.status.track(key, doc, resource.kind)
        self.status.condition(resource, ACCEPTED)
        ns_name = (resource.metadata.namespace, resource.metadata.name)
        if isinstance(resource, Gateway):
            self.gateways.append(resource)
        elif isinstance(resource, Backend):
            self.backends[ns_name] = resource
        elif isinstance(resource, Secret):
            self.secrets[ns_name] = resource
        elif isinstance(resource, ConfigMap):
            self.config_maps[ns_name] = resource
        elif isinstance(resource, ReferenceGrant):
            self.grants.append(resource)
        elif isinstance(resource, Namespace):
            self.namespace_labels[resource.metadata.name] = dict(resource.metadata.labels)
        elif isinstance(resource, (ClientTrafficPolicy, BackendTrafficPolicy, SecurityPolicy)):
            self.policies.append(resource)
        elif isinstance(resource, (Service, EndpointSlice)):
            self.services.add(resource)

    # -- ReferenceGrant ----------------------------------------------------------------------

    def granted(self, source: Resource, to_group: str, to_kind: str, to_ns: str, to_name: str) -> bool:
        """Whether a ReferenceGrant in the target namespace admits this cross-namespace reference."""
        group = source.api_version.split("/")[0] if "/" in source.api_version else ""
        for grant in self.grants:
            if grant.metadata.namespace != to_ns:
                continue
            from_ok = any(f.group == group and f.kind == source.kind and f.namespace == source.metadata.namespace
                          for f in grant.spec.from_)
            to_ok = any(t.group == to_group and t.kind == to_kind and t.name in (None, to_name) for t in grant.spec.to)
            if from_ok and to_ok:
                return True
        return False

    def _missing(self, group: str, kind: str, ns: str, name: str) -> str:
        if (group, kind, ns, name) in self.invalid:
            return f"{kind} {ns}/{name} is invalid (see its own errors)"
        return f"{kind} {ns}/{name} not found"

    # -- Gateways ----------------------------------------------------------------------------

    def gateway_listeners(self) -> tuple[list[tuple[Gateway, Listener]], dict[tuple, str], dict[str, ir.Secret]]:
        """Listeners that can be programmed, their certificate (SDS secret name), and the secrets."""
        programmed: list[tuple[Gateway, Listener]] = []
        cert_of: dict[tuple, str] = {}
        secrets: dict[str, ir.Secret] = {}
        protocol_of_port: dict[int, tuple[str, Gateway, Listener]] = {}
        owner: dict[tuple[int, str | None], tuple[Gateway, Listener]] = {}
        for gateway in self.gateways:
            for i, listener in enumerate(gateway.spec.listeners):
                where = ("spec", "listeners", i)
                name = listener.name
                first = protocol_of_port.setdefault(listener.port, (listener.protocol, gateway, listener))
                if first[0] != listener.protocol:
                    self.status.listener(gateway, name, Condition(
                        "Conflicted", "True", "ProtocolConflict",
                        f"port {listener.port} is already used with protocol {first[0]}"), (*where, "protocol"))
                    self.status.listener(gateway, name, Condition("Programmed", "False", "Invalid", "protocol conflict"))
                    continue
                taken = owner.setdefault((listener.port, listener.hostname), (gateway, listener))
                if taken != (gateway, listener):
                    self.status.listener(gateway, name, Condition(
                        "Conflicted", "True", "HostnameConflict",
                        f"port {listener.port} with hostname {listener.hostname or '(any)'} is already used by "
                        f"{taken[0].ref} listener {taken[1].name}"), (*where, "port"))
                    self.status.listener(gateway, name, Condition("Programmed", "False", "Invalid", "hostname conflict"))
                    continue
                if listener.tls is not None:
                    secret = self.certificate(gateway, listener, where)
                    if secret is None:
                        self.status.listener(gateway, name, Condition("Programmed", "False", "Invalid",
                                                                      "no usable certificate"))
                        continue
                    secrets[secret.name] = secret
                    cert_of[(object_key(gateway), name)] = secret.name
                self.status.listener(gateway, name, Condition("Conflicted", "False", "NoConflicts"))
                self.status.listener(gateway, name, RESOLVED)
                self.status.listener(gateway, name, ACCEPTED)
                self.status.listener(gateway, name, PROGRAMMED)
                programmed.append((gateway, listener))
        for gateway in self.gateways:
            ok = any(g is gateway for g, _ in programmed)
            self.status.condition(gateway, PROGRAMMED if ok else Condition(
                "Programmed", "False", "Invalid", "no listener of this Gateway could be programmed"))
        return programmed, cert_of, secrets

    def certificate(self, gateway: Gateway, listener: Listener, where: tuple) -> ir.Secret | None:
        """The listener's certificate and key, checked the way Envoy would, or None (reported)."""
        name, tls = listener.name, listener.tls
        bad = lambda path, message: self.status.listener(  # noqa: E731
            gateway, name, Condition("ResolvedRefs", "False", "InvalidCertificateRef", message), path)
        if CERT_FILE_OPTION in tls.options:
            base = os.path.dirname(self.docs[object_key(gateway)].file)
            pem: dict[str, bytes] = {}
            for option in (CERT_FILE_OPTION, KEY_FILE_OPTION):
                path = os.path.normpath(os.path.join(base, tls.options[option]))  # as the user sees it
                try:
                    pem[option] = self.read_file(path)
                except FileReadError as exc:
                    bad((*where, "tls", "options", option), f"cannot read file {path} ({exc.reason})")
            if len(pem) < 2:
                return None
            problem = pem_problem(pem[CERT_FILE_OPTION], pem[KEY_FILE_OPTION])
            if problem:
                bad((*where, "tls", "options"), problem)
                return None
            cert_path = os.path.abspath(os.path.join(base, tls.options[CERT_FILE_OPTION]))
            return ir.Secret(f"file{cert_path}", pem[CERT_FILE_OPTION], pem[KEY_FILE_OPTION])
        ref = tls.certificate_refs[0]
        ref_path = (*where, "tls", "certificateRefs", 0)
        ns = ref.namespace or gateway.metadata.namespace
        secret = self.secrets.get((ns, ref.name))
        if secret is None:
            bad((*ref_path, "name"), self._missing("", "Secret", ns, ref.name))
            return None
        if ns != gateway.metadata.namespace and not self.granted(gateway, "", "Secret", ns, ref.name):
            self.status.listener(gateway, name, Condition(
                "ResolvedRefs", "False", "RefNotPermitted",
                f"Secret {ns}/{ref.name} is in another namespace and no ReferenceGrant allows it"), (*ref_path, "namespace"))
            return None
        cert, key = self._secret_pem(secret)
        if cert is None or key is None:
            bad(ref_path, f"Secret {ns}/{ref.name} needs tls.crt and tls.key (data or stringData)")
            return None
        problem = pem_problem(cert, key)
        if problem:
            bad(ref_path, f"Secret {ns}/{ref.name}: {problem}")
            return None
        return ir.Secret(f"secret/{ns}/{ref.name}", cert, key)

    def _secret_pem(self, secret: Secret) -> tuple[bytes | None, bytes | None]:
        def get(name: str) -> bytes | None:
            if name in secret.string_data:
                return secret.string_data[name].encode()
            if name in secret.data:
                try:
                    return base64.b64decode(secret.data[name], validate=True)
                except ValueError:
                    self.status.condition(secret, Condition("Accepted", "False", "Invalid", "not valid base64"),
                                          ("data", name))
            return None

        return get("tls.crt"), get("tls.key")

    # -- Routes ------------------------------------------------------------------------------

    def attach(self, route: AnyRoute, programmed: list[tuple[Gateway, Listener]]) -> list[_Attachment]:
        """Where a route attaches, by Gateway API's rules; a status per parentRef."""
        attachments: list[_Attachment] = []
        gateways = self.gateway_by_name
        for i, ref in enumerate(route.spec.parent_refs):
            where = ("spec", "parentRefs", i)
            ns = ref.namespace or route.metadata.namespace
            label = f"Gateway {ns}/{ref.name}" + (f"/{ref.section_name}" if ref.section_name else "")
            refuse = lambda reason, message, path: self.status.parent(  # noqa: E731
                route, i, label, Condition("Accepted", "False", reason, message), path)
            gateway = gateways.get((ns, ref.name))
            if gateway is None:
                refuse("NoMatchingParent", self._missing("gateway.networking.k8s.io", "Gateway", ns, ref.name), (*where, "name"))
                continue
            listeners = list(gateway.spec.listeners)
            if ref.section_name is not None:
                listeners = [l for l in listeners if l.name == ref.section_name]
                if not listeners:
                    refuse("NoMatchingParent", f"{gateway.ref} has no listener named {ref.section_name!r}",
                           (*where, "sectionName"))
                    continue
            if ref.port is not None:
                listeners = [l for l in listeners if l.port == ref.port]
                if not listeners:
                    refuse("NoMatchingParent", f"{gateway.ref} has no listener on port {ref.port}", (*where, "port"))
                    continue
            allowed = [l for l in listeners if self._admits(gateway, l, route.metadata.namespace)]
            if not allowed:
                refuse("NotAllowedByListeners", f"{gateway.ref} does not admit routes from namespace "
                       f"{route.metadata.namespace} ({self._admits_whom(gateway, listeners)})", (*where, "name"))
                continue
            listeners = allowed
            found = []
            for listener in listeners:
                hostnames = effective_hostnames(route.spec.hostnames, listener.hostname)
                if hostnames and (id(gateway), id(listener)) in self.programmed_ids:
                    found.append(_Attachment(gateway, listener, hostnames))
                elif hostnames:
                    found.append(None)  # type: ignore[arg-type] - attached, but the listener isn't programmed
            if not found:
                refuse("NoMatchingListenerHostname", f"no hostname of this route is served by {gateway.ref} "
                       f"(listener hostnames: {', '.join(sorted({l.hostname or '*' for l in listeners}))})",
                       ("spec", "hostnames"))
                continue
            self.status.parent(route, i, label, ACCEPTED)
            attachments.extend(a for a in found if a is not None)
        return attachments

    def resolve_backend(self, route: AnyRoute, r: int, b: int) -> Backend | None:
        return self.resolve_ref(route, route.spec.rules[r].backend_refs[b], ("spec", "rules", r, "backendRefs", b))

    def resolve_mirror(self, route: AnyRoute, r: int, f: int) -> Backend | None:
        """The Backend a rule's RequestMirror filter copies requests to (same rules as backendRefs)."""
        ref = route.spec.rules[r].filters[f].request_mirror.backend_ref
        return self.resolve_ref(route, ref, ("spec", "rules", r, "filters", f, "requestMirror", "backendRef"))

    def resolve_ref(self, route: AnyRoute, ref, where: tuple) -> Backend | None:  # noqa: ANN001
        """The Backend a backendRef names, or None with `ResolvedRefs=False` on the route saying why."""
        ns = ref.namespace or route.metadata.namespace
        unresolved = lambda reason, message, path: self.status.condition(  # noqa: E731
            route, Condition("ResolvedRefs", "False", reason, message), path)
        if (ref.group, ref.kind) == ("", "Service"):  # a Kubernetes Service port: its EndpointSlices' pods
            return self.services.resolve(self, route, ref, ns, where, unresolved)
        if (ref.group, ref.kind) != ("meshgate.io", "Backend"):
            unresolved("InvalidKind", f"{ref.kind or 'Service'} {ns}/{ref.name}: only meshgate.io Backends and "
                       "Services can be referenced here (group: meshgate.io, kind: Backend; or kind: Service)",
                       (*where, "kind"))
            return None
        backend = self.backends.get((ns, ref.name))
        if backend is None:
            unresolved("BackendNotFound", self._missing("meshgate.io", "Backend", ns, ref.name), (*where, "name"))
            return None
        if ns != route.metadata.namespace and not self.granted(route, "meshgate.io", "Backend", ns, ref.name):
            unresolved("RefNotPermitted", f"Backend {ns}/{ref.name} is in another namespace and no ReferenceGrant "
                       "allows it", (*where, "namespace"))
            return None
        if isinstance(route, GRPCRoute) and backend.spec.protocol == "HTTP1":
            unresolved("UnsupportedProtocol", f"Backend {ns}/{ref.name} speaks HTTP1; a GRPCRoute needs protocol "
                       "GRPC or HTTP2", (*where, "name"))
            return None
        return backend

    # -- the whole translation -----------------------------------------------------------------

    def _route(self, route: AnyRoute, programmed: list[tuple[Gateway, Listener]]) -> _RouteResult:
        """Attach and build one route, with its status; reused from `memo` while neither the route
        nor anything it can refer to changed (then this costs two dictionary lookups)."""
        key = self.key_of[id(route)]
        cached = self.memo.routes.get(key) if self.memo is not None else None
        if cached is not None and cached.route is route and cached.context is self.context:
            self.status.objects[key] = cached.status  # shared, never mutated (see run)
            self.status._docs[key] = self.docs[key]  # a conflict found below is reported at its line
            self.status.problems.extend(cached.problems)
            return cached
        first_problem = len(self.status.problems)
        self.status.track(key, self.docs[key], route.kind)
        self.status.condition(route, ACCEPTED)
        attachments = self.attach(route, programmed)
        self.status.condition(route, RESOLVED)
        built = list(build_routes(route, self.resolve_backend, self.resolve_mirror, self.resolve_transcoder,
                                  self.resolve_failover))
        # The identity as a string: strings cache their hash, so the conflict map below, rebuilt
        # on every reload, costs one cheap lookup per match.
        matches = [(("spec", "rules", r, "matches", m), repr(match_identity(match)))
                   for r, rule in enumerate(route.spec.rules) for m, match in enumerate(rule.matches)]
        status = self.status.objects[key]
        if not any(c.type == "Accepted" and c.status == "True" for cs in status.parents.values() for c in cs):
            self.status.condition(route, Condition("Accepted", "False", "NotAttached",
                                                   "the route is not attached to any listener"))
        attached = [(self.key_of[id(a.gateway)], a.listener.name, a.listener.port, a.hostnames) for a in attachments]
        result = _RouteResult(route, self.context, attached, built, matches, status,
                              tuple(self.status.problems[first_problem:]))
        if self.memo is not None:
            self.memo.routes[key] = result
        return result

    def _prepare(self) -> tuple:
        """What every translation starts with: the Gateway listeners that can be programmed (and
        their statuses), the resolvers routes use, the client settings and the route policies."""
        programmed, cert_of, secrets = self.gateway_listeners()
        self.resolve_transcoder = TranscoderResolver(self)  # ExtensionRef filters (gRPC-JSON transcoding)
        self.resolve_failover = FailoverResolver(self)  # rules with a fallback Backend: Envoy priorities
        self.gateway_by_name = {(g.metadata.namespace, g.metadata.name): g for g in self.gateways}
        self.programmed_ids = {(id(g), id(l)) for g, l in programmed}
        self._settle_context(programmed)
        inline_value_refs(self)  # ConfigMap valueRefs -> inline values, before policies attach
        settings = policies.client_settings(self, programmed)
        settings = envoy_proxy.apply(self, programmed, settings)  # Gateways' EnvoyProxy (tracing)
        traffic = BackendTraffic(self)  # BackendTrafficPolicies: statuses now, routes below
        security = SecurityPolicies(self)  # SecurityPolicies: likewise, per listener
        return programmed, cert_of, secrets, settings, traffic, security

    def run(self) -> Translation:
        programmed, cert_of, secrets, settings, traffic, security = self._prepare()
        fold = incremental.FoldBuilder() if self.memo is not None else None

        # port -> hostname -> [(precedence key, IR route)]; first definition of a match wins.
        by_port: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        owners: dict[tuple, tuple[AnyRoute, tuple]] = {}
        attached: dict[tuple[ObjectKey, str], int] = defaultdict(int)
        conflicts: list[tuple[AnyRoute, Condition, tuple]] = []
        # Tenancy: (port, hostname) -> the namespace whose routes serve it. Routes come oldest
        # first, so the namespace that took a hostname first keeps it; a hostname is not served
        # by another namespace's routes (`*`, routes without hostnames, is shared).
        host_owner: dict[tuple[int, str], str] = {}
        refused_hosts: dict[int, tuple[AnyRoute, list]] = {}  # id(route) -> (route, [(host, owner)])
        served_somewhere: set[int] = set()  # id(route) of routes served on some listener and hostname
        shares: dict[ObjectKey, bool] = {}  # Gateway -> whether its namespaces share hostnames
        failover_routes: list[ir.Route] = []  # routes with a failover cluster (gatewayapi.failover)
        for route in self.routes:
            result = self._route(route, programmed)
            self.services.use(result.built)
            failover_routes.extend(r for _, r in result.built if any(d.failover for d in r.destinations))
            routes_built = traffic.apply(route, result.matches, result.built, result.attachments)
            contribution = fold.route(self.key_of[id(route)], route) if fold is not None else None
            for gateway_key, listener_name, port, hostnames in result.attachments:
                shared = shares.get(gateway_key)
                if shared is None:
                    shared = shares[gateway_key] = self._shares_hostnames(gateway_key)
                if not shared and hostnames != ("*",):
                    ns = route.metadata.namespace
                    if contribution is not None:
                        contribution.hosts.extend((port, h) for h in hostnames if h != "*")
                    kept = [h for h in hostnames if h == "*" or host_owner.setdefault((port, h), ns) == ns]
                    if len(kept) < len(hostnames):
                        refused_hosts.setdefault(id(route), (route, []))[1].extend(
                            (h, host_owner[(port, h)]) for h in hostnames if h not in kept)
                    hostnames = kept
                    if not hostnames:
                        continue  # every hostname belongs to another namespace here: not attached
                served_somewhere.add(id(route))
                attached[(gateway_key, listener_name)] += 1
                if contribution is not None:
                    contribution.attached.append((gateway_key, listener_name))
                served = security.apply(route, result.matches, routes_built, gateway_key, listener_name)
                for host in hostnames:
                    vhost = by_port[port][host]
                    for (where, identity), built in zip(result.matches, served):
                        if contribution is not None:
                            contribution.claims.append((port, host, identity))
                        first, first_where = owners.setdefault((port, host, identity), (route, where))
                        if first is route and (first_where is where or first_where[:3] == where[:3]):
                            vhost.append(built)
                            if contribution is not None:
                                contribution.served.append((port, host, built))
                        elif first is not route or first_where != where:
                            src = self.docs[self.key_of[id(first)]]
                            conflicts.append((route, Condition(
                                "Conflicted", "True", "IdenticalMatch",
                                f"same match as {first.ref} {format_field_path(first_where)} "
                                f"({format_location(*src.locate(first_where))}) on port {port}, host {host}"), where))
        for route, refused in refused_hosts.values():
            hosts = ", ".join(sorted({f"{h} (namespace {owner})" for h, owner in refused}))
            message = f"hostnames served by another namespace's routes on this Gateway: {hosts}"
            conflicts.append((route, Condition("Conflicted", "True", "HostnameConflict", message)
                              if id(route) in served_somewhere
                              else Condition("Accepted", "False", "HostnameConflict", message), ("spec", "hostnames")))
        for (gateway_key, listener_name), count in attached.items():
            self.status.objects[gateway_key].attached_routes[listener_name] = count
        for route, condition, where in conflicts:
            key = self.key_of[id(route)]
            status = self.status.objects[key]
            if status is self.memo_status(key):  # copy before changing a status the memo shares
                self.status.objects[key] = status = replace(status, conditions=list(status.conditions))
            first_problem = len(self.status.problems)
            self.status.condition(route, condition, where)
            if fold is not None:
                fold.conflict(key, self.status.problems[first_problem:])
        if self.memo is not None:  # forget routes that are gone
            if len(self.memo.routes) > len(self.routes):
                present = {self.key_of[id(r)] for r in self.routes}
                for key in [k for k in self.memo.routes if k not in present]:
                    del self.memo.routes[key]

        listeners = []
        sorted_hosts: dict[tuple[int, str], list] = {}
        vhost_objects: dict[tuple[int, str], ir.VirtualHost] = {}
        for port, (name, tls, port_settings) in sorted(self._ports(programmed, cert_of, settings).items()):
            hosts = by_port.get(port, {})
            vhosts = []
            for host in sorted(hosts, key=_host_order):
                routes = sorted(dict((r.name, (k, r)) for k, r in hosts[host]).values(), key=lambda kr: kr[0])
                vhosts.append(ir.VirtualHost(name=f"{name}/{host}", domains=(host,), routes=tuple(r for _, r in routes)))
                sorted_hosts[(port, host)] = routes
                vhost_objects[(port, host)] = vhosts[-1]
            listeners.append(ir.Listener(name=name, port=port, tls=tls, virtual_hosts=tuple(vhosts), settings=port_settings))
        translation = self._finish(listeners, secrets, failover_routes, traffic, security)
        if self.memo is not None:
            # Kept only for what the patch path can redo exactly: no route policies (their
            # statuses and effects depend on every route), no route sending to a Service or with
            # failover (clusters built from all routes), no object defined twice.
            patchable = (not self.duplicates and not self.services.used and not failover_routes
                         and not any(isinstance(p, (BackendTrafficPolicy, SecurityPolicy)) for p in self.policies))
            self.memo.fold = fold.build(self, sorted_hosts, vhost_objects, attached) if patchable else None
        return translation

    def _finish(self, listeners: list[ir.Listener], secrets: dict, failover_routes: list, traffic: BackendTraffic,
                security: SecurityPolicies, global_limits: bool = True) -> Translation:
        """The clusters and secrets the listeners need, and the Translation."""
        clusters = []
        for _, backend in sorted(self.backends.items()):
            # Upstream TLS: a Backend whose TLS can't be resolved is left out (never plaintext).
            usable, upstream_tls = resolve_backend_tls(self, backend, secrets)
            if usable:
                clusters.append(replace(backend_cluster(backend), tls=upstream_tls))
        clusters = tuple(clusters) + self.services.clusters()  # Service ports the routes send to
        clusters += failover.clusters(failover_routes, clusters)  # Backends with fallbacks, by priority
        clusters += traffic.clusters(clusters)  # variants of Backend clusters (BackendTrafficPolicy)
        clusters += security.clusters()  # where Envoy fetches remote JWKS
        if global_limits:
            clusters += global_ratelimit.clusters(listeners, clusters)  # the edge companion, for global rate limits
        secrets.update(security.secrets)
        model = ir.IR(listeners=tuple(listeners), clusters=clusters,
                      secrets=tuple(secrets[n] for n in sorted(secrets)))
        return Translation(model, self.status, self.gateways, list(self.routes), self.backends, self.policies)

    def _admits(self, gateway: Gateway, listener: Listener, namespace: str) -> bool:
        """Gateway API allowedRoutes.namespaces: Same (the Gateway's), All, or Selector (labels of
        the route's Namespace object; every namespace carries kubernetes.io/metadata.name)."""
        rule = listener.allowed_routes.namespaces
        if rule.from_ == "All":
            return True
        if rule.from_ == "Selector":
            labels = {**self.namespace_labels.get(namespace, {}), "kubernetes.io/metadata.name": namespace}
            return rule.selector.matches(labels)
        return namespace == gateway.metadata.namespace

    @staticmethod
    def _admits_whom(gateway: Gateway, listeners: list[Listener]) -> str:
        kinds = {l.allowed_routes.namespaces.from_ for l in listeners}
        if kinds == {"Same"}:
            return f"only routes from namespace {gateway.metadata.namespace}"
        return "only namespaces whose labels match its allowedRoutes selector" if "Selector" in kinds else "see allowedRoutes"

    def _shares_hostnames(self, gateway_key: ObjectKey) -> bool:
        gateway = self.gateway_by_name.get((gateway_key[2], gateway_key[3]))
        return gateway is not None and gateway.metadata.annotations.get(SHARED_HOSTNAMES_ANNOTATION) == "true"

    def memo_status(self, key: ObjectKey) -> ObjectStatus | None:
        cached = self.memo.routes.get(key) if self.memo is not None else None
        return cached.status if cached is not None else None

    def _ports(self, programmed, cert_of, settings):  # noqa: ANN001, ANN202
        """One Envoy listener per port, named after the first Gateway listener on it."""
        ports: dict[int, tuple[str, list[ir.TLSServerName], ir.ClientSettings]] = {}
        for gateway, listener in programmed:
            name = f"{gateway.metadata.namespace}/{gateway.metadata.name}/{listener.port}"
            _, tls, _ = ports.setdefault(listener.port, (name, [], settings[(object_key(gateway), listener.name)]))
            secret = cert_of.get((object_key(gateway), listener.name))
            if secret is not None:
                tls.append(ir.TLSServerName((listener.hostname,) if listener.hostname else (), secret))
        # The certificate without SNI names is the default; it goes last so named ones win.
        return {port: (name, tuple(sorted(tls, key=lambda t: (not t.server_names, t.server_names))), s)
                for port, (name, tls, s) in ports.items()}


def _host_order(host: str) -> tuple:
    # Envoy picks the most specific domain itself; sorting only keeps the output deterministic.
    return (host == "*", host.startswith("*"), host)


def translate(objects: Sequence[tuple[Resource, SourceDocument]], *, invalid: Iterable[ObjectKey] = (),
              read_file: ReadFile = _read_file, memo: TranslationMemo | None = None,
              changed: frozenset[ObjectKey] | None = None, serving: Mapping[ObjectKey, Any] | None = None) -> Translation:
    """Valid objects (with their documents) → IR and a status per object. Pure but for reading the
    certificate files Gateways name (through `read_file`). With a `memo` (kept by the caller
    across reloads), routes unchanged since the last call are not translated again; and with
    `changed` (the keys whose object changed since that call; `serving`: key -> the store's
    object, `StoredObject`), an edit to a few routes patches the last translation
    (meshgate.gatewayapi.incremental) when that gives exactly what translating everything would."""
    invalid = set(invalid)
    if memo is not None:
        if changed is not None and serving is not None:
            patched = incremental.patch(memo, serving, changed, invalid, read_file)
            if patched is not None:
                return patched
        memo.fold = None
    return _Translator(objects, invalid, read_file, memo).run()


def translate_view(view: StoreView, read_file: ReadFile = _read_file, memo: TranslationMemo | None = None) -> Translation:
    """`translate` the objects of a store update, and give the objects whose current version is
    invalid their status: `Accepted=False` (reason `Invalid`), and `Programmed` True while their
    last valid version keeps serving, False when they never had one."""
    # Patching needs every object's one version: with an object defined twice, translate in full.
    patchable = view.changed is not None and len(view.objects) == len(view.serving)
    translation = translate(view.objects, invalid=view.invalid, read_file=read_file, memo=memo,
                            changed=view.changed if patchable else None, serving=view.serving)
    book = translation.status
    for key in sorted(view.invalid):
        errors = view.errors_by_key.get(key, [])
        message = "; ".join(f"{e.field + ': ' if e.field else ''}{e.message}"
                            for e in errors[:3]) or "its file could not be read"
        status = book.objects.get(key)
        if status is None:
            origin = format_location(errors[0].file, errors[0].line) if errors else ""
            status = book.objects[key] = ObjectStatus(key[1], key[2], key[3], origin)
        status.conditions[:] = [c for c in status.conditions if c.type not in ("Accepted", "Programmed")]
        status.conditions.insert(0, Condition("Accepted", "False", "Invalid", message))
        if key in view.stale:
            status.conditions.insert(1, Condition(
                "Programmed", "True", "LastValidVersion",
                f"the last valid version (generation {view.stale[key]}) keeps serving until this is fixed"))
        else:
            status.conditions.insert(1, Condition("Programmed", "False", "Invalid", "never had a valid version"))
    return translation
