"""Make-before-break publishing of snapshots to one node group.

Envoy applies each xDS response as it comes. A route switched to a cluster Envoy hasn't finished
adding, or a cluster removed while an old route still points at it, means 503 "no cluster"
(response flag NC) for requests in between. So when clusters come or go, a change is published in
stages, each once every connected Envoy of the group has ACKed the one before:

  1. the new clusters and endpoints added, routes and listeners as they were;
  2. the new routes and listeners, the clusters they no longer use still there;
  3. the new config alone.
"""

from __future__ import annotations

import asyncio
import logging
import time

from meshgate.controlplane.status import ControlPlaneStatus, _short_type
from meshgate.xds.server import response_version
from meshgate.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot, SnapshotCache

log = logging.getLogger("meshgate.controlplane.publish")

Stage = tuple[Snapshot, tuple[str, ...]]  # a snapshot, and the types whose ACK the next stage waits for


class StagedPublisher:
    """Publishes snapshots for one group into a SnapshotCache, in stages when clusters change."""

    def __init__(self, cache: SnapshotCache, group: str, status: ControlPlaneStatus) -> None:
        self.cache = cache
        self.group = group
        self.status = status
        self.snapshot: Snapshot | None = None  # the last snapshot put in the cache
        self._generation = 0  # bumped by every publish; a running stage sequence stops when it moves
        self._finishing: asyncio.Task | None = None

    def publish(self, desired: Snapshot) -> bool:
        """Publish `desired` (its first stage now, the rest in a task). True if anything changed."""
        stages = self.stages(desired)
        published = self._put(stages[0][0])
        self._generation += 1
        self.status.pending_stages = len(stages) - 1
        if len(stages) > 1:
            self._finishing = asyncio.get_running_loop().create_task(self._publish_stages(stages, self._generation))
        return published

    def _put(self, snapshot: Snapshot) -> bool:
        if not self.cache.set_snapshot(self.group, snapshot):
            return False
        _log_changes(self.snapshot, snapshot)
        self.snapshot = snapshot
        self.status.snapshot = snapshot
        self.status.version = snapshot.version
        for type_url, resources in snapshot.resources.items():
            self.status.metrics.snapshot_resources.labels(_short_type(type_url)).set(len(resources))
        return True

    def stages(self, desired: Snapshot) -> list[Stage]:
        """Snapshots to publish in order, each with the types whose ACK the next one waits for."""
        current = self.snapshot
        if current is None or not any(n.group == self.group for n in self.status.nodes.values()):
            return [(desired, ())]
        now, new = current.resources.get(CLUSTER, {}), desired.resources.get(CLUSTER, {})
        added = [name for name in new if name not in now]
        removed = [name for name in now if name not in new]
        if not added and not removed:
            return [(desired, ())]
        # Every cluster either config needs, at its desired version where it has one.
        clusters = {**{n: now[n] for n in removed}, **new}
        endpoints = {**{n: e for n, e in current.resources.get(ENDPOINT, {}).items() if n in removed},
                     **desired.resources.get(ENDPOINT, {})}
        stages: list[Stage] = []
        if added:
            stages.append((Snapshot.build({CLUSTER: clusters, ENDPOINT: endpoints, LISTENER: current.resources[LISTENER],
                                           ROUTE: current.resources[ROUTE]}), (CLUSTER, ENDPOINT)))
        if removed:
            stages.append((Snapshot.build({CLUSTER: clusters, ENDPOINT: endpoints, LISTENER: desired.resources[LISTENER],
                                           ROUTE: desired.resources[ROUTE]}), (LISTENER, ROUTE)))
        stages.append((desired, ()))
        return stages

    async def _publish_stages(self, stages: list[Stage], generation: int, timeout: float = 10.0) -> None:
        """Publish stages[1:], each after the group's Envoys ACKed what the previous one waits for.

        If an Envoy NACKed that instead, it still uses the old resources: stop there and keep
        them. An Envoy that doesn't answer within `timeout` doesn't hold the others back.
        """
        for (previous, wait_for), (snapshot, _) in zip(stages, stages[1:]):
            wanted = {_short_type(t): response_version(previous, t) for t in wait_for}
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if generation != self._generation:
                    return  # a newer reload took over
                nodes = [n for n in self.status.nodes.values() if n.group == self.group]
                if any(n.nacked.get(t, {}).get("version") == v for n in nodes for t, v in wanted.items()):
                    log.warning("staged publish stopped: an Envoy rejected part of the new config",
                                extra={"version": previous.version})
                    return
                if all(n.acked.get(t) == v for n in nodes for t, v in wanted.items()):
                    break
                await asyncio.sleep(0.01)
            if generation != self._generation:
                return
            self._put(snapshot)
            self.status.pending_stages -= 1


def _log_changes(old: Snapshot | None, new: Snapshot) -> None:
    """Log which resources were added, changed and removed, per type."""
    changes: dict[str, dict[str, list[str]]] = {}
    for type_url, resources in new.resources.items():
        before = old.resources.get(type_url, {}) if old else {}
        diff = {
            "added": sorted(n for n in resources if n not in before),
            "changed": sorted(
                n for n in resources if n in before and old.resource_version(type_url, n) != new.resource_version(type_url, n)
            ),
            "removed": sorted(n for n in before if n not in resources),
        }
        diff = {k: v for k, v in diff.items() if v}
        if diff:
            changes[_short_type(type_url)] = diff
    log.info("config published", extra={"version": new.version, "previous": old.version if old else None, "changes": changes})
