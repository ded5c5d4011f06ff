"""A real Redis (Debian `redis-server`) for a test: on a free loopback port, no persistence, in
its own directory, stopped by its PID. Skips the test when redis-server is not installed
(scripts/setup installs it)."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from harness import free_port, wait_until


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (./scripts/setup installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=(self.workdir / "redis.log").open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self.ping, timeout=10, what="redis-server to answer")
        return self

    def client(self):  # noqa: ANN201 - a redis.Redis
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()}")
        with self.client() as c:
            return bool(c.ping())

    def stop(self) -> None:
        """SIGTERM to our own redis-server by PID (SIGKILL if it lingers)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One Redis per test module (import this fixture into the module that uses it)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


def gateways_sharing(redis: RedisServer, config: Path, tmp_path_factory: pytest.TempPathFactory, prefix: str,
                     env: dict[str, str] | None = None):
    """Two `meshgate run`s ("a", "b") of copies of `config`, both counting in `redis` (and with
    `env` added to their environment): a generator for a module fixture (yields the two, each
    with `.port`; stops both)."""
    from harness import Meshgate

    started: list[Meshgate] = []
    try:
        for name in ("a", "b"):
            own = {"HTTP_PORT": str(free_port()), "APP_PORT": str(free_port()), "MESHGATE_REDIS_URL": redis.url,
                   **(env or {})}
            work = tmp_path_factory.mktemp(f"{prefix}-{name}")
            shutil.copytree(config, work / "config")
            mg = Meshgate([str(work / "config")], work, env=own)
            started.append(mg)
            mg.start()
            mg.port = int(own["HTTP_PORT"])
        yield started
        for mg in started:
            assert mg.stop() == 0, mg.output()
    finally:
        for mg in started:
            mg.stop()
