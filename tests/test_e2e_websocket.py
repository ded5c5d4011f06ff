"""WebSocket through the real Envoy, and one port serving every protocol.

One `meshgate run` serves `tests/e2e/websocket/`; the WebSocket upstream (tests/ws_upstream.py,
aiohttp: echo and broadcast) is a subprocess. Clients: aiohttp, `websockets` (strict about the
close handshake), and node's built-in http2 module for RFC 8441 extended CONNECT.

The core cases of the Autobahn suite (framing, fragmentation, ping/pong, binary, large frames,
close codes) are checked by running the same client scenario against the upstream directly and
through meshgate and comparing what the client saw (the Autobahn fuzzing client itself is not
installable here: see docs/websocket.md).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import websockets

from harness import ROOT, Meshgate, free_port, request, write_tls_files

CONFIG = Path(__file__).parent / "e2e" / "websocket"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("websocket")
    ca = write_tls_files(work, ["ws.example.com"])
    env = {name: str(free_port()) for name in ("HTTP_PORT", "IDLE_PORT", "HTTPS_PORT", "WS_PORT", "GRPC_PORT")}
    env["TLS_DIR"] = str(work)
    upstream = subprocess.Popen([sys.executable, str(ROOT / "tests" / "ws_upstream.py"), env["WS_PORT"]],
                                stdout=subprocess.PIPE, stderr=(work / "ws.stderr").open("wb"), stdin=subprocess.DEVNULL)
    mg = None
    try:
        assert upstream.stdout.readline() == b"ready\n", (work / "ws.stderr").read_text()
        mg = Meshgate([str(CONFIG)], work, env=env).start()
        mg.http, mg.idle, mg.https = int(env["HTTP_PORT"]), int(env["IDLE_PORT"]), int(env["HTTPS_PORT"])
        mg.direct = int(env["WS_PORT"])
        mg.ca = ca
        yield mg
        assert mg.stop() == 0, mg.output()
    finally:
        if mg is not None:
            mg.stop()
        upstream.terminate()
        try:
            upstream.wait(timeout=5)
        except subprocess.TimeoutExpired:
            upstream.kill()
            upstream.wait(timeout=5)


def run(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- HTTP/1.1 upgrade -------------------------------------------------------------------------------


def test_echo_over_http1_with_aiohttp(gw) -> None:
    async def scenario():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{gw.http}/ws/echo") as ws:
                await ws.send_str("hello")
                text = (await ws.receive(timeout=5)).data
                await ws.send_bytes(b"\x00\x01\xff")
                data = (await ws.receive(timeout=5)).data
                return text, data
    assert run(scenario()) == ("hello", b"\x00\x01\xff")


def test_broadcast_reaches_every_client(gw) -> None:
    async def scenario():
        url = f"ws://127.0.0.1:{gw.http}/ws/broadcast"
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            await asyncio.sleep(0.2)  # both registered upstream
            await a.send("to everyone")
            return await asyncio.wait_for(a.recv(), 5), await asyncio.wait_for(b.recv(), 5)
    assert run(scenario()) == ("to everyone", "to everyone")


async def core_cases(url: str) -> list:
    """What a strict client sees for the Autobahn core cases; compared direct vs via meshgate."""
    seen: list = []
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send(["frag", "mented ", "message"])  # one message in three frames (continuation)
        seen.append(await ws.recv())
        await ws.send(iter([b"\x01" * 10, b"\x02" * 10]))  # fragmented binary
        seen.append(await ws.recv())
        # A ping is answered with a pong carrying its payload (websockets matches them by payload).
        pong = await ws.ping(b"ping-payload")
        await asyncio.wait_for(pong, 5)
        seen.append("pong")
        big = bytes(range(256)) * (16 * 1024)  # 4 MiB in one frame (64-bit length)
        await ws.send(big)
        seen.append(("big", (await ws.recv()) == big))
        await ws.send("x" * 125)  # the largest 7-bit length
        await ws.send("y" * 126)  # the smallest 16-bit length
        seen.append((len(await ws.recv()), len(await ws.recv())))
        await ws.send("ünïcødé ✓")
        seen.append(await ws.recv())
        await ws.send("close:4001:going away")  # the server closes with its own code and reason
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as exc:
            # Both close frames exchanged: the server's (code, reason) and our echo of it.
            seen.append(("closed", exc.rcvd and (exc.rcvd.code, exc.rcvd.reason), exc.sent and exc.sent.code))
    return seen


def test_core_cases_through_meshgate_match_the_upstream(gw) -> None:
    direct = run(core_cases(f"ws://127.0.0.1:{gw.direct}/ws/echo"))
    via = run(core_cases(f"ws://127.0.0.1:{gw.http}/ws/echo"))
    assert via == direct
    assert via[0] == "fragmented message" and via[1] == b"\x01" * 10 + b"\x02" * 10
    assert ("big", True) in via and (125, 126) in via
    assert via[-1] == ("closed", (4001, "going away"), 4001)


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4999])
def test_client_close_is_clean(gw, code: int) -> None:
    """The client closes; the close handshake completes (our close frame, the server's answer)
    and the TCP close follows, so `websockets` reports a clean close (never 1006), exactly as it
    does talking to the upstream directly."""
    async def scenario(port: int):
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws/echo", close_timeout=5)
        await ws.send("x")
        await ws.recv()
        await ws.close(code=code, reason="bye")
        await ws.wait_closed()
        return ws.protocol.close_sent.code, ws.protocol.close_rcvd and ws.protocol.close_rcvd.code, ws.close_code
    direct, via = run(scenario(gw.direct)), run(scenario(gw.http))
    assert via == direct
    assert via[0] == code and via[1] is not None and via[2] != 1006


def test_route_timeout_ends_at_the_upgrade(gw) -> None:
    # The /ws rule has timeouts.request 1s: it bounds the wait for the 101, not the socket.
    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{gw.http}/ws/echo") as ws:
            for i in range(4):
                await asyncio.sleep(0.5)
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"m{i}"
            return "open after 2 s"
    assert run(scenario()) == "open after 2 s"


def test_idle_websocket_is_cut_by_the_stream_idle_timeout(gw) -> None:
    # Listener `idle` has ClientTrafficPolicy streamIdleTimeout 1s: Envoy resets a WebSocket
    # that carries nothing either way for 1 s. (Bounded: the client gives up after 10 s.)
    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{gw.idle}/ws/echo", ping_interval=None) as ws:
            await ws.send("still here")
            assert await ws.recv() == "still here"
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as exc:
                return "closed", type(exc).__name__
            return "not closed", None
    state, kind = run(scenario())
    assert state == "closed"


# -- HTTP/2 extended CONNECT (RFC 8441) ---------------------------------------------------------------


def h2_websocket(port: int) -> dict:
    out = subprocess.run(["node", str(ROOT / "tests" / "ws_h2_client.js"), f"http://127.0.0.1:{port}", "/ws/echo", "over h2"],
                         capture_output=True, text=True, timeout=15)
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("node") is None, reason="node runs the RFC 8441 client (node:http2)")
def test_h2c_extended_connect_reaches_the_upstream(gw) -> None:
    """Envoy advertises SETTINGS_ENABLE_CONNECT_PROTOCOL (allow_connect), accepts `:method
    CONNECT` + `:protocol websocket` on an HTTP/2 stream, routes it and forwards it upstream as
    an HTTP/1.1 `Upgrade: websocket` GET. This upstream (aiohttp) answers that bridged request
    400, so there is no end-to-end echo over RFC 8441 here yet (see docs/websocket.md)."""
    result = h2_websocket(gw.http)
    assert result["status"] == 400, result
    log = Path(gw.status()["envoy"]["access_log"])

    def bridged():
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        return [e for e in entries if e["protocol"] == "HTTP/2" and e["path"] == "/ws/echo"]
    from harness import wait_until
    entry = wait_until(bridged, timeout=5, what="access log line")[-1]
    # Answered by the upstream (an endpoint was picked, no Envoy failure flag), as a GET upgrade.
    assert entry["method"] == "GET" and entry["upstream_host"] and entry["response_flags"] == "-", entry


# -- one port, every protocol -------------------------------------------------------------------------


def test_one_http_port_serves_http1_h2c_websocket_and_grpc(gw) -> None:
    """Plain HTTP/1.1, h2c with prior knowledge, a WebSocket and gRPC, on one listener at once."""
    from meshgate.devtools import grpc_echo

    async def everything():
        async with websockets.connect(f"ws://127.0.0.1:{gw.http}/ws/echo") as ws:
            unary = await grpc_echo.call_unary(f"127.0.0.1:{gw.http}", b"g")  # while the socket is open
            h1 = await asyncio.to_thread(request, gw.http, "/plain/one")
            h2 = await asyncio.to_thread(subprocess.run, ["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}",
                                                          f"http://127.0.0.1:{gw.http}/plain/two"],
                                         capture_output=True, text=True, timeout=10)
            await ws.send("ws")
            return unary, h1, h2, await asyncio.wait_for(ws.recv(), 5)

    unary, h1, h2, ws_reply = run(everything())
    assert unary == b"grpc-1:g"
    assert h1.status == 200 and h1.body == b"plain:/plain/one"
    assert h2.stdout == "plain:/plain/two\n2", h2.stderr
    assert ws_reply == "ws"


def test_one_https_port_negotiates_alpn_and_upgrades(gw) -> None:
    """HTTPS: h2 and http/1.1 chosen by ALPN, and a WebSocket (wss) on the same port."""
    def curl(*flags: str) -> str:
        out = subprocess.run(["curl", "-sS", *flags, "--cacert", str(gw.ca), "--resolve", f"ws.example.com:{gw.https}:127.0.0.1",
                              "-w", "\n%{http_version}", f"https://ws.example.com:{gw.https}/plain/tls"],
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        return out.stdout
    assert curl() == "plain:/plain/tls\n2"
    assert curl("--http1.1") == "plain:/plain/tls\n1.1"

    async def wss():
        context = ssl.create_default_context(cafile=str(gw.ca))
        async with websockets.connect(f"wss://ws.example.com:{gw.https}/ws/echo", ssl=context,
                                      host="127.0.0.1", port=gw.https) as ws:
            await ws.send("secure")
            return await asyncio.wait_for(ws.recv(), 5)
    assert run(wss()) == "secure"


def test_envoy_runs_upgrades_on_the_connection_manager(gw) -> None:
    listeners = gw.dump_section("ListenersConfigDump")["dynamic_listeners"]
    for entry in listeners:
        listener = entry["active_state"]["listener"]
        hcm = next(f["typed_config"] for f in listener["filter_chains"][0]["filters"] if f["name"].endswith("http_connection_manager"))
        assert hcm["upgrade_configs"] == [{"upgrade_type": "websocket"}]
        assert hcm["http2_protocol_options"]["allow_connect"] is True
        assert hcm["delayed_close_timeout"] == "0s"
