"""What the sample upstreams share: a gRPC server's life cycle, and running a few named servers
from a shell until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import Any

import grpc


class GrpcServer:
    """A grpc.aio server on (host, port); subclasses give `_handlers()`. Plaintext HTTP/2, or TLS
    (h2 by ALPN) with `credentials` (`grpc.ssl_server_credentials`)."""

    kind = "gRPC"

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0,
                 credentials: grpc.ServerCredentials | None = None) -> None:
        self.name = name
        self.host = host
        self.port = port  # the bound port once started
        self.credentials = credentials
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def _handlers(self) -> grpc.GenericRpcHandler:
        raise NotImplementedError

    async def start(self) -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._handlers(),))
        address = f"{self.host}:{self.port}"
        if self.credentials is not None:
            self.port = server.add_secure_port(address, self.credentials)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"{self.kind} server {self.name!r} could not bind {self.host}")
        await server.start()
        self._server = server

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(servers: list[Any], label: str) -> None:
    """Start `servers` (each with start/stop, name and `url` or `target`), then wait for SIGTERM
    or SIGINT and stop them."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for server in servers:
            await server.start()
            print(f"{label} {server.name} listening on {getattr(server, 'url', None) or server.target}", flush=True)
        await stop.wait()
    finally:
        for server in servers:
            await server.stop()


def main_for(factory: Callable[[str, str, int], Any], description: str, label: str) -> Callable[..., None]:
    """A `main(argv)` that runs `--name N --port P` pairs of `factory(name, host, port)` servers."""

    def main(argv: list[str] | None = None) -> None:
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--name", action="append", required=True, help="upstream name (repeat)")
        parser.add_argument("--port", action="append", type=int, required=True, help="port (repeat)")
        parser.add_argument("--host", default="127.0.0.1")
        args = parser.parse_args(argv)
        if len(args.name) != len(args.port):
            parser.error("give one --port per --name")
        asyncio.run(serve([factory(n, args.host, p) for n, p in zip(args.name, args.port)], label))

    return main
