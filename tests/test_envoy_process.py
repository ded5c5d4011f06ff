"""Bootstrap rendering and EnvoyProcess against the real Envoy binary."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshgate.devtools.upstreams import EchoServer
from meshgate.envoy.bootstrap import BootstrapOptions, render_bootstrap
from meshgate.envoy.process import EnvoyError, EnvoyProcess, find_envoy

pytestmark = pytest.mark.timeout(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def static_bootstrap(listen_port: int, upstream_port: int) -> dict[str, Any]:
    """A minimal all-static config: one HTTP listener routing everything to one upstream."""
    return {
        "node": {"id": "test", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "http",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "http",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "echo"},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy."
                                                    "extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(url) as resp:
            return resp.status, await resp.json()


async def wait_for(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def echo():
    server = EchoServer("a")
    await server.start()
    yield server
    await server.stop()


# ---------------------------------------------------------------- bootstrap


def test_render_bootstrap_shape():
    b = render_bootstrap(BootstrapOptions(xds_port=18000, node_id="n1", node_cluster="g1"))
    assert b["node"] == {"id": "n1", "cluster": "g1"}
    assert b["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19901}
    assert b["admin"]["access_log"][0]["typed_config"]["path"] == "/dev/null"
    ads = b["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC"
    assert ads["transport_api_version"] == "V3"
    assert ads["set_node_on_first_message_only"] is True
    assert ads["grpc_services"] == [{"envoy_grpc": {"cluster_name": "meshgate_xds"}}]
    for key in ("cds_config", "lds_config"):
        assert b["dynamic_resources"][key] == {"ads": {}, "resource_api_version": "V3"}
    (cluster,) = b["static_resources"]["clusters"]
    assert cluster["name"] == "meshgate_xds" and cluster["type"] == "STATIC"
    opts = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    keepalive = opts["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"]
    assert keepalive == {"interval": "30s", "timeout": "5s"}
    addr = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert addr["socket_address"] == {"address": "127.0.0.1", "port_value": 18000}
    delta = render_bootstrap(BootstrapOptions(xds_port=1, delta=True))
    assert delta["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"


@pytest.mark.parametrize(
    "opts",
    [
        BootstrapOptions(xds_port=18000),
        BootstrapOptions(xds_port=18001, delta=True, admin_port=0),
        BootstrapOptions(xds_port=18002, xds_host="localhost"),
    ],
    ids=["sotw", "delta", "dns-host"],
)
def test_render_bootstrap_passes_envoy_validate(tmp_path: Path, opts: BootstrapOptions):
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(render_bootstrap(opts)))
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


# ------------------------------------------------------------ EnvoyProcess


async def test_start_proxy_admin_stop(tmp_path: Path, echo: EchoServer):
    port = free_port()
    envoy = EnvoyProcess(static_bootstrap(port, echo.port), tmp_path, restart=False)
    try:
        await envoy.start(wait_ready=True)
        pid = envoy.pid
        assert pid is not None and pid_alive(pid)
        assert envoy.admin_url.startswith("http://127.0.0.1:")
        assert (tmp_path / "envoy-bootstrap.json").exists()

        status, body = await get_json(f"http://127.0.0.1:{port}/hello?x=1")
        assert status == 200
        assert body["upstream"] == "a" and body["path"] == "/hello" and body["query"] == {"x": "1"}

        assert await envoy.admin_get("/ready") == (200, "LIVE\n")
        dump = await envoy.config_dump()
        assert any("ListenersConfigDump" in c["@type"] for c in dump["configs"])
        status, stats = await envoy.admin_get("/stats?format=json")
        assert status == 200 and "stats" in json.loads(stats)
        assert envoy.log_path.exists()
    finally:
        await envoy.stop()
    assert envoy.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    await envoy.stop()  # idempotent


async def test_sigkill_triggers_restart(tmp_path: Path, echo: EchoServer):
    port = free_port()
    exits: list[int] = []
    envoy = EnvoyProcess(static_bootstrap(port, echo.port), tmp_path, on_exit=exits.append)
    try:
        await envoy.start(wait_ready=True)
        old_pid = envoy.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await wait_for(
            lambda: envoy.pid not in (None, old_pid), timeout=10, what="Envoy to be restarted"
        )
        await envoy.wait_ready(10)
        assert exits == [-signal.SIGKILL]
        assert envoy.restarts == 1
        status, body = await get_json(f"http://127.0.0.1:{port}/again")
        assert status == 200 and body["upstream"] == "a"
        new_pid = envoy.pid
    finally:
        await envoy.stop()
    assert not pid_alive(new_pid)
    await asyncio.sleep(0.7)  # longer than the first backoff: stop() must have disabled restart
    assert envoy.pid is None


async def test_broken_bootstrap_raises_with_envoy_error_text(tmp_path: Path):
    bootstrap = {"static_resources": {"clusters": [{"name": "x", "type": "NOT_A_TYPE"}]}}
    envoy = EnvoyProcess(bootstrap, tmp_path)
    with pytest.raises(EnvoyError) as info:
        await envoy.start(ready_timeout=10)
    message = str(info.value)
    assert "exited with code" in message
    assert "NOT_A_TYPE" in message
    assert envoy.pid is None
    await envoy.stop()


async def test_ads_bootstrap_admin_up_but_not_ready_without_control_plane(tmp_path: Path):
    # Nothing listens on the xDS port: Envoy starts, its admin answers, but it never gets its
    # initial clusters/listeners, so /ready stays non-LIVE.
    opts = BootstrapOptions(xds_port=free_port(), admin_port=0)
    envoy = EnvoyProcess(render_bootstrap(opts), tmp_path, restart=False)
    try:
        await envoy.start()  # admin only
        status, body = await envoy.admin_get("/ready")
        assert status == 503 and body.strip() != "LIVE"
        with pytest.raises(EnvoyError, match="did not become ready"):
            await envoy.wait_ready(timeout=0.5)
        assert envoy.pid is not None  # wait_ready failing does not stop Envoy
    finally:
        await envoy.stop()
