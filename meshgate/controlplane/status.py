"""What the control plane knows about itself and its Envoys, for `/status`, `/readyz` and `/metrics`.

`ControlPlaneStatus` is the ADS server's observer (`meshgate.xds.server.XdsObserver`): it records
which nodes are connected and what each has been sent, ACKed and NACKed; `Metrics` holds the
Prometheus series.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from meshgate.xds.snapshot import Snapshot

log = logging.getLogger("meshgate.controlplane.status")


class Metrics:
    """Prometheus metrics of one control plane (own registry, so tests don't collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pushes = Counter("meshgate_xds_pushes", "xDS responses sent, by type", ["type"], registry=r)
        self.acks = Counter("meshgate_xds_acks", "xDS ACKs received, by type", ["type"], registry=r)
        self.nacks = Counter("meshgate_xds_nacks", "xDS NACKs (config rejected by Envoy), by type", ["type"], registry=r)
        self.connected = Gauge("meshgate_xds_connected_streams", "Open ADS streams", registry=r)
        self.nodes = Gauge("meshgate_xds_connected_nodes", "Distinct nodes with an open ADS stream", registry=r)
        self.translation = Histogram(
            "meshgate_translation_seconds", "Time to load, validate and translate the config", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.reloads = Counter("meshgate_config_reloads", "Config reloads, by result", ["result"], registry=r)
        self.config_errors = Gauge("meshgate_config_errors", "Problems in the current config files (0 = valid)", registry=r)
        self.snapshot_resources = Gauge("meshgate_snapshot_resources", "Resources in the published snapshot", ["type"], registry=r)


def _short_type(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


@dataclass
class NodeStatus:
    node_id: str
    group: str
    streams: int = 0
    acked: dict[str, str] = field(default_factory=dict)  # type -> version
    nacked: dict[str, dict[str, str]] = field(default_factory=dict)  # type -> {version, error}
    pushed: dict[str, str] = field(default_factory=dict)  # type -> last version sent
    sent_snapshot: str | None = None  # the last snapshot whose responses were all written
    connected_at: float = field(default_factory=time.time)


class ControlPlaneStatus:
    """What the control plane knows: config version and errors, nodes and what they ACKed.

    Implements the ADS server's observer interface (`meshgate.xds.server.XdsObserver`).
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.nodes: dict[str, NodeStatus] = {}
        self.version: str | None = None
        self.last_error: list[str] = []
        self.last_reload: float | None = None
        self.summary: dict[str, int] = {}
        # More sections for /status, e.g. the supervised Envoy in `meshgate run`; a callable is
        # called at each request (the Envoy's pid changes when it is restarted).
        self.extra: dict[str, Any] = {}
        self.snapshot: Snapshot | None = None  # the published snapshot, to tell which nodes run it
        self.pending_stages = 0  # stages of a make-before-break publish not yet published
        self.ever_acked = False

    # -- observer interface -------------------------------------------------------------------
    def on_stream_open(self, node_id: str, group: str, stream_kind: str) -> None:
        node = self.nodes.setdefault(node_id, NodeStatus(node_id, group))
        node.streams += 1
        self.metrics.connected.inc()
        self.metrics.nodes.set(len(self.nodes))
        log.info("node connected", extra={"node": node_id, "group": group, "stream": stream_kind})

    def on_stream_close(self, node_id: str, group: str, stream_kind: str) -> None:
        self.metrics.connected.dec()
        node = self.nodes.get(node_id)
        if node is not None:
            node.streams -= 1
            if node.streams <= 0:
                del self.nodes[node_id]
        self.metrics.nodes.set(len(self.nodes))
        log.info("node disconnected", extra={"node": node_id, "group": group, "stream": stream_kind})

    def on_push(self, node_id: str, type_url: str, version: str, count: int) -> None:
        self.metrics.pushes.labels(_short_type(type_url)).inc()
        node = self.nodes.get(node_id)
        if node is not None:
            node.pushed[_short_type(type_url)] = version

    def on_snapshot_sent(self, node_id: str, snapshot_version: str) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.sent_snapshot = snapshot_version

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        self.metrics.acks.labels(_short_type(type_url)).inc()
        node = self.nodes.get(node_id)
        if node is not None:
            node.acked[_short_type(type_url)] = version
            node.nacked.pop(_short_type(type_url), None)
        self.ever_acked = True

    def on_nack(self, node_id: str, type_url: str, version: str, error: str) -> None:
        self.metrics.nacks.labels(_short_type(type_url)).inc()
        node = self.nodes.get(node_id)
        if node is not None:
            node.nacked[_short_type(type_url)] = {"version": version, "error": error}
        log.warning("Envoy rejected config", extra={"node": node_id, "type": _short_type(type_url), "version": version, "error": error})

    # -- views ---------------------------------------------------------------------------------
    def in_sync(self, node: NodeStatus) -> bool:
        """Whether the node runs the published snapshot: the server sent it everything that
        snapshot owes it, and the node ACKed each of those responses."""
        return (self.snapshot is not None and node.sent_snapshot == self.snapshot.version
                and all(node.acked.get(t) == v for t, v in node.pushed.items()))

    def ready(self) -> bool:
        return self.version is not None and self.ever_acked

    def as_json(self) -> dict[str, Any]:
        return {
            "config_version": self.version,
            "config": self.summary,
            "last_reload": self.last_reload,
            "last_error": self.last_error,
            "ready": self.ready(),
            "pending_stages": self.pending_stages,
            "nodes": {
                n.node_id: {"group": n.group, "streams": n.streams, "acked": n.acked, "nacked": n.nacked,
                            "in_sync": self.in_sync(n)}
                for n in self.nodes.values()
            },
            **{k: v() if callable(v) else v for k, v in self.extra.items()},
        }
