"""The live status page of the status server: `GET /` (plain HTML + a little vanilla JS,
`status_page.html`) and `GET /status/events` (server-sent events: one JSON `state` per change).

A state holds the listeners and routes with their conditions, the backends with their endpoints'
health (from Envoy's view, its admin `/clusters`, when this process supervises the Envoy, as
`meshgate run` does; else from the published config), recent rejected configs and NACKs, and per
route rule the request rate and errors (from the Envoy's admin `/stats`, as deltas between two
samples). The Envoy is polled only while a page is open, every `interval` seconds; control plane
events (reloads, ACKs, NACKs) push a new state at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from meshgate.controlplane.status import ControlPlaneStatus
from meshgate.controlplane.status_metrics import object_ok

TEMPLATE = Path(__file__).with_name("status_page.html")
# vhost.<virtual host>.route.<rule stat prefix>.upstream_rq_<code, class, total> (no dots in either name)
_ROUTE_STAT = re.compile(r"^vhost\.([^.]+)\.route\.([^.]+)\.upstream_rq_(total|[1-5]xx)$")
_HISTORY = 20  # recent rejected configs and NACKs kept for the page


class StatusPage:
    def __init__(self, status: ControlPlaneStatus, interval: float = 1.0) -> None:
        self.status = status
        self.interval = interval
        self.clients: set[asyncio.Queue[str | None]] = set()  # None: the server stops
        self.rejected: deque[dict[str, Any]] = deque(maxlen=_HISTORY)  # {at, lines}
        self.nack_history: deque[dict[str, Any]] = deque(maxlen=_HISTORY)
        self._last_errors: list[str] = []
        self._last_nack_seq = 0
        self._previous: tuple[float, dict[tuple[str, str], dict[str, float]]] | None = None
        self.traffic: dict[tuple[str, str], dict[str, float]] = {}  # (vhost, rule) -> rps, errors/s, totals
        self.envoy_view: dict[str, list[dict[str, Any]]] | None = None  # cluster -> endpoints with health
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._unsubscribe = status.subscribe(self._on_change)

    # -- history of what went wrong ------------------------------------------------------------
    def _record(self) -> None:
        errors = list(self.status._config_errors)  # noqa: SLF001 - config errors only (NACKs below)
        if errors and errors != self._last_errors:
            self.rejected.appendleft({"at": time.time(), "lines": errors[:20]})
        self._last_errors = errors
        for nack in self.status.nacks():
            if nack["seq"] > self._last_nack_seq:
                self.nack_history.appendleft({k: nack[k] for k in ("node", "type", "version", "error", "at")})
        self._last_nack_seq = self.status.nack_seq

    def _on_change(self) -> None:
        # Coalesced: a reload brings a burst of ACKs; one state 0.2 s later shows them all.
        if not self.clients:
            self._record()
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(0.2, self._flush)

    def _flush(self) -> None:
        self._pending = None
        self.publish()

    def publish(self) -> None:
        if not self.clients:
            self._record()
            return
        message = f"event: state\ndata: {json.dumps(self.state(), sort_keys=True)}\n\n"
        for queue in list(self.clients):
            if queue.qsize() < 4:  # a slow page skips states; the next one is whole anyway
                queue.put_nowait(message)

    # -- the state the page shows --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        self._record()
        objects = self.status.objects(False)
        routes_traffic = self._traffic_by_route()
        listeners, routes, backends = [], [], []
        for o in objects:
            entry = {"kind": o["kind"], "namespace": o["namespace"], "name": o["name"], "ok": object_ok(o),
                     "conditions": o["conditions"]}
            if o["kind"] == "Gateway":
                for listener in o.get("listeners", []):
                    listeners.append({"gateway": f"{o['namespace']}/{o['name']}", "name": listener["name"],
                                      "attached_routes": listener["attachedRoutes"], "conditions": listener["conditions"],
                                      "ok": object_ok(listener)})
            elif o["kind"] in ("HTTPRoute", "GRPCRoute"):
                key = f"{o['kind'].lower()}/{o['namespace']}/{o['name']}"
                routes.append({**entry, "rules": routes_traffic.get(key, [])})
            elif o["kind"] == "Backend":
                backends.append(entry)
        for backend in backends:
            backend["endpoints"], backend["health_source"] = self._endpoints(f"backend/{backend['namespace']}/{backend['name']}")
        nodes = [{"node": self.status.label(n), "in_sync": self.status.in_sync(n), "acked": n.acked}
                 for n in self.status.nodes.values()]
        return {
            "at": time.time(), "config_version": self.status.version, "ready": self.status.ready(),
            "last_error": self.status.last_error, "listeners": listeners, "routes": routes, "backends": backends,
            "nodes": nodes, "nacks": [{k: n[k] for k in ("node", "type", "version", "error", "at")} for n in self.status.nacks()],
            "rejected": list(self.rejected), "nack_history": list(self.nack_history),
            "traffic_source": "envoy" if self._admin_url() else None,
        }

    def _traffic_by_route(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for (vhost, rule), t in sorted(self.traffic.items()):
            route = rule.rsplit("/rule/", 1)[0]
            out.setdefault(route, []).append({"rule": rule, "virtual_host": vhost, **t})
        return out

    def _endpoints(self, cluster: str) -> tuple[list[dict[str, Any]], str]:
        if self.envoy_view is not None and cluster in self.envoy_view:
            return self.envoy_view[cluster], "envoy"
        from meshgate.xds.snapshot import ENDPOINT

        snapshot = self.status.snapshot
        cla = snapshot.resources.get(ENDPOINT, {}).get(cluster) if snapshot is not None else None
        if cla is None:
            return [], "config"
        return [{"address": f"{e.endpoint.address.socket_address.address}:{e.endpoint.address.socket_address.port_value}",
                 "healthy": None, "detail": "configured"}
                for locality in cla.endpoints for e in locality.lb_endpoints], "config"

    # -- polling the local Envoy -----------------------------------------------------------------
    def _admin_url(self) -> str | None:
        envoy = self.status.extra.get("envoy")
        info = envoy() if callable(envoy) else envoy
        return (info or {}).get("admin") or None

    async def _poll(self) -> None:
        while self.clients:
            admin = self._admin_url()
            if admin:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    await self._sample(admin)
            self.publish()
            await asyncio.sleep(self.interval)
        self._poller = None

    async def _sample(self, admin: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
        async with self._session.get(f"{admin}/stats", params={"format": "json", "filter": r"^vhost\..*\.upstream_rq_"}) as resp:
            stats = (await resp.json(content_type=None))["stats"]
        now = time.monotonic()
        totals: dict[tuple[str, str], dict[str, float]] = {}
        for s in stats:
            m = _ROUTE_STAT.match(s.get("name", ""))
            if m and "value" in s:
                totals.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = float(s["value"])
        if self._previous is not None:
            then, before = self._previous
            elapsed = max(now - then, 1e-3)
            traffic = {}
            for key, t in totals.items():
                b = before.get(key, {})
                rate = lambda name: max(t.get(name, 0) - b.get(name, 0), 0) / elapsed  # noqa: E731
                traffic[key] = {"rps": round(rate("total"), 2), "errors_per_s": round(rate("5xx"), 2),
                                "client_errors_per_s": round(rate("4xx"), 2), "total": t.get("total", 0),
                                "errors": t.get("5xx", 0)}
            self.traffic = traffic
        self._previous = (now, totals)
        async with self._session.get(f"{admin}/clusters", params={"format": "json"}) as resp:
            clusters = (await resp.json(content_type=None)).get("cluster_statuses", [])
        self.envoy_view = {c["name"]: [endpoint_health(h) for h in c.get("host_statuses", [])] for c in clusters}

    # -- HTTP ------------------------------------------------------------------------------------
    async def page(self, _: web.Request) -> web.Response:
        return web.Response(text=TEMPLATE.read_text(), content_type="text/html",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy":
                                     "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
                                     "connect-src 'self'; img-src 'self' data:"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.clients.add(queue)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            await resp.write(f"retry: 2000\nevent: state\ndata: {json.dumps(self.state(), sort_keys=True)}\n\n".encode())
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=15)
                except asyncio.TimeoutError:
                    message = ": keep-alive\n\n"  # proxies close idle streams
                if message is None:
                    break
                await resp.write(message.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(queue)
        return resp

    async def close(self, _: web.Application | None = None) -> None:
        self._unsubscribe()
        if self._pending is not None:
            self._pending.cancel()
        for queue in list(self.clients):  # open streams end now, not at aiohttp's shutdown timeout
            queue.put_nowait(None)
        self.clients.clear()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        if self._session is not None:
            await self._session.close()


def endpoint_health(h: dict[str, Any]) -> dict[str, Any]:
    """One host of Envoy's admin `/clusters` JSON: its address, whether Envoy routes to it, why not."""
    sa = h.get("address", {}).get("socket_address", {})
    health = h.get("health_status", {})
    failed = sorted(k for k, v in health.items() if k.startswith("failed_") and v is True)
    eds = health.get("eds_health_status", "UNKNOWN")
    healthy = not failed and eds in ("HEALTHY", "UNKNOWN")
    return {"address": f"{sa.get('address')}:{sa.get('port_value')}", "healthy": healthy,
            "detail": ", ".join(failed) if failed else eds.lower()}


def add_status_page(app: web.Application, status: ControlPlaneStatus) -> StatusPage:
    """Serve the page at `/` and its events at `/status/events` on the status server's app."""
    page = StatusPage(status)
    app.router.add_get("/", page.page)
    app.router.add_get("/status/events", page.events)
    app.on_shutdown.append(page.close)
    return page
