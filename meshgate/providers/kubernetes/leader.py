"""Leader election between control-plane replicas, on a `coordination.k8s.io/v1` Lease.

Every replica serves xDS (Envoys may connect to any of them); only one — the leader — writes
statuses, so that replicas never fight over an object's status. This is client-go's
`leaderelection` with a Lease lock:

- The Lease (`spec.holderIdentity`, `leaseDurationSeconds`, `acquireTime`, `renewTime`,
  `leaseTransitions`) names its holder. The holder renews it (a PUT of `renewTime`) every
  `retry_seconds`.
- Another replica takes it only once it has seen the Lease unchanged for `leaseDurationSeconds`,
  measured on its *own* clock from when it last saw it change (so clocks that disagree between
  machines don't matter), and only with a PUT carrying the `resourceVersion` it read: of two
  replicas trying at once, the API server accepts one and answers 409 Conflict to the other.
- A leader that could not renew for `renew_deadline` seconds (shorter than the lease duration)
  stops acting as leader before anyone else may take over: at most one writer at a time.
- On a clean shutdown the leader releases the Lease (empty holder), so the next one takes over at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from meshgate.providers.kubernetes.informer import _describe
from meshgate.providers.kubernetes.provider import service_account_file

log = logging.getLogger("meshgate.providers.kubernetes.leader")

__all__ = ["LeaderElector", "default_namespace"]

def default_namespace() -> str:
    """The control plane's namespace: $POD_NAMESPACE, else the pod's service account's, else default."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(service_account_file("namespace")) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _micro_time() -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Holds or watches the Lease (see the module doc). `run` until cancelled; `is_leader()` any time."""

    def __init__(self, api: Callable[[], Any], *, namespace: str | None = None, name: str = "meshgate-controlplane",
                 identity: str | None = None, lease_seconds: float = 15.0, renew_deadline: float = 10.0,
                 retry_seconds: float = 2.0, on_change: Callable[[bool], None] | None = None) -> None:
        if not retry_seconds < renew_deadline < lease_seconds:
            raise ValueError("need retry_seconds < renew_deadline < lease_seconds")
        self.api = api  # returns the provider's ApiClient (available once it started)
        self.namespace = namespace or default_namespace()
        self.name = name
        self.identity = identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_seconds = retry_seconds
        self.on_change = on_change
        self.holder: str | None = None  # who holds the Lease, as last read
        self.last_error: str | None = None
        self._leader = False
        self._renewed_at = 0.0  # monotonic time of our last successful renewal
        self._observed: dict | None = None  # the Lease spec as last seen, and when (our clock)
        self._observed_at = 0.0

    def is_leader(self) -> bool:
        # Not renewed within the deadline: stop acting as leader, even before the loop notices.
        return self._leader and time.monotonic() - self._renewed_at < self.renew_deadline

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            log.info("leader election: %s", "became leader" if leader else "not leader",
                     extra={"identity": self.identity, "lease": f"{self.namespace}/{self.name}", "holder": self.holder})
            if self.on_change is not None:
                self.on_change(leader)

    async def run(self) -> None:
        try:
            while True:
                try:
                    self._set(await self.try_acquire_or_renew())
                    self.last_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - API server down, no RBAC...: retry
                    self.last_error = _describe(exc)
                    log.warning("leader election: cannot reach the Lease; retrying", extra={"error": self.last_error})
                    if not self.is_leader():
                        self._set(False)
                await asyncio.sleep(self.retry_seconds)
        finally:
            self._leader = False

    async def try_acquire_or_renew(self) -> bool:
        from kubernetes_asyncio.client import CoordinationV1Api
        from kubernetes_asyncio.client.exceptions import ApiException

        client = self.api()
        api = CoordinationV1Api(client)
        now = _micro_time()
        try:
            lease = client.sanitize_for_serialization(
                await api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.renew_deadline))
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_seconds),
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                await api.create_namespaced_lease(self.namespace, body, _request_timeout=self.renew_deadline)
            except ApiException as create_exc:
                if create_exc.status == 409:  # another replica created it first
                    return False
                raise
            self.holder, self._renewed_at = self.identity, time.monotonic()
            return True
        spec = lease.get("spec") or {}
        if spec != self._observed:
            self._observed, self._observed_at = spec, time.monotonic()
        self.holder = spec.get("holderIdentity") or None
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if self.holder not in (None, self.identity) and time.monotonic() < self._observed_at + duration:
            return False  # held by another replica, and renewed recently enough
        new_spec = {**spec, "holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_seconds),
                    "renewTime": now}
        if self.holder != self.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            # The resourceVersion read is a precondition: two replicas racing, one wins (409 for the other).
            await api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=self.renew_deadline)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self.holder, self._renewed_at = self.identity, time.monotonic()
        return True

    async def release(self) -> None:
        """Give the Lease up (on shutdown), so that another replica needn't wait for it to expire."""
        if not self._leader:
            return
        self._leader = False
        from kubernetes_asyncio.client import CoordinationV1Api

        client = self.api()
        api = CoordinationV1Api(client)
        try:
            lease = client.sanitize_for_serialization(
                await api.read_namespaced_lease(self.name, self.namespace, _request_timeout=2))
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1,
                                 "renewTime": _micro_time()}
                await api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=2)
        except Exception as exc:  # noqa: BLE001 - best effort: the Lease expires anyway
            log.info("leader election: could not release the Lease", extra={"error": _describe(exc)})

    def as_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "leader": self.is_leader(), "holder": self.holder,
                "lease": f"{self.namespace}/{self.name}", "last_error": self.last_error}
