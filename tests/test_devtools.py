"""The sample upstreams: HTTP echo server and gRPC echo server."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import grpc
import pytest

from meshgate.devtools.grpc_echo import (
    GrpcEchoServer,
    call_bidi,
    call_client_stream,
    call_server_stream,
    call_unary,
)
from meshgate.devtools.upstreams import EchoServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def echo():
    server = EchoServer("alpha")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def grpc_echo():
    server = GrpcEchoServer("g1")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def test_echo_fields(echo: EchoServer, http: aiohttp.ClientSession):
    assert echo.port != 0 and echo.url == f"http://127.0.0.1:{echo.port}"
    async with http.post(
        f"{echo.url}/some/path%20x?a=1&b=two", data=b"hello", headers={"X-Custom": "V"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["x-upstream"] == "alpha"
        body = await resp.json()
    assert body["upstream"] == "alpha"
    assert body["method"] == "POST"
    assert body["path"] == "/some/path%20x"
    assert body["query"] == {"a": "1", "b": "two"}
    assert body["headers"]["x-custom"] == "V"
    assert body["headers"]["host"] == f"127.0.0.1:{echo.port}"
    assert body["body"] == "hello"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_echo_answers_every_method(echo, http, method):
    async with http.request(method, f"{echo.url}/x/y") as resp:
        assert resp.status == 200
        assert (await resp.json())["method"] == method


async def test_echo_status_and_sleep(echo: EchoServer, http: aiohttp.ClientSession):
    async with http.get(f"{echo.url}/__status/503") as resp:
        assert resp.status == 503
        assert (await resp.json())["path"] == "/__status/503"
    async with http.get(f"{echo.url}/prefix/__status/418/rest") as resp:
        assert resp.status == 418
    async with http.get(f"{echo.url}/__status/204") as resp:
        assert resp.status == 204 and resp.headers["x-upstream"] == "alpha"

    loop = asyncio.get_running_loop()
    start = loop.time()
    async with http.get(f"{echo.url}/__sleep/200") as resp:
        assert resp.status == 200
    assert loop.time() - start >= 0.19
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(f"{echo.url}/__sleep/2000", timeout=aiohttp.ClientTimeout(total=0.2)):
            pass


async def test_echo_cli_runs_until_sigterm(unused_tcp_port_factory):
    ports = [unused_tcp_port_factory(), unused_tcp_port_factory()]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshgate.devtools.upstreams",
        "--name", "a", "--port", str(ports[0]), "--name", "b", "--port", str(ports[1]),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(2):
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert b"listening" in line
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for name, port in zip("ab", ports):
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    assert (await resp.json())["upstream"] == name
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_grpc_echo_all_kinds(grpc_echo: GrpcEchoServer):
    target = f"127.0.0.1:{grpc_echo.port}"
    assert await call_unary(target, b"hi") == b"g1:hi"
    assert await call_server_stream(target, b"s") == [b"g1:s"] * 3
    assert await call_client_stream(target, [b"a", b"b", b"c"]) == b"g1:abc"
    assert await call_bidi(target, [b"1", b"2"]) == [b"g1:1", b"g1:2"]


async def test_grpc_echo_initial_metadata_and_unknown_method(grpc_echo: GrpcEchoServer):
    async with grpc.aio.insecure_channel(grpc_echo.target) as channel:
        call = channel.unary_unary("/meshgate.devtools.Echo/Unary")(b"x", timeout=5)
        assert await call == b"g1:x"
        assert ("x-upstream", "g1") in tuple(await call.initial_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/meshgate.devtools.Echo/Nope")(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
