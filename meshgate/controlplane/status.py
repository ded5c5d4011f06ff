"""What the control plane knows about itself and its Envoys, for `/status`, `/readyz` and `/metrics`.

`ControlPlaneStatus` is the ADS server's observer (`meshgate.xds.server.XdsObserver`): it records
which Envoy instances are connected and what each has been sent, ACKed (down to each resource's
version) and NACKed; `Metrics` holds the Prometheus series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from meshgate.xds.snapshot import Snapshot

if TYPE_CHECKING:
    from meshgate.xds.server import NodeRef

log = logging.getLogger("meshgate.controlplane.status")


class Metrics:
    """Prometheus metrics of one control plane (own registry, so tests don't collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds
        self.pushes = Counter("meshgate_xds_pushes", "xDS responses sent, by type", ["type"], registry=r)
        self.acks = Counter("meshgate_xds_acks", "xDS ACKs received, by type", ["type"], registry=r)
        self.nacks = Counter("meshgate_xds_nacks", "xDS NACKs (config rejected by Envoy), by type", ["type"], registry=r)
        self.connected = Gauge("meshgate_xds_connected_streams", "Open ADS streams", registry=r)
        self.nodes = Gauge("meshgate_xds_connected_nodes", "Envoy instances with an open ADS stream", registry=r)
        self.translation = Histogram(
            "meshgate_translation_seconds", "Time to load, validate and translate the config", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.reloads = Counter("meshgate_config_reloads", "Config reloads, by result", ["result"], registry=r)
        self.config_errors = Gauge("meshgate_config_errors", "Problems in the current config files (0 = valid)", registry=r)
        self.snapshot_resources = Gauge("meshgate_snapshot_resources", "Resources in the published snapshot", ["type"], registry=r)
        # From writing a response to the Envoy's ACK or NACK of it: how long Envoys take to apply
        # config of each type (a slow RDS at 10,000 routes shows here, not in translation time).
        self.push_seconds = Histogram("meshgate_xds_push_seconds", "Time from an xDS response to its ACK or NACK, by type",
                                      ["type"], registry=r,
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.endpoint_updates = Counter("meshgate_endpoint_updates", "ClusterLoadAssignments published by the EDS-only path "
                                        "(endpoints set from outside the config files)", registry=r)


MAX_UNANSWERED = 4096  # xDS responses awaiting an ACK whose write time is kept


def _short_type(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


@dataclass
class NodeStatus:
    """One connected Envoy instance (one ADS stream; see `meshgate.xds.server.NodeRef`)."""

    node_id: str
    group: str
    instance: str = ""  # unique per stream, even when two Envoys share a node.id
    kind: str = ""  # "sotw" or "delta"
    peer: str = ""
    streams: int = 1  # always 1 now that each stream is its own node; kept for /status readers
    acked: dict[str, str] = field(default_factory=dict)  # type -> version
    nacked: dict[str, dict[str, str]] = field(default_factory=dict)  # type -> {version, error}
    pushed: dict[str, str] = field(default_factory=dict)  # type -> last version sent
    # type URL -> {name: resource version} the node runs as far as its ACKs tell
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    sent_snapshot: str | None = None  # the last snapshot whose responses were all written
    connected_at: float = field(default_factory=time.time)

    def has_acked(self, type_url: str, wanted: Mapping[str, str]) -> bool:
        """Whether the node ACKed responses that carried every `{name: version}` of `wanted`."""
        have = self.resources.get(type_url, {})
        return all(have.get(name) == version for name, version in wanted.items())


class ControlPlaneStatus:
    """What the control plane knows: config version and errors, nodes and what they ACKed.

    Implements the ADS server's observer interface (`meshgate.xds.server.XdsObserver`).
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.nodes: dict[str, NodeStatus] = {}  # by NodeRef.instance
        self.version: str | None = None
        self._config_errors: list[str] = []
        self.last_reload: float | None = None
        self.summary: dict[str, int] = {}
        # More sections for /status, e.g. the supervised Envoy in `meshgate run`; a callable is
        # called at each request (the Envoy's pid changes when it is restarted).
        self.extra: dict[str, Any] = {}
        # Every object with its conditions (set by the reload pipeline); `problems_only` keeps
        # /status small at 10,000 routes: the whole list is /status/objects.
        self.objects: Callable[[bool], list[dict[str, Any]]] = lambda problems_only: []
        self.snapshot: Snapshot | None = None  # the published snapshot, to tell which nodes run it
        self.pending_stages = 0  # stages of a make-before-break publish not yet published
        # The staged publish in progress or last finished (`StagedPublisher` keeps it current).
        self.publish: dict[str, Any] = {"state": "idle"}
        self.ever_acked = False
        self.spans = None  # meshgate.controlplane.spans.ControlPlaneSpans while tracing is on
        # Latest NACK per (instance, type URL); outlives the stream so a crashed Envoy's reason
        # stays visible, until a later version of that type is ACKed (see on_ack).
        self._nacks: dict[tuple[str, str], dict[str, Any]] = {}
        self.nack_seq = 0  # bumped by every NACK: lets a waiter tell new NACKs from old ones
        # (instance, type URL, version) -> when it was written (monotonic), for push_seconds;
        # bounded: an Envoy that never answers must not grow it.
        self._written: dict[tuple[str, str, str], float] = {}
        # What this process depends on, for /readyz (meshgate.controlplane.readiness): name ->
        # a check returning at least {"ok": bool}; each gates readiness, never liveness.
        self.dependencies: dict[str, Callable[[], dict[str, Any]]] = {}
        from meshgate.controlplane.status_metrics import StatusCollector  # objects by status, outstanding NACKs

        self.metrics.registry.register(StatusCollector(self))
        self._listeners: list[Callable[[], None]] = []

    # -- errors --------------------------------------------------------------------------------
    @property
    def last_error(self) -> list[str]:
        """Why the running config is not the wanted one: the last config errors, then one line per
        outstanding Envoy NACK (`Envoy node X rejected Listener version V: ...`)."""
        return self._config_errors + [
            f"Envoy node {n['node']} rejected {n['type']} version {n['version']}: {n['error']}"
            for n in self.nacks()
        ]

    @last_error.setter
    def last_error(self, lines: list[str]) -> None:
        # Set by the reload pipeline: replaces config errors only, never hides a NACK.
        self._config_errors = list(lines)

    def nacks(self) -> list[dict[str, Any]]:
        """The latest outstanding NACK per node and type: {node, instance, group, type, type_url,
        version, error, resources (names in the rejected response), connected, seq}."""
        return [{**n, "connected": n["instance"] in self.nodes}
                for n in sorted(self._nacks.values(), key=lambda n: n["seq"])]

    # -- change notification ------------------------------------------------------------------
    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` after every observer event (ACK, NACK, node change...); returns a
        function that unsubscribes. Called in the ADS server's event loop."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _changed(self) -> None:
        for callback in list(self._listeners):
            callback()

    # -- observer interface -------------------------------------------------------------------
    def on_stream_open(self, node: NodeRef) -> None:
        self.nodes[node.instance] = NodeStatus(node.node_id, node.group, node.instance, node.kind, node.peer)
        self.metrics.connected.inc()
        self.metrics.nodes.set(len(self.nodes))
        log.info("node connected", extra={"node": node.node_id, "instance": node.instance, "group": node.group,
                                          "stream": node.kind})
        self._changed()

    def on_stream_close(self, node: NodeRef) -> None:
        self.metrics.connected.dec()
        self.nodes.pop(node.instance, None)
        self.metrics.nodes.set(len(self.nodes))
        self._written = {key: at for key, at in self._written.items() if key[0] != node.instance}
        log.info("node disconnected", extra={"node": node.node_id, "instance": node.instance, "group": node.group,
                                             "stream": node.kind})
        self._changed()

    def on_push(self, node: NodeRef, type_url: str, version: str, resources: Mapping[str, str]) -> None:
        self.metrics.pushes.labels(_short_type(type_url)).inc()
        n = self.nodes.get(node.instance)
        if n is not None:
            n.pushed[_short_type(type_url)] = version
        if len(self._written) >= MAX_UNANSWERED:
            self._written.pop(next(iter(self._written)))
        self._written[(node.instance, type_url, version)] = time.monotonic()
        if self.spans is not None:
            self.spans.push(node.instance, node.node_id, type_url, version, len(resources))

    def on_snapshot_sent(self, node: NodeRef, snapshot_version: str) -> None:
        n = self.nodes.get(node.instance)
        if n is not None:
            n.sent_snapshot = snapshot_version
        self._changed()

    def _answered(self, node: NodeRef, type_url: str, version: str, short: str) -> None:
        written = self._written.pop((node.instance, type_url, version), None)
        if written is not None:  # (None: an ACK of what an earlier control plane sent, after a reconnect)
            self.metrics.push_seconds.labels(short).observe(time.monotonic() - written)

    def on_ack(self, node: NodeRef, type_url: str, version: str, resources: Mapping[str, str]) -> None:
        short = _short_type(type_url)
        self.metrics.acks.labels(short).inc()
        self._answered(node, type_url, version, short)
        n = self.nodes.get(node.instance)
        if n is not None:
            n.acked[short] = version
            n.resources[type_url] = dict(resources)
            # An ACK on the stream that NACKed can only be of a later response: it's resolved.
            n.nacked.pop(short, None)
        for key, nack in list(self._nacks.items()):
            # A NACK is outdated once its node accepted a later response of the type, or, if that
            # Envoy went away, once another Envoy of its group accepted another version.
            if nack["type_url"] == type_url and (
                nack["instance"] == node.instance
                or (nack["instance"] not in self.nodes and nack["group"] == node.group and nack["version"] != version)
            ):
                del self._nacks[key]
        self.ever_acked = True
        if self.spans is not None:
            self.spans.answered(node.instance, type_url, version)
        self._changed()

    def on_nack(self, node: NodeRef, type_url: str, version: str, error: str, names: Sequence[str]) -> None:
        short = _short_type(type_url)
        self.metrics.nacks.labels(short).inc()
        self._answered(node, type_url, version, short)
        n = self.nodes.get(node.instance)
        if n is not None:
            n.nacked[short] = {"version": version, "error": error}
        self.nack_seq += 1
        self._nacks[(node.instance, type_url)] = {
            "node": node.node_id, "instance": node.instance, "group": node.group, "type": short,
            "type_url": type_url, "version": version, "error": error, "resources": list(names),
            "seq": self.nack_seq, "at": time.time(),
        }
        if self.spans is not None:
            self.spans.answered(node.instance, type_url, version, error)
        log.warning("Envoy rejected config", extra={"node": node.node_id, "instance": node.instance, "type": short,
                                                    "version": version, "error": error, "resources": list(names)})
        self._changed()

    def on_unsubscribe(self, node: NodeRef, type_url: str, names: Sequence[str]) -> None:
        n = self.nodes.get(node.instance)
        if n is not None:
            have = n.resources.get(type_url, {})
            for name in names:
                have.pop(name, None)
        self._changed()

    # -- views ---------------------------------------------------------------------------------
    def in_sync(self, node: NodeStatus) -> bool:
        """Whether the node runs the published snapshot: the server sent it everything that
        snapshot owes it, and the node ACKed each of those responses."""
        return (self.snapshot is not None and node.sent_snapshot == self.snapshot.version
                and all(node.acked.get(t) == v for t, v in node.pushed.items()))

    def duplicate_ids(self) -> set[str]:
        """node.ids used by more than one connected instance."""
        seen: dict[str, int] = {}
        for n in self.nodes.values():
            seen[n.node_id] = seen.get(n.node_id, 0) + 1
        return {k for k, count in seen.items() if count > 1}

    def label(self, node: NodeStatus) -> str:
        """How /status and logs name a node: its id, or its instance when the id is shared."""
        return node.instance if node.node_id in self.duplicate_ids() else node.node_id

    def ready(self) -> bool:
        return self.version is not None and self.ever_acked

    def as_json(self) -> dict[str, Any]:
        duplicates = self.duplicate_ids()
        return {
            "config_version": self.version,
            "config": self.summary,
            "last_reload": self.last_reload,
            "last_error": self.last_error,
            "ready": self.ready(),
            "pending_stages": self.pending_stages,
            "publish": self.publish,
            "nacks": [{k: v for k, v in n.items() if k != "type_url"} for n in self.nacks()],
            # Keyed by node.id; by instance ("<id>#<n>") for ids that several Envoys share.
            "nodes": {
                (n.instance if n.node_id in duplicates else n.node_id): {
                    "node_id": n.node_id, "instance": n.instance, "duplicate_id": n.node_id in duplicates,
                    "group": n.group, "stream": n.kind, "streams": n.streams, "acked": n.acked,
                    "nacked": n.nacked, "in_sync": self.in_sync(n)}
                for n in self.nodes.values()
            },
            # Objects with a problem; every object: /status/objects.
            "objects": self.objects(True),
            **{k: v() if callable(v) else v for k, v in self.extra.items()},
        }
