"""A fake Consul agent that speaks Consul's real HTTP API, as far as meshgate's Consul provider uses
it, so that the production client (`py-consul`, unmodified) runs against it in tests.

What a real agent does and this one imitates (https://developer.hashicorp.com/consul/api-docs):

- `GET /v1/catalog/service/NAME` (the catalog's instances of a service, with no health) and
  `GET /v1/health/service/NAME` (each instance with its node and checks; `?passing` keeps only
  instances whose checks are all passing, so a `warning` is left out too), both with `dc`
  (another datacenter is `500 No path to datacenter`) and `tag` (repeatable: an instance must
  carry every tag asked for);
- blocking queries: every answer carries `X-Consul-Index`, the Raft index of the last write that
  touched the service (one counter for the whole agent, as the Raft log is). A request with
  `index=N` (N > 0) hangs until that index moves past N or `wait` ends (default 5m, at most 10m,
  plus up to wait/16 of jitter, as Consul adds), then answers the current state. A timeout is a
  normal 200 with the same index: a client must not read it as a change;
- ACLs (`acl_tokens`): the token comes in `X-Consul-Token` (or `Authorization: Bearer`, or the
  legacy `?token=`); an unknown one is `403 ACL not found`, none at all is a 403 naming the
  anonymous token;
- `GET /v1/status/leader`, `X-Consul-KnownLeader`/`X-Consul-LastContact` headers.

For tests: `register`, `deregister`, `set_check` (an instance's health check turns passing /
warning / critical), `stop` (unreachable: connection refused, open blocking queries are cut),
`start` again on the same port, `restart(reset_index=True)` (a new cluster, or a restored
snapshot: indexes start low again, so they go *backwards* for a client) and `force_index` (the
index the agent reports, e.g. 0, which a real agent should never send but some have).

Not imitated: ACL *filtering* (a real agent whose anonymous policy can't read a service may answer
a filtered, empty list with `X-Consul-Results-Filtered-By-ACLs` instead of a 403), `near`,
`filter` expressions, node-meta, consistency modes, the agent's write endpoints (tests register
through the helpers).
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"  # Consul's built-in anonymous token
MAX_WAIT = 600.0  # Consul caps `wait` at 10 minutes
DEFAULT_WAIT = 300.0


@dataclass
class Instance:
    """One service instance on a node, with its health check (the node's own `serfHealth` check
    is always passing here)."""

    id: str
    service: str
    port: int
    address: str = ""  # empty: reached at the node's address (Consul's rule)
    node: str = "node-1"
    node_address: str = "127.0.0.1"
    datacenter: str = "dc1"
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    check: str = "passing"  # passing | warning | critical
    create_index: int = 0
    modify_index: int = 0


class FakeConsul:
    """The agent (see the module doc). `await FakeConsul().start()`; `url` is what a client uses."""

    def __init__(self, *, datacenter: str = "dc1", datacenters: tuple[str, ...] = (),
                 acl_tokens: set[str] | None = None) -> None:
        self.datacenter = datacenter  # the agent's own: what a query without `dc` reads
        self.datacenters = {datacenter, *datacenters}  # reachable ones (WAN-federated)
        self.acl_tokens = acl_tokens  # None: ACLs off
        self.instances: dict[tuple[str, str], Instance] = {}  # (dc, service ID)
        self.requests: list[tuple[str, str]] = []  # (method, path with query), every request seen
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._index = 10  # a fresh cluster's Raft log already holds a few entries
        self._service_index: dict[tuple[str, str], int] = {}  # (dc, service) -> index of its last change
        self._table_index = self._index  # last change of any service: the index of an unknown one
        self._forced: int | None = None
        self._changed = asyncio.Event()  # replaced by a new one on every write
        self._open: dict[int, web.Request] = {}  # blocking queries in progress, by id

    # -- what tests do ---------------------------------------------------------------------------

    def register(self, service: str, port: int, *, id: str | None = None, address: str = "",  # noqa: A002
                 node: str = "node-1", node_address: str = "127.0.0.1", datacenter: str | None = None,
                 tags: list[str] | tuple[str, ...] = (), check: str = "passing",
                 weights: dict[str, int] | None = None, meta: dict[str, str] | None = None) -> str:
        """Register (or re-register) an instance, as `PUT /v1/agent/service/register` would; its ID."""
        dc = datacenter or self.datacenter
        sid = id or f"{service}-{port}"
        old = self.instances.get((dc, sid))
        index = self._write(dc, service, *((old.service,) if old else ()))
        self.instances[(dc, sid)] = Instance(
            sid, service, port, address, node, node_address, dc, list(tags), dict(meta or {}),
            dict(weights or {"Passing": 1, "Warning": 1}), check, old.create_index if old else index, index)
        return sid

    def deregister(self, service_id: str, *, datacenter: str | None = None) -> None:
        dc = datacenter or self.datacenter
        old = self.instances.pop((dc, service_id))
        self._write(dc, old.service)

    def set_check(self, service_id: str, status: str, *, datacenter: str | None = None) -> None:
        """The instance's health check reports `status` (passing, warning or critical)."""
        assert status in ("passing", "warning", "critical"), status
        dc = datacenter or self.datacenter
        instance = self.instances[(dc, service_id)]
        instance.check = status
        instance.modify_index = self._write(dc, instance.service)

    def index_of(self, service: str, datacenter: str | None = None) -> int:
        """The X-Consul-Index a query of `service` is answered with now."""
        if self._forced is not None:
            return self._forced
        return self._service_index.get((datacenter or self.datacenter, service), self._table_index)

    def force_index(self, index: int | None) -> None:
        """Report this index for every query (None: the real one again), and wake blocked queries."""
        self._forced = index
        self._wake()

    async def start(self, port: int = 0) -> FakeConsul:
        """Listen on 127.0.0.1 (`port` 0: any free port; after `stop`, the same one again)."""
        self._runner = web.AppRunner(self._app(), handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        """Unreachable: stop listening and cut every open connection, blocking queries included
        (as when the agent dies). The catalog stays, as a server's Raft log would."""
        for request in list(self._open.values()):
            if request.transport is not None:
                request.transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, *, reset_index: bool = False) -> None:
        """Stop and start on the same port. `reset_index`: the indexes start low again (a new
        cluster, or a snapshot restored from the past), so a client sees them go backwards."""
        await self.stop()
        if reset_index:
            self._index = 2
            self._service_index = {key: 2 for key in self._service_index}
            self._table_index = 2
        await self.start(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- internals -------------------------------------------------------------------------------

    def _write(self, dc: str, *services: str) -> int:
        """One Raft write touching `services`: the new index."""
        self._index += 1
        for service in services:
            self._service_index[(dc, service)] = self._index
        self._table_index = self._index
        self._wake()
        return self._index

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/v1/catalog/service/{service}", self._catalog_service)
        app.router.add_get("/v1/health/service/{service}", self._health_service)
        app.router.add_get("/v1/status/leader", self._leader)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if self.acl_tokens is not None:
            token = (request.headers.get("X-Consul-Token") or request.query.get("token")
                     or request.headers.get("Authorization", "").removeprefix("Bearer ").strip())
            if not token:
                service = request.match_info.get("service", "")
                return web.Response(status=403, text=f"Permission denied: token with AccessorID "
                                    f"'{ANONYMOUS_ACCESSOR}' lacks permission 'service:read' on \"{service}\"")
            if token not in self.acl_tokens:
                return web.Response(status=403, text="ACL not found")
        return await handler(request)

    def _headers(self, index: int) -> dict[str, str]:
        return {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0",
                "X-Consul-Effective-Consistency": "leader"}

    async def _leader(self, request: web.Request) -> web.Response:
        return web.json_response("127.0.0.1:8300")

    async def _query(self, request: web.Request) -> tuple[str, str, list[Instance]] | web.Response:
        """Parse dc/tag/index/wait, block if asked to, and return (dc, service, matching instances)."""
        service = request.match_info["service"]
        dc = request.query.get("dc") or self.datacenter
        if dc not in self.datacenters:
            return web.Response(status=500, text="No path to datacenter")
        try:
            index = int(request.query.get("index", "0"))
        except ValueError:
            return web.Response(status=400, text="Invalid index")
        wait = DEFAULT_WAIT
        if "wait" in request.query:
            wait = _duration(request.query["wait"])
            if wait is None:
                return web.Response(status=400, text="Invalid wait time")
        if index > 0:
            # Blocking query: hang until the service's index passes the client's, or `wait` ends.
            timeout = min(wait, MAX_WAIT)
            timeout += random.uniform(0, timeout / 16)  # Consul's jitter: spreads wake-ups
            deadline = asyncio.get_running_loop().time() + timeout
            self._open[id(request)] = request
            try:
                # A forced index (a misbehaving or restored server) answers at once when it differs.
                while self.index_of(service, dc) <= index and self._forced in (None, index):
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    try:
                        await asyncio.wait_for(self._changed.wait(), left)
                    except asyncio.TimeoutError:
                        break
            finally:
                self._open.pop(id(request), None)
        tags = request.query.getall("tag", [])
        found = [i for (idc, _), i in sorted(self.instances.items())
                 if idc == dc and i.service == service and all(t in i.tags for t in tags)]
        return dc, service, found

    async def _catalog_service(self, request: web.Request) -> web.Response:
        result = await self._query(request)
        if isinstance(result, web.Response):
            return result
        dc, service, found = result
        body = [{
            "ID": f"node-id-{i.node}", "Node": i.node, "Address": i.node_address, "Datacenter": i.datacenter,
            "TaggedAddresses": {"lan": i.node_address, "wan": i.node_address}, "NodeMeta": {},
            "ServiceKind": "", "ServiceID": i.id, "ServiceName": i.service, "ServiceTags": i.tags,
            "ServiceAddress": i.address, "ServicePort": i.port, "ServiceMeta": i.meta,
            "ServiceWeights": i.weights, "ServiceEnableTagOverride": False,
            "CreateIndex": i.create_index, "ModifyIndex": i.modify_index,
        } for i in found]
        return web.json_response(body, headers=self._headers(self.index_of(service, dc)))

    async def _health_service(self, request: web.Request) -> web.Response:
        result = await self._query(request)
        if isinstance(result, web.Response):
            return result
        dc, service, found = result
        if "passing" in request.query and request.query["passing"].lower() not in ("0", "false"):
            found = [i for i in found if i.check == "passing"]
        body = [{
            "Node": {"ID": f"node-id-{i.node}", "Node": i.node, "Address": i.node_address, "Datacenter": i.datacenter,
                     "TaggedAddresses": {"lan": i.node_address, "wan": i.node_address}, "Meta": {},
                     "CreateIndex": 5, "ModifyIndex": 5},
            "Service": {"ID": i.id, "Service": i.service, "Tags": i.tags, "Address": i.address, "Port": i.port,
                        "Meta": i.meta, "Weights": i.weights, "EnableTagOverride": False,
                        "CreateIndex": i.create_index, "ModifyIndex": i.modify_index},
            "Checks": [
                {"Node": i.node, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
                 "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": ""},
                {"Node": i.node, "CheckID": f"service:{i.id}", "Name": f"Service '{i.service}' check",
                 "Status": i.check, "Output": "", "ServiceID": i.id, "ServiceName": i.service},
            ],
        } for i in found]
        return web.json_response(body, headers=self._headers(self.index_of(service, dc)))


def _duration(text: str) -> float | None:
    """A Go duration as Consul reads `wait` ("10s", "5m", "100ms", "1m30s"); None if malformed."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)
