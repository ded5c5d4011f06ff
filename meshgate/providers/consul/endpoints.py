"""`ConsulEndpoints`: the endpoints of Backends that name a Consul service (`spec.consul`), kept
current and handed to the control plane as EDS alone.

After every published translation (`sync`), it starts a `ServiceWatch` for each Consul query
that a Backend names (Backends asking the same query share one) and stops the ones no longer
named. Each change a watch sees goes to `ControlPlane.set_cluster_endpoints`: a new
ClusterLoadAssignment for the Backend's cluster, with no route, listener or cluster translated
again. While Consul can't be read, the last endpoints keep serving, and the Backend's status in
`/status` says so (condition `EndpointsUpToDate` False, with the reason and message).

Where the agent is: the Backend's `spec.consul.address`, else `--consul-address`, else
`$CONSUL_HTTP_ADDR`, else `http://127.0.0.1:8500` (Consul's own defaults). The ACL token:
`--consul-token-file`, else `$CONSUL_HTTP_TOKEN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from meshgate.api.models import check_consul_address
from meshgate.errors import StartupError
from meshgate.gatewayapi.routes import cluster_name
from meshgate.providers.consul.watch import ConsulQuery, ServiceWatch

if TYPE_CHECKING:
    from meshgate.controlplane.pipeline import ControlPlane
    from meshgate.gatewayapi import Translation

log = logging.getLogger("meshgate.providers.consul")

__all__ = ["CONDITION", "DEFAULT_ADDRESS", "ConsulEndpoints", "normalize_address", "read_token"]

DEFAULT_ADDRESS = "http://127.0.0.1:8500"
CONDITION = "EndpointsUpToDate"  # meshgate's condition on a Backend fed by Consul


def normalize_address(value: str) -> str:
    """`HOST:PORT` or `http(s)://HOST:PORT` -> `http(s)://HOST:PORT`."""
    check_consul_address(value)
    url = urlsplit(value if "://" in value else f"http://{value}")
    return f"{url.scheme}://{url.netloc}"


def read_token(path: str | None, environ: Mapping[str, str]) -> str | None:
    """The ACL token: the file's content (trimmed), else $CONSUL_HTTP_TOKEN, else none."""
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise StartupError(f"cannot read the Consul token file {path}: {os.strerror(exc.errno or 0)}") from None
        if not token:
            raise StartupError(f"the Consul token file {path} is empty")
        return token
    return environ.get("CONSUL_HTTP_TOKEN") or None


class ConsulEndpoints:
    """See the module doc. Runs on the control plane's event loop; `install` before the first
    reload, `close` at the end."""

    def __init__(self, plane: ControlPlane, *, address: str | None = None, token: str | None = None,
                 environ: Mapping[str, str] | None = None, wait: float = 30.0, max_backoff: float = 30.0) -> None:
        environ = os.environ if environ is None else environ
        self.plane = plane
        given = address or environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDRESS
        try:
            self.default_address = normalize_address(given)
        except ValueError as exc:
            where = "--consul-address" if address else "$CONSUL_HTTP_ADDR"
            raise StartupError(f"{where}: {exc}") from None
        self.token = token
        self.wait, self.max_backoff = wait, max_backoff
        self.watches: dict[ConsulQuery, ServiceWatch] = {}
        self._tasks: dict[ConsulQuery, asyncio.Task] = {}
        self._clients: dict[str, Any] = {}  # agent address -> consul.aio.Consul
        self.clusters: dict[str, ConsulQuery] = {}  # Backend cluster -> its query
        self.backends: dict[tuple[str, str, str, str], ConsulQuery] = {}  # status key -> query
        self._sent: dict[str, tuple] = {}  # cluster -> the endpoints last handed to the plane

    # -- wiring --------------------------------------------------------------------------------

    def install(self) -> None:
        """Hook into the plane: its translations (`sync`), its status (Backends' freshness in
        /status objects, a `consul` section)."""
        status = self.plane.status
        objects = status.objects

        def with_consul(problems_only: bool) -> list[dict]:
            return self._objects(objects, problems_only)

        status.objects = with_consul
        status.extra["consul"] = self.status_json
        status.dependencies["consul"] = self.readiness  # /readyz, while some Backend names a service
        self.plane.on_translation = self.sync  # every translation applied, published or unchanged

    def sync(self, translation: Translation) -> None:
        """A translation was applied: follow the Consul services its Backends name now."""
        clusters: dict[str, ConsulQuery] = {}
        backends: dict[tuple[str, str, str, str], ConsulQuery] = {}
        for backend in translation.backends.values():
            spec = backend.spec.consul
            if spec is None:
                continue
            query = ConsulQuery(normalize_address(spec.address) if spec.address else self.default_address,
                                spec.service, spec.datacenter, tuple(spec.tags), spec.only_passing)
            clusters[cluster_name(backend)] = query
            backends[("meshgate.io", "Backend", backend.metadata.namespace, backend.metadata.name)] = query
        left = [c for c in self.clusters if c not in clusters]
        self.clusters, self.backends = clusters, backends
        for query in set(clusters.values()) - set(self.watches):
            self._start(query)
        for query in set(self.watches) - set(clusters.values()):
            self._stop(query)
        for cluster, query in clusters.items():
            self._push(cluster, self.watches[query])
        if left:
            # A Backend no longer fed by Consul (deleted, or static endpoints now): drop what was
            # set for it, so that its own endpoints apply, and translate once more to send them.
            for cluster in left:
                self.plane.endpoints.pop(cluster, None)
                self._sent.pop(cluster, None)
            asyncio.get_running_loop().create_task(self.plane.reload_in_thread())

    async def close(self) -> None:
        for query in list(self.watches):
            self._stop(query)
        tasks = list(self._tasks.values())
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()

    # -- watches -------------------------------------------------------------------------------

    def _client(self, address: str) -> Any:
        client = self._clients.get(address)
        if client is None:
            import consul.aio

            url = urlsplit(address)
            client = self._clients[address] = consul.aio.Consul(host=url.hostname, port=url.port, scheme=url.scheme)
        return client

    def _start(self, query: ConsulQuery) -> None:
        watch = ServiceWatch(self._client(query.address), query, self._changed, token=self.token, wait=self.wait,
                             max_backoff=self.max_backoff)
        self.watches[query] = watch
        self._tasks[query] = asyncio.get_running_loop().create_task(watch.run(), name=f"consul {query.service}")
        log.info("following Consul service", extra={"service": query.service, "address": query.address})

    def _stop(self, query: ConsulQuery) -> None:
        self.watches.pop(query, None)
        task = self._tasks.pop(query, None)
        if task is not None:
            task.cancel()

    def _changed(self, watch: ServiceWatch) -> None:
        if self.watches.get(watch.query) is not watch:
            return  # stopped meanwhile
        for cluster, query in self.clusters.items():
            if query == watch.query:
                self._push(cluster, watch)

    def _push(self, cluster: str, watch: ServiceWatch) -> None:
        """Hand the watch's endpoints to the plane (EDS alone) if they differ from the last sent."""
        if watch.endpoints is None or self._sent.get(cluster) == watch.endpoints:
            return
        self._sent[cluster] = watch.endpoints
        self.plane.set_cluster_endpoints(cluster, watch.endpoints)

    # -- status --------------------------------------------------------------------------------

    def condition(self, watch: ServiceWatch) -> dict[str, str]:
        fresh = watch.reason == "Synced"
        return {"type": CONDITION, "status": "True" if fresh else "False", "reason": watch.reason,
                "message": watch.message}

    def _objects(self, objects: Any, problems_only: bool) -> list[dict]:
        """The plane's object list, with a Consul Backend's freshness among its conditions; a
        Backend whose endpoints are stale is a problem, listed in /status."""
        entries = objects(problems_only)
        extra = {key: self.condition(self.watches[q]) for key, q in self.backends.items() if q in self.watches}
        if not extra:
            return entries
        listed = set()
        for entry in entries:
            key = ("meshgate.io", entry.get("kind"), entry.get("namespace"), entry.get("name"))
            if key in extra:
                entry["conditions"] = [*entry["conditions"], extra[key]]
                listed.add(key)
        translation = self.plane.translation
        if problems_only and translation is not None:
            for key, condition in sorted(extra.items()):
                status = translation.status.objects.get(key)
                if key not in listed and condition["status"] == "False" and status is not None:
                    entry = status.as_dict()
                    entry["conditions"] = [*entry["conditions"], condition]
                    entries.append(entry)
        return entries

    def readiness(self) -> dict[str, Any] | None:
        """Consul as a /readyz dependency: ok while every followed service is synced. Not gating:
        a stale service keeps serving its last known endpoints (its Backend's status says so)."""
        if not self.watches:
            return None  # no Backend names a Consul service
        failing = {w.query.describe(): f"{w.reason}: {w.message}" for w in self.watches.values() if w.reason != "Synced"}
        message = (f"{len(self.watches)} service(s) synced" if not failing
                   else "; ".join(f"{name}: {why}" for name, why in sorted(failing.items())))
        return {"ok": not failing, "gating": False, "address": self.default_address, "services": len(self.watches),
                "failing": failing, "message": message}

    def status_json(self) -> dict[str, Any]:
        return {"address": self.default_address, "token": self.token is not None,
                "services": [w.as_dict() for w in self.watches.values()]}
