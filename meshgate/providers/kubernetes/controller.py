"""The Kubernetes side of `meshgate xds --kubernetes` beyond reading: leader election and the status
writer, wired to the control plane, and the `kubernetes` part of `/readyz`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from meshgate.providers.kubernetes.leader import LeaderElector
from meshgate.providers.kubernetes.status import StatusWriter

__all__ = ["Controller"]


class Controller:
    """Every replica runs one: it serves xDS either way; the Lease's holder also writes statuses."""

    def __init__(self, plane: Any, provider: Any, *, addresses: Iterable[str] = (), lease_namespace: str | None = None,
                 lease_seconds: float = 15.0, renew_deadline: float = 10.0, retry_seconds: float = 2.0,
                 batch_seconds: float = 0.2) -> None:
        self.plane, self.provider = plane, provider
        self.elector = LeaderElector(lambda: provider.api, namespace=lease_namespace, lease_seconds=lease_seconds,
                                     renew_deadline=renew_deadline, retry_seconds=retry_seconds,
                                     on_change=self._leader_changed)
        self.writer = StatusWriter(provider, addresses=addresses, batch_seconds=batch_seconds,
                                   is_leader=self.elector.is_leader)
        self.tasks: list[asyncio.Task] = []

    def _leader_changed(self, leader: bool) -> None:
        if leader:
            self.writer.notify()  # a new leader checks every status once

    def start(self) -> None:
        self.plane.translation_listeners.append(self.writer.notify)
        self.provider.object_listeners.append(self.writer.object_changed)
        if self.plane.translation is not None:
            self.writer.notify(self.plane.translation)
        self.plane.status.dependencies["kubernetes"] = self.readiness  # /readyz detail
        self.tasks = [asyncio.create_task(self.elector.run(), name="leader election"),
                      asyncio.create_task(self.writer.run(), name="status writer")]

    def stop_leading(self) -> None:
        """Stop the election loop without releasing the Lease (what a hung or killed replica does)."""
        self.tasks[0].cancel()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.elector.release()

    def readiness(self) -> dict[str, Any]:
        """`/readyz`'s `kubernetes` part: the watches (`kubernetes_check`), and what this replica
        serves meanwhile (a replica that lost the API server keeps serving its last snapshot and
        says so), its leader-election state and the status writer's last error."""
        from meshgate.controlplane.readiness import kubernetes_check

        out = kubernetes_check(self.provider)()
        snapshot = self.plane.snapshot
        version = snapshot.version if snapshot is not None else None
        out["serving"] = version if out["ok"] or version is None else f"last snapshot {version} (kept while the API is unreachable)"
        # Degraded, not unready, once there is a snapshot to serve: every replica loses the API
        # server at once when it is down, and unready replicas would leave the Envoys with no
        # control plane at all. Before the first snapshot, the watches gate readiness.
        out["gating"] = version is None
        errors = [*out["failing"].values(), self.elector.last_error, self.writer.last_error]
        out["last_error"] = next((e for e in errors if e), None)
        # A version of a kind read in two (ReferenceGrant) that this API server doesn't serve.
        out["not_served"] = sorted(i.kind.name for i in self.provider.informers if i.served is False and not i.last_error)
        out["leader"] = self.elector.as_json()
        out["status_writes"] = self.writer.writes
        return out
