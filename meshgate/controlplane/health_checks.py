"""Custom health checks (`--health-check NAME=URL[,optional][,interval=SECONDS]`), in `/readyz`.

A platform team often knows of something else the gateway needs (a database the auth service
uses, an internal IdP, a license server): each check probes one URL in the background and
`/readyz` reports it under `dependencies.NAME` with its last check and error, like the built-in
ones (meshgate.controlplane.readiness). A check gates readiness unless it is declared `optional`,
then a failure only marks the control plane degraded.

- `http://` / `https://`: a GET answered 2xx or 3xx within the timeout is ok;
- `tcp://HOST:PORT`: a TCP connection accepted within the timeout is ok.

Probes run every `interval` seconds off the request path: `/readyz` reads the last result and
never waits for a probe. Liveness (`/healthz`) never depends on them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

INTERVAL_S = 5.0
TIMEOUT_S = 2.0


@dataclass(frozen=True)
class HealthCheckSpec:
    name: str
    url: str
    gating: bool = True
    interval: float = INTERVAL_S


def parse_health_check(text: str) -> HealthCheckSpec:
    """`NAME=URL[,optional][,interval=SECONDS]` -> HealthCheckSpec; ValueError saying what is wrong."""
    name, sep, rest = text.partition("=")
    url, *options = rest.split(",")
    if not sep or not name.strip() or not url.strip():
        raise ValueError(f"{text!r}: expected NAME=URL[,optional][,interval=SECONDS]")
    name, url = name.strip(), url.strip()
    gating, interval = True, INTERVAL_S
    for option in (o.strip() for o in options):
        key, _, value = option.partition("=")
        if option == "optional":
            gating = False
        elif key == "interval":
            try:
                interval = float(value.removesuffix("s"))
            except ValueError:
                interval = 0.0
            if not 0.1 <= interval <= 3600:
                raise ValueError(f"{text!r}: interval must be 0.1 to 3600 seconds, not {value!r}")
        else:
            raise ValueError(f"{text!r}: unknown option {option!r} (known: optional, interval=SECONDS)")
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"{text!r}: the URL has no host")
    elif parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port:
            raise ValueError(f"{text!r}: expected tcp://HOST:PORT")
    else:
        raise ValueError(f"{text!r}: the URL must start with http://, https:// or tcp://")
    return HealthCheckSpec(name, url, gating=gating, interval=interval)


class ProbeCheck:
    """A probe run every `interval` seconds in the background and its last result (a readiness
    Check: call it for /readyz's detail). `probe` is an async function returning a detail for
    the message, raising on failure."""

    def __init__(self, target: str, probe, *, gating: bool = True, interval: float = INTERVAL_S,  # noqa: ANN001
                 timeout: float = TIMEOUT_S, where: str | None = None) -> None:
        self.target = target
        self._probe = probe
        self.gating, self.interval, self.timeout = gating, interval, timeout
        self.where = where  # where the probe runs from, when that matters to the reader
        self.ok = False
        self.error: str | None = "not checked yet"
        self.detail = ""
        self.last_check: float | None = None
        self.task: asyncio.Task | None = None

    def __call__(self) -> dict[str, Any]:
        message = f"{self.target}: {self.error}" if self.error else f"{self.target} {self.detail or 'ok'}"
        out = {"ok": self.ok, "gating": self.gating, "target": self.target, "last_check": self.last_check,
               "error": self.error, "message": message}
        if self.where:
            out["from"] = self.where
        return out

    async def probe(self) -> None:
        try:
            self.detail = await asyncio.wait_for(self._probe(), timeout=self.timeout) or ""
            self.ok, self.error = True, None
        except asyncio.TimeoutError:
            self.ok, self.error = False, f"no answer within {self.timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - every failure is the check's result
            self.ok, self.error = False, str(exc) or type(exc).__name__
        self.last_check = time.time()

    async def run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.interval)


def url_probe(url: str):  # noqa: ANN201
    """A probe of a `--health-check` URL: HTTP(S) GET answered below 400, or a TCP connection."""
    async def probe() -> str:
        parts = urlsplit(url)
        if parts.scheme == "tcp":
            _reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.close()
            await writer.wait_closed()
            return "ok"
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(url, allow_redirects=False) as resp:
            if resp.status >= 400:
                raise RuntimeError(f"HTTP {resp.status}")
        return "ok"

    return probe


class CustomCheck(ProbeCheck):
    """A `--health-check` (HealthCheckSpec)."""

    def __init__(self, spec: HealthCheckSpec, timeout: float = TIMEOUT_S) -> None:
        super().__init__(spec.url, url_probe(spec.url), gating=spec.gating, interval=spec.interval, timeout=timeout)
        self.spec = spec


async def start_checks(stack, status, specs: list[HealthCheckSpec]) -> None:  # noqa: ANN001
    """Probe each check once (so /readyz is right from the start), register it in
    `status.dependencies`, and keep probing until `stack` (an AsyncExitStack) closes."""
    checks = [CustomCheck(spec) for spec in specs]
    await asyncio.gather(*(c.probe() for c in checks))
    for check in checks:
        status.dependencies[check.spec.name] = check
        task = asyncio.create_task(check.run())
        stack.callback(task.cancel)
