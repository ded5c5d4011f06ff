"""Make-before-break publishing of snapshots to one node group.

Envoy applies each xDS response as it comes. A route switched to a cluster Envoy hasn't finished
adding, or a cluster removed while an old route still points at it, means 503 "no cluster"
(response flag NC) for requests in between. So when clusters come or go, a change is published in
stages, each once every connected Envoy of the group has ACKed the one before:

  1. the new clusters, their endpoints and secrets added, routes and listeners as they were;
  2. the new routes and listeners, the clusters they no longer use still there;
  3. the new config alone.

"ACKed the stage" means: the Envoy ACKed responses that carried each resource the next stage
depends on, at the stage's version (per resource, not per type: in state-of-the-world one type
version can cover responses with different names). An Envoy that NACKs stops the sequence (it keeps
the old clusters); one that doesn't answer within `timeout` is named in a warning and `/status`,
and the next stage goes out anyway, so one dead Envoy can't hold the others back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from google.protobuf.message import Message

from meshgate.controlplane.status import ControlPlaneStatus, NodeStatus, _short_type
from meshgate.xds.server import response_version
from meshgate.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Snapshot,
    SnapshotCache,
    secret_references,
)

log = logging.getLogger("meshgate.controlplane.publish")

DEFAULT_STAGE_TIMEOUT = 10.0


class Stage(NamedTuple):
    snapshot: Snapshot
    wait_for: tuple[str, ...]  # type URLs every Envoy must have ACKed before the next stage


class StagedPublisher:
    """Publishes snapshots for one group into a SnapshotCache, in stages when clusters change.

    Call `close()` (or `await aclose()`) on shutdown: it cancels a stage sequence still waiting.
    """

    def __init__(self, cache: SnapshotCache, group: str, status: ControlPlaneStatus, *,
                 timeout: float = DEFAULT_STAGE_TIMEOUT) -> None:
        self.cache = cache
        self.group = group
        self.status = status
        self.timeout = timeout  # how long one stage waits for the group's ACKs
        self.snapshot: Snapshot | None = None  # the last snapshot put in the cache
        self.target: Snapshot | None = None  # the snapshot the current sequence ends with
        self._task: asyncio.Task[None] | None = None

    # -- publishing ---------------------------------------------------------------------------
    def publish(self, desired: Snapshot) -> bool:
        """Publish `desired` (its first stage now, the rest in a task). True if anything changed."""
        if self._task is not None and not self._task.done() and desired == self.target:
            return False  # already on its way
        self.close()  # a newer config replaces a sequence still waiting
        stages = self.stages(desired)
        self.target = desired
        published = self._put(stages[0].snapshot)
        if len(stages) == 1:
            self._state("done", 1, 1)
            return published
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a one-shot caller): nobody could ACK anyway
            self._put(desired)
            self._state("done", len(stages), len(stages))
            return True
        self._state("waiting", 1, len(stages))
        self._task = loop.create_task(self._publish_stages(stages), name=f"staged-publish-{self.group}")
        self._task.add_done_callback(self._finished)
        return True

    def close(self) -> None:
        """Cancel a stage sequence in progress (the last stage put in the cache stays)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            self._state("stopped", self.status.publish.get("stage", 0), self.status.publish.get("of", 0),
                        reason="cancelled (a newer config, or shutdown)")

    async def aclose(self) -> None:
        """`close()`, then wait until the cancelled sequence has ended."""
        task = self._task
        self.close()
        if task is not None:
            # A failure was logged by _finished already.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("staged publish failed", exc_info=exc, extra={"version": self.target.version if self.target else None})
            self.status.pending_stages = 0
            self._state("stopped", self.status.publish.get("stage", 0), self.status.publish.get("of", 0),
                        reason=f"internal error: {exc!r}")

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

    def _state(self, state: str, stage: int, of: int, *, waiting_for: list[str] | None = None,
               reason: str | None = None, timed_out: list[str] | None = None) -> None:
        self.status.pending_stages = of - stage if state in ("waiting",) else 0
        self.status.publish = {
            "state": state, "version": self.target.version if self.target else None, "stage": stage, "of": of,
            "waiting_for": waiting_for or [], "timed_out": timed_out or [], "reason": reason,
        }

    # -- stages -------------------------------------------------------------------------------
    def _envoys(self) -> list[NodeStatus]:
        """The group's nodes that take clusters (Envoys; not clients that only read, say,
        companion config types): the ones a stage waits for."""
        return [n for n in self.status.nodes.values()
                if n.group == self.group and _short_type(CLUSTER) in n.pushed]

    def stages(self, desired: Snapshot) -> list[Stage]:
        """Snapshots to publish in order, each with the types the next one waits for.

        Any type may be missing from either snapshot (e.g. a config with no listeners left).
        """
        current = self.snapshot
        nodes = self._envoys()
        if current is None or not nodes:
            return [Stage(desired, ())]
        now, new = current.names(CLUSTER), desired.names(CLUSTER)
        # Clusters every Envoy of the group runs: a cluster published but never ACKed (a stage
        # that was NACKed or cancelled) still counts as new, so routes wait for it again.
        running = set.intersection(*(set(n.resources.get(CLUSTER, ())) for n in nodes))
        added = [name for name in new if name not in now or name not in running]
        removed = [name for name in now if name not in new]
        if not added and not removed:
            return [Stage(desired, ())]
        # Every cluster either config needs, at its desired version where it has one.
        clusters = {**{n: now[n] for n in removed}, **new}
        stages: list[Stage] = []
        if added:
            # Listeners, routes and companion types (anything but clusters and their children)
            # stay as they are until the new clusters are warm.
            stages.append(Stage(_stage(current, desired, clusters, current), (SECRET, CLUSTER, ENDPOINT)))
        if removed:
            stages.append(Stage(_stage(current, desired, clusters, desired), (LISTENER, ROUTE)))
        stages.append(Stage(desired, ()))
        return stages

    async def _publish_stages(self, stages: list[Stage]) -> None:
        """Publish stages[1:], each once the group's Envoys ACKed what the previous one waits for."""
        of = len(stages)
        timed_out: list[str] = []
        for i, (previous, nxt) in enumerate(itertools.pairwise(stages), start=1):
            outcome, nodes, nack = await self._wait_for_acks(previous, i, of, timed_out)
            if outcome == "nacked":
                reason = (f"Envoy node {nack['node']} rejected {nack['type']} version {nack['version']}: "
                          f"{nack['error']}")
                log.warning("staged publish stopped at stage %d of %d: %s; the Envoys keep the clusters they have",
                            i, of, reason, extra={"version": previous.snapshot.version})
                self._state("stopped", i, of, reason=reason, timed_out=timed_out)
                return
            if outcome == "timed_out":
                timed_out += [n for n in nodes if n not in timed_out]
                log.warning("staged publish: no ACK of stage %d of %d within %.0f s from %s; publishing the next "
                            "stage anyway", i, of, self.timeout, ", ".join(nodes),
                            extra={"version": previous.snapshot.version, "nodes": nodes})
            self._put(nxt.snapshot)
            if i + 1 < of:
                self._state("waiting", i + 1, of, timed_out=timed_out)
        if timed_out:
            self._state("timed_out", of, of, waiting_for=timed_out, timed_out=timed_out,
                        reason=f"no ACK within {self.timeout:g} s from {', '.join(timed_out)}; later stages "
                               "were published without waiting for them")
        else:
            self._state("done", of, of)

    async def _wait_for_acks(self, stage: Stage, i: int, of: int,
                             timed_out: list[str]) -> tuple[str, list[str], dict[str, Any] | None]:
        """Wait until every node of the group ACKed the stage's resources of its wait_for types.

        Returns ("acked", [], None), ("nacked", [], the NACK) or ("timed_out", [nodes], None).
        """
        wanted = _wanted(stage)
        # NACKs recorded from now on answer this stage; an older one counts if its Envoy is still
        # connected and rejected this very content (the server won't resend it: no ACK will come).
        nack_seq = self.status.nack_seq
        versions = {t: response_version(stage.snapshot, t) for t in stage.wait_for}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        satisfied: set[str] = set()  # instances that ACKed everything (checked once each)
        changed = asyncio.Event()
        unsubscribe = self.status.subscribe(changed.set)
        try:
            while True:
                changed.clear()
                for nack in self.status.nacks():
                    if nack["group"] == self.group and nack["type_url"] in stage.wait_for and (
                        nack["seq"] > nack_seq or (nack["connected"] and nack["version"] == versions[nack["type_url"]])
                    ):
                        return "nacked", [], nack
                nodes = self._envoys()
                satisfied |= {n.instance for n in nodes if n.instance not in satisfied and _has_all(n, wanted)}
                missing = [self.status.label(n) for n in nodes if n.instance not in satisfied]
                if not missing:
                    return "acked", [], None
                self._state("waiting", i, of, waiting_for=missing, timed_out=timed_out)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return "timed_out", missing, None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            unsubscribe()


def _stage(current: Snapshot, desired: Snapshot, clusters: Mapping[str, Message], consumers: Snapshot) -> Snapshot:
    """An intermediate snapshot: `clusters`, the endpoints and secrets they and the consumers'
    listeners need (desired version first), and every other type as `consumers` has it."""
    resources: dict[str, Mapping[str, Message]] = {
        t: r for t, r in consumers.resources.items() if t not in (CLUSTER, ENDPOINT, SECRET)
    }
    resources[CLUSTER] = clusters
    eds_names = {desired.eds_name_of_cluster(n) if n in desired.names(CLUSTER) else current.eds_name_of_cluster(n)
                 for n in clusters}
    resources[ENDPOINT] = _pick(eds_names - {None}, desired.names(ENDPOINT), current.names(ENDPOINT))
    secret_names = set(secret_references(consumers.names(LISTENER), clusters))
    resources[SECRET] = _pick(secret_names, desired.names(SECRET), current.names(SECRET))
    # Most messages (routes, listeners) are the consumers' own objects: reuse their serialization.
    return Snapshot.build(resources, consumers)


def _pick(names: set, *sources: Mapping[str, Message]) -> dict[str, Message]:
    """Each name from the first source that has it."""
    out: dict[str, Message] = {}
    for name in sorted(names):
        for source in sources:
            if name in source:
                out[name] = source[name]
                break
    return out


def _wanted(stage: Stage) -> dict[str, dict[str, str]]:
    """type URL -> {name: version} an Envoy must have ACKed for `stage` to count as applied."""
    snap = stage.snapshot
    wanted: dict[str, dict[str, str]] = {}
    for type_url in stage.wait_for:
        if type_url == ENDPOINT:
            # The ClusterLoadAssignments the stage's EDS clusters fetch.
            names = {snap.eds_name_of_cluster(c) for c in snap.names(CLUSTER)} - {None}
        elif type_url == SECRET:
            # The secrets the stage's clusters fetch (a cluster warms until they arrive).
            names = set(secret_references({}, snap.names(CLUSTER)))
        else:
            names = set(snap.names(type_url))
        wanted[type_url] = {n: snap.resource_version(type_url, n) for n in names if n in snap.names(type_url)}
    return wanted


def _has_all(node: NodeStatus, wanted: Mapping[str, Mapping[str, str]]) -> bool:
    return all(node.has_acked(t, resources) for t, resources in wanted.items())


def _log_changes(old: Snapshot | None, new: Snapshot) -> None:
    """Log which resources were added, changed and removed, per type."""
    changes: dict[str, dict[str, list[str]]] = {}
    for type_url in sorted(set(new.resources) | set(old.resources if old else ())):
        resources = new.names(type_url)
        before = old.names(type_url) if old else {}
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
    # Endpoint-only changes (pods coming and going) can be many per second: debug, not info.
    level = logging.DEBUG if changes and set(changes) == {"ClusterLoadAssignment"} else logging.INFO
    log.log(level, "config published", extra={"version": new.version, "previous": old.version if old else None,
                                               "changes": changes})
