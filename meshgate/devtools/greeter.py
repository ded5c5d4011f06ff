"""A sample gRPC upstream with a real protobuf API, for gRPC-Web and gRPC-JSON transcoding.

Service `meshgate.devtools.Greeter` (protos/meshgate/devtools/greeter.proto, whose
`google.api.http` options say how Envoy's gRPC-JSON transcoder maps it to REST). Its messages are
built at run time from the compiled descriptor set `greeter.pb` (no generated code):

  SayHello      one HelloReply "GREETING, NAME!"
  StreamHellos  `count` replies (default 3)
  Fail          fails with status `code` and `message`
  Sleep         waits `ms` milliseconds, then replies

Every reply carries the request's `x-*` metadata in `metadata`; every call sends the initial
metadata `x-upstream: NAME` and the trailing metadata `x-trailer: done`, so tests can see what
crossed Envoy in both directions.

Run from a shell:  python -m meshgate.devtools.greeter --name g1 --port 50061
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from meshgate.devtools._serve import GrpcServer, main_for

__all__ = ["DESCRIPTOR_SET", "SERVICE", "GreeterServer", "messages"]

SERVICE = "meshgate.devtools.Greeter"
DESCRIPTOR_SET = Path(__file__).with_name("greeter.pb")  # protoc --include_imports output


def messages() -> dict[str, type]:
    """The Greeter's message classes by full name, built from `greeter.pb` in a private pool."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    return message_factory.GetMessages(list(fds.file), pool=descriptor_pool.DescriptorPool())


class GreeterServer(GrpcServer):
    """A grpc.aio server (plaintext HTTP/2) serving the Greeter service."""

    kind = "gRPC greeter"

    def _handlers(self) -> grpc.GenericRpcHandler:
        m = messages()
        HelloRequest, HelloReply = m[f"{_PKG}.HelloRequest"], m[f"{_PKG}.HelloReply"]
        FailRequest, SleepRequest = m[f"{_PKG}.FailRequest"], m[f"{_PKG}.SleepRequest"]
        name = self.name

        async def begin(context: grpc.aio.ServicerContext):  # noqa: ANN202
            await context.send_initial_metadata((("x-upstream", name),))
            context.set_trailing_metadata((("x-trailer", "done"),))
            return {k: v for k, v in context.invocation_metadata() if k.startswith("x-") and isinstance(v, str)}

        def reply(request, metadata: dict[str, str]):  # noqa: ANN001, ANN202
            return HelloReply(message=f"{request.greeting or 'Hello'}, {request.name}!", upstream=name, metadata=metadata)

        async def say_hello(request, context):  # noqa: ANN001, ANN202
            return reply(request, await begin(context))

        async def stream_hellos(request, context) -> AsyncIterator:  # noqa: ANN001
            metadata = await begin(context)
            for _ in range(request.count or 3):
                yield reply(request, metadata)

        async def fail(request, context):  # noqa: ANN001, ANN202
            await begin(context)
            code = next((c for c in grpc.StatusCode if c.value[0] == request.code), grpc.StatusCode.UNKNOWN)
            await context.abort(code, request.message)

        async def sleep(request, context):  # noqa: ANN001, ANN202
            # Nothing is sent before the sleep: a deadline that ends the call meanwhile is
            # answered by whoever enforces it (Envoy or this server), headers and all.
            await asyncio.sleep(request.ms / 1000)
            metadata = await begin(context)
            return HelloReply(message=f"slept {request.ms} ms", upstream=name, metadata=metadata)

        def handler(kind, fn, request_type):  # noqa: ANN001, ANN202
            return kind(fn, request_deserializer=request_type.FromString,
                        response_serializer=lambda message: message.SerializeToString())

        return grpc.method_handlers_generic_handler(SERVICE, {
            "SayHello": handler(grpc.unary_unary_rpc_method_handler, say_hello, HelloRequest),
            "StreamHellos": handler(grpc.unary_stream_rpc_method_handler, stream_hellos, HelloRequest),
            "Fail": handler(grpc.unary_unary_rpc_method_handler, fail, FailRequest),
            "Sleep": handler(grpc.unary_unary_rpc_method_handler, sleep, SleepRequest),
        })


_PKG = SERVICE.rsplit(".", 1)[0]


main = main_for(GreeterServer, "Run sample gRPC Greeter upstreams.", "greeter")


if __name__ == "__main__":
    main()
