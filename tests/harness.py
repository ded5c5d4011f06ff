"""Test helpers: run the real `meshgate run` (control plane + Envoy + sample upstreams) as a
subprocess, and talk to it like a user would. Every wait is bounded; every process is stopped."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(path: Path, text: str) -> None:
    """Write a config file atomically (a hidden temp file, then rename), as editors and ConfigMap
    mounts do, so a watcher never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise  # a definite failure (e.g. the process exited): don't wait for the deadline
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def upstream(self) -> str | None:
        return self.headers.get("x-upstream")


def request(port: int, path: str, *, method: str = "GET", host: str | None = None,
            headers: dict[str, str] | None = None, body: bytes | None = None, timeout: float = 5.0) -> Response:
    """One HTTP/1.1 request to 127.0.0.1:port (fresh connection, so Envoy balances per request)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if host:
            hdrs["Host"] = host
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback test URL
        return json.loads(resp.read())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class ThreadedHTTPServer:
    """A `http.server` handler class served on 127.0.0.1 (a free port) from a daemon thread:
    small upstreams a test controls (a JWKS server, a recorder of mirrored requests).
    `with ThreadedHTTPServer(Handler) as server:`; `server.port`."""

    def __init__(self, handler: type) -> None:
        from http.server import ThreadingHTTPServer
        import threading

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThreadedHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class EchoProcess:
    """`python -m meshgate.devtools.upstreams` on a fixed port: an upstream that can be killed."""

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "meshgate.devtools.upstreams", "--name", self.name,
                                      "--port", str(self.port)], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        assert b"listening" in self.proc.stdout.readline(), f"upstream {self.name} did not start"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class Meshgate:
    """A `meshgate run` subprocess with its ports and logs."""

    config: list[str]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    # 0: the servers bind a free port themselves (no race with other processes picking ports);
    # the status port is then read from the summary `meshgate run` prints.
    xds_port: int = 0
    status_port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "meshgate.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "meshgate.stderr"

    def start(self, timeout: float = 30.0) -> Meshgate:
        cmd = [sys.executable, "-m", "meshgate", "run", *self.config,
               "--xds-address", f"127.0.0.1:{self.xds_port}", "--status-address", f"127.0.0.1:{self.status_port}",
               "--admin-port", "0", "--stats-address", "127.0.0.1:0",  # any free ports: no clash with a running meshgate
               "--state-dir", str(self.workdir / "state"), *self.args]
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.stdout_path.open("wb"),
                                     stderr=self.stderr_path.open("wb"), stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: self._ready(), timeout=timeout, what="meshgate run to be ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"meshgate did not become ready:\n{self.output()}") from None
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"meshgate exited with {self.proc.returncode}:\n{self.output()}")
        if not self.status_port:
            found = re.search(rb"status: +http://127\.0\.0\.1:(\d+)/status", self.stdout_path.read_bytes())
            if not found:
                return False
            self.status_port = int(found.group(1))
        status = self.status()
        return bool(status.get("ready")) and "envoy" in status and b"Ctrl-C" in self.stdout_path.read_bytes()

    def status(self) -> dict[str, Any]:
        return get_json(f"{self.status_url}/status", timeout=2)

    def objects(self) -> list[dict[str, Any]]:
        """Every object with its conditions (`/status` lists only those with a problem)."""
        return get_json(f"{self.status_url}/status/objects", timeout=5)

    @property
    def envoy_pid(self) -> int:
        return self.status()["envoy"]["pid"]

    @property
    def admin_url(self) -> str:
        return self.status()["envoy"]["admin"]

    def config_dump(self) -> dict[str, Any]:
        return get_json(f"{self.admin_url}/config_dump")

    def dump_section(self, kind: str) -> dict[str, Any]:
        """One section of Envoy's /config_dump, e.g. "ListenersConfigDump"."""
        return next(c for c in self.config_dump()["configs"] if c["@type"].rsplit(".", 1)[-1] == kind)

    def output(self) -> str:
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return f"--- stdout\n{out[-4000:]}\n--- stderr\n{err[-8000:]}"

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, as an operator would; SIGKILL only if it doesn't exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"meshgate did not stop on SIGTERM:\n{self.output()}") from None


def write_tls_files(directory: Path, hostnames: list[str]) -> Path:
    """A test CA and a server certificate for the hostnames; returns the CA file for clients."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(*hostnames)
    (directory / "tls.crt").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    (directory / "tls.key").write_bytes(cert.private_key_pem.bytes())
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file


class RequestLoop:
    """GET `path` one request after another from a thread, for a `with` block; each result is
    (start time, status or error name, upstream that answered)."""

    def __init__(self, port: int, path: str = "/") -> None:
        self.port, self.path = port, path
        self.results: list[tuple[float, int | str, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                r = request(self.port, self.path, timeout=5)
                self.results.append((started, r.status, r.upstream))
            except OSError as exc:
                self.results.append((started, type(exc).__name__, None))

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def since(self, t: float) -> list[tuple[float, int | str, str | None]]:
        return [r for r in self.results if r[0] >= t]
