"""A sample gRPC upstream, without .proto files or code generation.

gRPC does not care what the message bytes are: with identity (None) serializers, handlers and
stubs exchange raw `bytes`. That is enough to test how Envoy routes and proxies gRPC (HTTP/2,
trailers, all four call kinds) without generated code.

Service "meshgate.devtools.Echo"; every reply is b"NAME:" + payload:
  Unary         one request, one reply
  ServerStream  one request, three replies
  ClientStream  many requests, one reply of their concatenation
  BidiStream    one reply per request
Every call also sends initial metadata ("x-upstream", NAME).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

import grpc

from meshgate.devtools._serve import GrpcServer

__all__ = [
    "SERVICE",
    "GrpcEchoServer",
    "call_bidi",
    "call_client_stream",
    "call_server_stream",
    "call_unary",
]

SERVICE = "meshgate.devtools.Echo"
SERVER_STREAM_REPLIES = 3
Metadata = Sequence[tuple[str, str]]
# Talk to 127.0.0.1 directly even if the environment sets http_proxy.
_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


class GrpcEchoServer(GrpcServer):
    """A grpc.aio server serving the Echo service: plaintext HTTP/2, or TLS (h2 by ALPN) with
    `credentials` (`grpc.ssl_server_credentials`, e.g. requiring a client certificate)."""

    kind = "gRPC echo"

    def _handlers(self) -> grpc.GenericRpcHandler:
        prefix = self.name.encode() + b":"
        metadata = (("x-upstream", self.name),)

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.send_initial_metadata(metadata)
            return prefix + request

        async def server_stream(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            await context.send_initial_metadata(metadata)
            for _ in range(SERVER_STREAM_REPLIES):
                yield prefix + request

        async def client_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> bytes:
            await context.send_initial_metadata(metadata)
            return prefix + b"".join([r async for r in requests])

        async def bidi_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            await context.send_initial_metadata(metadata)
            async for request in requests:
                yield prefix + request

        # No (de)serializers: requests and replies stay bytes.
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
                "BidiStream": grpc.stream_stream_rpc_method_handler(bidi_stream),
            },
        )


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


async def call_unary(
    target: str, payload: bytes, *, timeout: float = 5.0, metadata: Metadata = ()
) -> bytes:
    """Call Echo/Unary on target ("127.0.0.1:PORT", e.g. an Envoy listener)."""
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        rpc = channel.unary_unary(_method("Unary"))
        return await rpc(payload, timeout=timeout, metadata=tuple(metadata))


async def call_server_stream(
    target: str, payload: bytes, *, timeout: float = 5.0, metadata: Metadata = ()
) -> list[bytes]:
    """Call Echo/ServerStream; returns all replies."""
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        rpc = channel.unary_stream(_method("ServerStream"))
        call = rpc(payload, timeout=timeout, metadata=tuple(metadata))
        return [reply async for reply in call]


async def call_client_stream(
    target: str, payloads: Iterable[bytes], *, timeout: float = 5.0, metadata: Metadata = ()
) -> bytes:
    """Call Echo/ClientStream with each payload as one request message."""
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        rpc = channel.stream_unary(_method("ClientStream"))
        return await rpc(iter(list(payloads)), timeout=timeout, metadata=tuple(metadata))


async def call_bidi(
    target: str, payloads: Iterable[bytes], *, timeout: float = 5.0, metadata: Metadata = ()
) -> list[bytes]:
    """Call Echo/BidiStream: send each payload, collect every reply."""
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        rpc = channel.stream_stream(_method("BidiStream"))
        call = rpc(iter(list(payloads)), timeout=timeout, metadata=tuple(metadata))
        return [reply async for reply in call]
