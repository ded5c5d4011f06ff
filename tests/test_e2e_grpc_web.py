"""gRPC-Web through the real Envoy: a real gRPC-Web client (Connect-ES's gRPC-Web transport, run
by node, as a browser app would use it) calls the Greeter (a plain gRPC upstream) through a
GRPCRoute, on the same listener as plain HTTP.

One `meshgate run` serves `tests/e2e/grpc-web/`; the node client (`tests/clients/grpc-web/`, its
packages installed by `scripts/setup` from the committed package-lock.json) makes every call once
per HTTP version and prints what it saw as JSON.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness import Meshgate, free_port, request
from meshgate.devtools.greeter import DESCRIPTOR_SET, messages

CONFIG = Path(__file__).parent / "e2e" / "grpc-web"
CLIENT = Path(__file__).parent / "clients" / "grpc-web"
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("grpc-web")
    env = {name: str(free_port()) for name in ("HTTP_PORT", "GREETER_PORT", "WEB_PORT")}
    mg = Meshgate([str(CONFIG)], work, env=env).start()
    mg.http = int(env["HTTP_PORT"])
    yield mg
    assert mg.stop() == 0, mg.output()


@pytest.fixture(scope="module", params=["1.1", "2"])
def web(gw: Meshgate, request: pytest.FixtureRequest) -> dict:
    """What the Connect-ES gRPC-Web client saw, over HTTP/1.1 (as most browsers) or HTTP/2."""
    if NODE is None:
        pytest.skip("node is not installed: the gRPC-Web client is Connect-ES, run by node")
    if not (CLIENT / "node_modules" / "@connectrpc" / "connect-node").is_dir():
        pytest.fail("the gRPC-Web client's npm packages are missing: run ./scripts/setup")
    done = subprocess.run([NODE, "client.mjs", f"http://127.0.0.1:{gw.http}", request.param, str(DESCRIPTOR_SET)],
                          cwd=CLIENT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{done.stderr}\n{gw.output()}"
    return json.loads(done.stdout)


def test_unary_with_metadata_both_ways(web: dict) -> None:
    unary = web["unary"]
    assert unary["ok"], unary
    assert unary["result"]["message"] == "Hi, web!" and unary["result"]["upstream"] == "greeter-1"
    # Request metadata reached the upstream, with the GRPCRoute's header modifier applied.
    assert unary["result"]["metadata"]["x-client"] == "connect-es"
    assert unary["result"]["metadata"]["x-via"] == "meshgate"
    # Response headers, and trailers (which gRPC-Web carries in the body).
    assert unary["header"]["content-type"].startswith("application/grpc-web")
    assert unary["header"]["x-upstream"] == "greeter-1"
    assert unary["trailer"]["x-trailer"] == "done" and unary["trailer"]["grpc-status"] == "0"


def test_server_streaming(web: dict) -> None:
    stream = web["stream"]
    assert stream["ok"], stream
    assert [r["message"] for r in stream["result"]] == ["Hello, s!"] * 4
    assert stream["trailer"]["x-trailer"] == "done"


def test_error_status_and_message(web: dict) -> None:
    error = web["error"]
    assert (error["ok"], error["code"], error["message"]) == (False, "PermissionDenied", "not for you")
    assert error["metadata"].get("x-trailer") == "done"  # the upstream's trailers came with the error


def test_client_deadline(web: dict) -> None:
    deadline = web["deadline"]
    assert (deadline["ok"], deadline["code"]) == (False, "DeadlineExceeded"), deadline


def test_envoy_enforced_deadline_is_deadline_exceeded(web: dict) -> None:
    # Only the grpc-timeout header, no client-side timer: Envoy ends the call at 300 ms. Without
    # meshgate's local-reply mapping a gRPC-Web client would get HTTP 504 -> 14 UNAVAILABLE here.
    deadline = web["envoyDeadline"]
    assert (deadline["ok"], deadline["code"]) == (False, "DeadlineExceeded"), deadline
    assert "max_duration_timeout" in deadline["message"]


def _web_frame(message) -> bytes:
    body = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(body)) + body


def test_envoy_deadline_reply_on_the_wire(gw: Meshgate) -> None:
    # What a browser's fetch() sees: HTTP 200, a headers-only (trailers-only) gRPC-Web reply.
    sleep = messages()["meshgate.devtools.SleepRequest"](ms=3000)
    r = request(gw.http, "/meshgate.devtools.Greeter/Sleep", method="POST", body=_web_frame(sleep),
                headers={"content-type": "application/grpc-web+proto", "grpc-timeout": "200m"})
    assert r.status == 200, r
    assert r.headers["grpc-status"] == "4" and r.headers["content-type"] == "application/grpc-web+proto"
    assert r.body == b""


def test_native_grpc_deadline_unchanged(gw: Meshgate) -> None:
    import grpc

    m = messages()

    async def call():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.http}", options=[("grpc.enable_http_proxy", 0)]) as ch:
            rpc = ch.unary_unary("/meshgate.devtools.Greeter/Sleep", request_serializer=lambda x: x.SerializeToString(),
                                 response_deserializer=m["meshgate.devtools.HelloReply"].FromString)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await rpc(m["meshgate.devtools.SleepRequest"](ms=3000), metadata=(("grpc-timeout", "200m"),))  # bounded: Sleep ends in 3 s
            return err.value.code()

    assert asyncio.run(call()) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_plain_http_on_the_same_listener_is_unaffected(gw: Meshgate) -> None:
    # The Greeter's path without a gRPC content type is plain HTTP: the HTTPRoute gets it.
    r = request(gw.http, "/meshgate.devtools.Greeter/SayHello", method="POST", body=b"{}",
                headers={"content-type": "application/json"})
    assert r.status == 200 and r.upstream == "web-1", r
    assert r.json["path"] == "/meshgate.devtools.Greeter/SayHello"
    # Envoy's own 504s to plain HTTP clients stay 504 (the gRPC local-reply mapping needs a gRPC
    # content type): checked on the config Envoy runs.
    mappers = _hcm(gw)["local_reply_config"]["mappers"]
    assert mappers[0]["filter"]["and_filter"]["filters"][1]["header_filter"]["header"]["name"] == "content-type"


def test_grpc_web_filter_is_in_the_chain(gw: Meshgate) -> None:
    names = [f["name"] for f in _hcm(gw)["http_filters"]]
    assert names.index("envoy.filters.http.grpc_web") < names.index("envoy.filters.http.router")


def _hcm(gw: Meshgate) -> dict:
    listeners = gw.dump_section("ListenersConfigDump")["dynamic_listeners"]
    chain = listeners[0]["active_state"]["listener"]["filter_chains"][0]
    return next(f["typed_config"] for f in chain["filters"] if f["name"].endswith("http_connection_manager"))


