"""Versioned, internally consistent sets of Envoy resources, and the cache that holds them.

A :class:`Snapshot` is what the ADS server delivers to one group of Envoys: every Listener,
RouteConfiguration, Cluster, ClusterLoadAssignment and Secret (SDS) they should run, plus any
companion config type, keyed by type URL and resource name. It is an immutable value with content hashes, so "did anything change?" is a string
comparison, and identical content gives identical versions in every process.

:class:`SnapshotCache` keeps the current snapshot per node group and tells the ADS streams of that
group when it changes. It refuses inconsistent snapshots (a cluster whose endpoints are missing, a
listener whose routes are missing, a TLS context whose SDS secret is missing), because Envoy may apply the types in any order and would
otherwise wait forever for a resource that never comes.

Protocol background: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from meshgate.errors import InconsistentSnapshot

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "NAMED_TYPES",
    "ROUTE",
    "SECRET",
    "TYPE_ORDER",
    "VIRTUAL_HOST",
    "InconsistentSnapshot",
    "Snapshot",
    "SnapshotCache",
    "default_group_of",
]

log = logging.getLogger("meshgate.xds.snapshot")

_TYPE_PREFIX = "type.googleapis.com/"
LISTENER = _TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
# SDS: TLS certificates, keys and validation contexts, fetched by name from the TLS contexts of
# listeners (DownstreamTlsContext) and clusters (UpstreamTlsContext) instead of inlined in them.
SECRET = _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
# VHDS (on-demand virtual hosts); meshgate doesn't emit it, but it is a named type on the wire.
VIRTUAL_HOST = _TYPE_PREFIX + "envoy.config.route.v3.VirtualHost"

# Make-before-break: secrets (SDS) before the clusters and listeners whose TLS uses them; a
# cluster must exist (CDS) and have endpoints (EDS) before a listener (LDS) or route (RDS) sends
# traffic to it. See "Eventual consistency considerations" in the xDS doc.
TYPE_ORDER = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)

# The "named" types: in state-of-the-world xDS a response for these carries only the names the
# client asked for, and a name missing from it is NOT deleted (deletion follows the parent:
# listener -> routes, cluster -> endpoints, TLS context -> secret). Every other type, including
# LDS, CDS and companion types such as ratelimit's RateLimitConfig, is "full state": each
# response is the whole set, and a missing name means deleted (xds_protocol "Resource types").
NAMED_TYPES = frozenset({ROUTE, ENDPOINT, SECRET, VIRTUAL_HOST})

_HCM_FULL_NAME = hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name

# Which field of each resource carries its name. Envoy matches resources by this field, so it must
# equal the key the snapshot stores the resource under.
_NAME_FIELD = {LISTENER: "name", ROUTE: "name", CLUSTER: "name", ENDPOINT: "cluster_name", SECRET: "name"}

_RESOURCE_VERSION_HEX = 16
_SNAPSHOT_VERSION_HEX = 12


def _digest(parts: Iterator[bytes]) -> str:
    """sha256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def combine_versions(*versions: str) -> str:
    """A version derived from other versions (stable, short hex)."""
    return _digest(v.encode() for v in versions)[:_RESOURCE_VERSION_HEX]


@dataclass(frozen=True, eq=False)
class Snapshot:
    """An immutable, versioned set of resources for one node group.

    ``resources`` maps type URL -> resource name -> protobuf message. The messages must not be
    mutated after the snapshot is built: versions and the serialized form are computed once, here.
    Two snapshots are equal when their content is equal (same :attr:`version`).
    """

    resources: Mapping[str, Mapping[str, Message]]
    # Computed in __post_init__; not part of the constructor.
    _serialized: Mapping[str, Mapping[str, bytes]] = field(init=False, repr=False)
    _resource_versions: Mapping[str, Mapping[str, str]] = field(init=False, repr=False)
    _type_versions: Mapping[str, str] = field(init=False, repr=False)
    _digest: str = field(init=False, repr=False)
    _eds_name_of_cluster: Mapping[str, str] = field(init=False, repr=False)

    @classmethod
    def build(cls, resources: Mapping[str, Mapping[str, Message]], previous: Snapshot | None = None) -> Snapshot:
        """Build a snapshot from type URL -> name -> message.

        With `previous`, a resource that is the very same message object as in `previous` keeps
        its serialized form and version instead of being serialized again: a snapshot that
        differs in a few resources (an endpoint update) costs what those few cost.
        """
        snapshot = cls.__new__(cls)
        object.__setattr__(snapshot, "resources", resources)
        snapshot._index(previous)
        return snapshot

    def __post_init__(self) -> None:
        self._index(None)

    def _index(self, previous: Snapshot | None) -> None:
        frozen: dict[str, Mapping[str, Message]] = {}
        serialized: dict[str, Mapping[str, bytes]] = {}
        resource_versions: dict[str, Mapping[str, str]] = {}
        type_versions: dict[str, str] = {}
        for type_url in sorted(self.resources):
            by_name = self.resources[type_url]
            if not by_name:
                continue  # an empty type is the same as an absent one
            expected = type_url.rsplit("/", 1)[-1]
            ser: dict[str, bytes] = {}
            vers: dict[str, str] = {}
            before = previous.resources.get(type_url, {}) if previous is not None else {}
            for name in sorted(by_name):
                msg = by_name[name]
                if before.get(name) is msg:
                    ser[name] = previous._serialized[type_url][name]
                    vers[name] = previous._resource_versions[type_url][name]
                    continue
                if msg.DESCRIPTOR.full_name != expected:
                    raise TypeError(
                        f"resource {name!r} under {type_url} is a {msg.DESCRIPTOR.full_name}"
                    )
                # Deterministic serialization orders map entries, so equal messages give equal
                # bytes (and equal versions) in every process.
                data = msg.SerializeToString(deterministic=True)
                ser[name] = data
                vers[name] = hashlib.sha256(data).hexdigest()[:_RESOURCE_VERSION_HEX]
            frozen[type_url] = MappingProxyType(dict(sorted(by_name.items())))
            serialized[type_url] = MappingProxyType(ser)
            resource_versions[type_url] = MappingProxyType(vers)
            type_versions[type_url] = _digest(
                part for name in ser for part in (name.encode(), ser[name])
            )[:_RESOURCE_VERSION_HEX]

        eds_names: dict[str, str] = {}
        for name, cluster in frozen.get(CLUSTER, {}).items():
            if cluster.type == cluster_pb2.Cluster.EDS:
                eds_names[name] = cluster.eds_cluster_config.service_name or name

        object.__setattr__(self, "resources", MappingProxyType(frozen))
        object.__setattr__(self, "_serialized", MappingProxyType(serialized))
        object.__setattr__(self, "_resource_versions", MappingProxyType(resource_versions))
        object.__setattr__(self, "_type_versions", MappingProxyType(type_versions))
        object.__setattr__(self, "_eds_name_of_cluster", MappingProxyType(eds_names))
        object.__setattr__(
            self,
            "_digest",
            _digest(
                part for t, v in type_versions.items() for part in (t.encode(), v.encode())
            ),
        )

    # -- versions -------------------------------------------------------------------------------

    def type_version(self, type_url: str) -> str:
        """Hash of every (name, serialized resource) of this type; "" when the type is empty."""
        return self._type_versions.get(type_url, "")

    def resource_version(self, type_url: str, name: str) -> str:
        """Hash of one resource's deterministic serialization (short hex).

        Raises KeyError when the snapshot has no such resource.
        """
        return self._resource_versions[type_url][name]

    @property
    def version(self) -> str:
        """Hash over all type versions: the human-visible config version."""
        return self._digest[:_SNAPSHOT_VERSION_HEX]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        return self._digest == other._digest

    def __hash__(self) -> int:
        return hash(self._digest)

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{t.rsplit('.', 1)[-1]}={len(r)}" for t, r in self.resources.items()
        )
        return f"Snapshot(version={self.version!r}, {counts})"

    # -- helpers for the ADS server -------------------------------------------------------------

    def names(self, type_url: str) -> Mapping[str, Message]:
        """The resources of one type by name (empty mapping when none)."""
        return self.resources.get(type_url, MappingProxyType({}))

    def packed(self, type_url: str, name: str) -> any_pb2.Any:
        """The resource wrapped in ``google.protobuf.Any``, as xDS responses carry it."""
        return any_pb2.Any(type_url=type_url, value=self._serialized[type_url][name])

    def eds_name_of_cluster(self, cluster_name: str) -> str | None:
        """The ClusterLoadAssignment name an EDS cluster asks for, or None for other clusters."""
        return self._eds_name_of_cluster.get(cluster_name)

    # -- consistency ----------------------------------------------------------------------------

    def check_consistent(self) -> None:
        """Raise InconsistentSnapshot unless every reference resolves and nothing is orphaned.

        Envoy fetches EDS names from clusters, RDS names from listeners and SDS secret names from
        the TLS contexts of both, so a missing child leaves the parent warming forever; an
        orphaned child is a translator bug.
        """
        problems: list[str] = []
        for type_url, field_name in _NAME_FIELD.items():
            for name, msg in self.names(type_url).items():
                actual = getattr(msg, field_name)
                if actual != name:
                    short = type_url.rsplit(".", 1)[-1]
                    problems.append(f"{short} stored as {name!r} has {field_name}={actual!r}")

        wanted_eds: dict[str, list[str]] = {}
        for cluster, eds_name in self._eds_name_of_cluster.items():
            wanted_eds.setdefault(eds_name, []).append(cluster)
        problems += _reference_problems(wanted_eds, self.names(ENDPOINT), "cluster", "ClusterLoadAssignment", "EDS cluster")
        wanted_rds: dict[str, list[str]] = {}
        for listener_name, listener in self.names(LISTENER).items():
            for route_name in _rds_names(listener):
                wanted_rds.setdefault(route_name, []).append(listener_name)
        problems += _reference_problems(wanted_rds, self.names(ROUTE), "listener", "RouteConfiguration", "listener")
        # SDS over ADS: Envoy keeps a listener or cluster warming until its secrets arrive.
        wanted_sds = secret_references(self.names(LISTENER), self.names(CLUSTER))
        secrets = self.names(SECRET)
        problems += [f"{', '.join(users)} need(s) Secret {name!r}, which is missing"
                     for name, users in sorted(wanted_sds.items()) if name not in secrets]
        problems += [f"Secret {name!r} is used by no listener or cluster" for name in secrets if name not in wanted_sds]

        if problems:
            raise InconsistentSnapshot(problems)


def _rds_names(listener: Message) -> Iterator[str]:
    """RDS route_config_names a Listener's HttpConnectionManagers ask for."""
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    configs = [
        f.typed_config for chain in chains for f in chain.filters if f.HasField("typed_config")
    ]
    if listener.HasField("api_listener"):
        configs.append(listener.api_listener.api_listener)
    for typed in configs:
        if typed.type_url.rsplit("/", 1)[-1] != _HCM_FULL_NAME:
            continue
        hcm = hcm_pb2.HttpConnectionManager()
        typed.Unpack(hcm)
        # rds: Envoy fetches the route table by name over RDS instead of inline route_config.
        if hcm.HasField("rds"):
            yield hcm.rds.route_config_name


_DOWNSTREAM_TLS = tls_pb2.DownstreamTlsContext.DESCRIPTOR.full_name
_UPSTREAM_TLS = tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name


def secret_references(listeners: Mapping[str, Message], clusters: Mapping[str, Message]) -> dict[str, list[str]]:
    """SDS secret name -> ["listener NAME" / "cluster NAME", ...] for every secret those
    listeners' filter chains and those clusters' transport sockets fetch over ADS.

    Only ``sds_config: {ads: {}}`` references count: an SdsSecretConfig without ``sds_config``
    names a static secret of the bootstrap, and one with another config source is served by
    someone else.
    """
    wanted: dict[str, list[str]] = {}
    for name, listener in listeners.items():
        chains = list(listener.filter_chains)
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for chain in chains:
            if chain.HasField("transport_socket"):
                for secret in _tls_secret_names(chain.transport_socket, _DOWNSTREAM_TLS):
                    wanted.setdefault(secret, []).append(f"listener {name}")
            for secret in _http_filter_secret_names(chain):
                wanted.setdefault(secret, []).append(f"listener {name}")
    for name, cluster in clusters.items():
        sockets = [m.transport_socket for m in cluster.transport_socket_matches if m.HasField("transport_socket")]
        if cluster.HasField("transport_socket"):
            sockets.append(cluster.transport_socket)
        for socket in sockets:
            for secret in _tls_secret_names(socket, _UPSTREAM_TLS):
                wanted.setdefault(secret, []).append(f"cluster {name}")
    return {k: sorted(set(v)) for k, v in wanted.items()}


def _tls_secret_names(transport_socket: Message, full_name: str) -> Iterator[str]:
    """Names of the SDS-over-ADS secrets a TLS transport socket (Downstream/UpstreamTlsContext)
    uses: certificates, the validation context (plain or combined) and session ticket keys."""
    typed = transport_socket.typed_config
    if not transport_socket.HasField("typed_config") or typed.type_url.rsplit("/", 1)[-1] != full_name:
        return
    ctx = tls_pb2.DownstreamTlsContext() if full_name == _DOWNSTREAM_TLS else tls_pb2.UpstreamTlsContext()
    typed.Unpack(ctx)
    common = ctx.common_tls_context
    configs = list(common.tls_certificate_sds_secret_configs)
    if common.HasField("validation_context_sds_secret_config"):
        configs.append(common.validation_context_sds_secret_config)
    if common.HasField("combined_validation_context") and \
            common.combined_validation_context.HasField("validation_context_sds_secret_config"):
        configs.append(common.combined_validation_context.validation_context_sds_secret_config)
    if full_name == _DOWNSTREAM_TLS and ctx.HasField("session_ticket_keys_sds_secret_config"):
        configs.append(ctx.session_ticket_keys_sds_secret_config)
    for cfg in configs:
        if cfg.HasField("sds_config") and cfg.sds_config.HasField("ads"):
            yield cfg.name


_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_OAUTH2 = "envoy.extensions.filters.http.oauth2.v3.OAuth2"


def _http_filter_secret_names(chain: Message) -> Iterator[str]:
    """SDS-over-ADS secrets HTTP filters of a filter chain fetch: the oauth2 filter's client
    secret and cookie-signing key."""
    from envoy.extensions.filters.http.oauth2.v3 import oauth_pb2

    for network_filter in chain.filters:
        if network_filter.typed_config.type_url.rsplit("/", 1)[-1] != _HCM:
            continue
        hcm = hcm_pb2.HttpConnectionManager()
        network_filter.typed_config.Unpack(hcm)
        for http_filter in hcm.http_filters:
            if http_filter.typed_config.type_url.rsplit("/", 1)[-1] != _OAUTH2:
                continue
            oauth2 = oauth_pb2.OAuth2()
            http_filter.typed_config.Unpack(oauth2)
            for cfg in (oauth2.config.credentials.token_secret, oauth2.config.credentials.hmac_secret):
                if cfg.HasField("sds_config") and cfg.sds_config.HasField("ads"):
                    yield cfg.name


def default_group_of(node: base_pb2.Node) -> str:
    """Group Envoys by ``node.cluster`` (the Envoy --service-cluster), or "default"."""
    return node.cluster or "default"


class _Watch:
    """One subscriber to a group's changes: a callback run in the subscriber's event loop."""

    __slots__ = ("callback", "loop")

    def __init__(self, callback: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
        self.callback = callback
        self.loop = loop

    def notify(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.callback)
        except RuntimeError:  # the subscriber's loop is closed; it is going away
            pass


class SnapshotCache:
    """Holds the current snapshot per node group and wakes ADS streams when it changes.

    ``set_snapshot`` may be called from any thread; watchers are called in their own event loop.
    """

    def __init__(self, group_of: Callable[[base_pb2.Node], str] = default_group_of) -> None:
        self._group_of = group_of
        self._snapshots: dict[str, Snapshot] = {}
        self._watches: dict[str, set[_Watch]] = {}
        self._lock = threading.Lock()

    def group_of(self, node: base_pb2.Node) -> str:
        """The group whose snapshot this Envoy node receives."""
        return self._group_of(node)

    def get_snapshot(self, group: str) -> Snapshot | None:
        with self._lock:
            return self._snapshots.get(group)

    def set_snapshot(self, group: str, snapshot: Snapshot) -> bool:
        """Publish a snapshot for a group; returns False (and wakes nobody) if content is unchanged.

        Raises InconsistentSnapshot and keeps the previous snapshot if this one is inconsistent.
        """
        snapshot.check_consistent()
        with self._lock:
            old = self._snapshots.get(group)
            if old is not None and old == snapshot:
                return False
            self._snapshots[group] = snapshot
            watches = list(self._watches.get(group, ()))
        log.info("snapshot for group %r is now version %s", group, snapshot.version)
        for w in watches:
            w.notify()
        return True

    def clear_snapshot(self, group: str) -> None:
        """Forget a group's snapshot. Connected Envoys keep their last config; nothing is pushed."""
        with self._lock:
            self._snapshots.pop(group, None)

    def groups(self) -> list[str]:
        with self._lock:
            return sorted(self._snapshots)

    def watch(self, group: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (in the caller's running event loop) after each change of ``group``.

        Returns a function that cancels the watch. Must be called from a running event loop.
        """
        w = _Watch(callback, asyncio.get_running_loop())
        with self._lock:
            self._watches.setdefault(group, set()).add(w)

        def cancel() -> None:
            with self._lock:
                watches = self._watches.get(group)
                if watches is not None:
                    watches.discard(w)
                    if not watches:
                        del self._watches[group]

        return cancel

    async def wait_for_change(self, group: str, known_version: str | None) -> Snapshot:
        """Return the group's snapshot as soon as its version differs from ``known_version``."""
        changed = asyncio.Event()
        cancel = self.watch(group, changed.set)
        try:
            while True:
                changed.clear()
                snapshot = self.get_snapshot(group)
                if snapshot is not None and snapshot.version != known_version:
                    return snapshot
                await changed.wait()
        finally:
            cancel()


def _reference_problems(wanted: dict[str, list[str]], present: Mapping[str, object], parent: str, child: str,
                        user: str) -> list[str]:
    """Children that parents name but the snapshot lacks, and children no parent names."""
    problems = [
        f"{parent}(s) {', '.join(sorted(set(parents)))} need {child} {name!r}, which is missing"
        for name, parents in sorted(wanted.items()) if name not in present
    ]
    problems += [f"{child} {name!r} is used by no {user}" for name in present if name not in wanted]
    return problems
