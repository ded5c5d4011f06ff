"""The control plane's own HTTP server: health, readiness, Prometheus metrics and status.

- `/healthz`: 200 while the process runs (Kubernetes liveness probe).
- `/readyz`: 200 once a snapshot exists, an Envoy has ACKed config and every dependency in use is
  ok, else 503 (readiness probe); JSON detail of each part either way (`readiness.py`).
- `/metrics`: Prometheus text format.
- `/status`: JSON: config version, last error, nodes and what each has ACKed or NACKed, and the
  objects that have a problem (conditions per object).
- `/status/objects`: JSON: every object with its conditions.
- `/`: the live status page (HTML), updated by server-sent events from `/status/events`.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshgate.controlplane.readiness import readiness
from meshgate.controlplane.status_page import add_status_page
from meshgate.controlplane.status import ControlPlaneStatus


def status_app(status: ControlPlaneStatus) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        # 200 or 503 for the probe; the JSON says which part is not ready (readiness.py).
        detail = readiness(status)
        return web.json_response(detail, status=200 if detail["ready"] else 503, dumps=_dumps)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(status.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_json(_: web.Request) -> web.Response:
        return web.json_response(status.as_json(), dumps=_dumps)

    async def objects_json(_: web.Request) -> web.Response:
        return web.json_response(status.objects(False), dumps=_dumps)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status_json)
    app.router.add_get("/status/objects", objects_json)
    add_status_page(app, status)  # `/` and `/status/events` (status_page.py)
    return app


def _dumps(obj: object) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True)


async def start_status_server(status: ControlPlaneStatus, host: str = "127.0.0.1", port: int = 19000) -> tuple[web.AppRunner, int]:
    """Start the status server; returns the runner (call `cleanup()` to stop) and the bound port."""
    runner = web.AppRunner(status_app(status), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound
