"""The edge companion as a supervised subprocess of `meshgate run` (as Envoy is one): started when
the config needs it, restarted if it dies (after a pause, doubling up to 10 s), stopped by its
PID on exit. In a cluster it is a Deployment of its own (`meshgate edge`), not this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger("meshgate.edge.process")

# A pause before a restart: a companion that dies at once isn't restarted in a tight loop (and
# while it is down, Envoy applies the policy's failure mode).
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 10.0


class EdgeProcess:
    def __init__(self, xds_address: str, address: str, metrics_address: str | None, log_path: Path,
                 log_level: str = "info") -> None:
        self.xds_address, self.address, self.metrics_address = xds_address, address, metrics_address
        self.log_path = log_path
        self.log_level = log_level
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "meshgate", "edge", "--xds-address", self.xds_address, "--address", self.address,
                "--metrics-address", self.metrics_address or "off", "--node-id", "meshgate-edge-local",
                "--log-level", self.log_level]

    async def _spawn(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(*self._command(), stdin=asyncio.subprocess.DEVNULL,
                                                             stdout=out, stderr=out)
        log.info("edge companion started", extra={"pid": self.proc.pid, "address": self.address})

    async def start(self, ready_timeout: float = 15.0) -> None:
        await self._spawn()
        await self.wait_serving(ready_timeout)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="edge-supervisor")

    async def wait_serving(self, timeout: float) -> None:
        """Until the companion's gRPC health says SERVING (its first config is in)."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"the edge companion exited with {self.proc.returncode} (log: {self.log_path})")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"the edge companion did not become ready in {timeout:g}s (log: {self.log_path})")
                await asyncio.sleep(0.1)

    async def _supervise(self) -> None:
        delay = RESTART_DELAY_S
        while not self._stopping:
            proc = self.proc
            code = await proc.wait()
            if self._stopping:
                return
            log.warning("edge companion exited; restarting", extra={"pid": proc.pid, "code": code, "in_s": delay})
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn()
                self.restarts += 1
            except OSError as exc:
                log.error("cannot restart the edge companion", extra={"error": str(exc)})
            delay = min(delay * 2, MAX_RESTART_DELAY_S)

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to our own child by PID; SIGKILL if it doesn't exit in time."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
