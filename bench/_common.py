"""Shared helpers of the meshgate benchmarks: free ports, child processes cleaned up by PID,
an nginx upstream, meshgate's /status, /proc memory figures.

Every process a benchmark starts is registered in a `Processes` object; `Processes.stop_all()`
(run from `finally`, also on Ctrl-C and SIGTERM) stops each one by its PID: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
MESHGATE = ROOT / ".venv" / "bin" / "meshgate"


def meshgate_cli() -> str:
    """The `meshgate` console script of the venv this Python runs in (falls back to PATH)."""
    here = Path(sys.executable).parent / "meshgate"
    if here.exists():
        return str(here)
    if MESHGATE.exists():
        return str(MESHGATE)
    found = shutil.which("meshgate")
    if not found:
        sys.exit("meshgate CLI not found: run from the project venv (.venv/bin/python bench/...)")
    return found


def need(binary: str, package: str) -> str:
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if not found:
        sys.exit(f"{binary} not found: apt-get install -y {package}  (see bench/requirements-debian.txt)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sigterm_as_interrupt() -> None:
    """Make SIGTERM behave like Ctrl-C, so `finally` blocks clean up in both cases."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


class Processes:
    """Child processes of one benchmark run, stopped by PID in reverse start order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.extra_pids: list[tuple[str, int]] = []  # grandchildren (meshgate's Envoy)

    def start(self, name: str, cmd: list[str], *, log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "ab") as out:
            # Own session: Ctrl-C in the terminal reaches only this script, which stops the children.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def adopt(self, name: str, pid: int) -> None:
        """Also stop `pid` at the end if it is still alive (e.g. an Envoy whose parent was killed)."""
        self.extra_pids.append((name, pid))

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop pid {proc.pid}: {exc}", file=sys.stderr)
        self.procs.clear()
        for name, pid in self.extra_pids:
            if _alive(pid):
                print(f"warning: {name} pid {pid} outlived its parent; killing it", file=sys.stderr)
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.extra_pids.clear()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# --- nginx upstream ---------------------------------------------------------------------------

NGINX_BODY = "hello from nginx\n"
BIG_BODY = ("meshgate bench " * 74)[:1024]


def nginx_config(workdir: Path, port: int) -> Path:
    """worker_processes 1, fixed small 200 body on every path, no access log, long keepalive."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(f"""\
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    client_body_temp_path {workdir}/tmp/client_body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ return 200 "{NGINX_BODY.strip()}\\n"; }}
        # A 1 KiB text body: something worth compressing (bench/filters.py).
        location /big {{ default_type text/plain; return 200 "{BIG_BODY}"; }}
    }}
}}
""")
    return conf


def nginx_command(workdir: Path, conf: Path, cpu: str | None) -> list[str]:
    cmd = [need("nginx", "nginx-light"), "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx-error.log"),
           "-g", "daemon off;"]
    return (["taskset", "-c", cpu] if cpu is not None else []) + cmd


# --- HTTP -------------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http_200(url: str, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or proc.args[0]} exited with code {proc.returncode} before {url} answered")
        try:
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s ({last})")


def get_status(status_url: str, timeout: float = 2.0) -> dict | None:
    """meshgate's /status JSON, None while the status server is not up."""
    try:
        code, body = http_get(status_url + "/status", timeout=timeout)
    except OSError:
        return None
    return json.loads(body) if code == 200 else None


def in_sync(status: dict | None, version: str | None = None, node: str = "edge-local") -> bool:
    """True when `node` runs meshgate's published config (/status `in_sync`: everything sent
    was ACKed) and, with `version`, that config is this one."""
    if not status or not status.get("nodes", {}).get(node, {}).get("in_sync"):
        return False
    return version is None or status.get("config_version") == version


# --- memory -----------------------------------------------------------------------------------


def proc_mem_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a live process, in MB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) / 1024  # kB
    except OSError:
        pass
    return out


def fmt_cmd(cmd: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(c) for c in cmd)
