"""A sample HTTP upstream: echoes every request back as JSON.

Used by the quickstart, the tests and the benchmarks as the service behind Envoy. Every method
and path is answered with

    {"upstream": NAME, "method": ..., "path": raw path without query, "query": {k: v},
     "headers": {lower-cased name: value}, "body": request body as text}

and the response header `x-upstream: NAME`, so a test can see which upstream Envoy picked and
what Envoy changed on the way (headers added/removed, path rewritten).

Special path segments (matched anywhere in the path, so they survive un-rewritten prefixes):
  /__status/NNN   answer with status NNN
  /__sleep/MS     wait MS milliseconds before answering (timeouts, retries)

Run from a shell:  python -m meshgate.devtools.upstreams --name a --port 9001 --name b --port 9002
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

from aiohttp import web

from meshgate.devtools._serve import main_for

__all__ = ["EchoServer", "main"]

_STATUS_RE = re.compile(r"/__status/(\d{3})(?:/|$)")
_SLEEP_RE = re.compile(r"/__sleep/(\d+)(?:/|$)")
_NO_BODY_STATUSES = {204, 304} | set(range(100, 200))


class EchoServer:
    """An aiohttp server (HTTP/1.1) that answers every request with a JSON echo."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self.port = port  # the bound port once started (useful when 0 was asked)
        self._runner: web.ServerRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        # Bind ourselves so port 0 resolves to a known port before anyone connects.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        server = web.Server(self._handle, access_log=None)
        # Short shutdown_timeout: stop() must not wait for a pending /__sleep request.
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> EchoServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        status = 200
        if m := _STATUS_RE.search(path):
            status = int(m.group(1))
        if m := _SLEEP_RE.search(path):
            await asyncio.sleep(int(m.group(1)) / 1000)
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body = await request.read()
        echo: dict[str, Any] = {
            "upstream": self.name,
            "method": request.method,
            "path": path,
            "query": dict(request.query),
            "headers": headers,
            "body": body.decode("utf-8", "replace"),
        }
        resp_headers = {"x-upstream": self.name}
        if status in _NO_BODY_STATUSES:
            return web.Response(status=status, headers=resp_headers)
        return web.Response(
            status=status,
            headers=resp_headers,
            body=json.dumps(echo).encode(),
            content_type="application/json",
        )


main = main_for(EchoServer, "Run sample HTTP echo upstreams.", "upstream")


if __name__ == "__main__":
    main()
