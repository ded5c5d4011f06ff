"""`envoy.filters.http.compressor`: response compression (BackendTrafficPolicy `compression`) with
Envoy's gzip, brotli and zstd compressor libraries.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/compressor_filter

One filter instance per distinct setting on the listener (an algorithm with its level, minimum
length and content types; Envoy keeps those in the filter, not per route), named
`envoy.filters.http.compressor.<algorithm>` with a short hash of non-default settings. They are
disabled by default and enabled by the routes whose policy asks for them. When a client accepts
several of a route's algorithms, Envoy's compressor filters agree on the one with the client's
highest q-value in `Accept-Encoding`. Envoy compresses a response only when the request accepts
the encoding, the response has a listed content type, is at least `min_content_length` long (or
has no Content-Length), has no Content-Encoding yet, and its status is not 1xx/204/304; it then
sets Content-Encoding, drops Content-Length (the body is streamed) and turns a strong ETag weak.
`Vary: Accept-Encoding` is added to every response of a listed content type, compressed or not,
so caches keep the variants apart.

Chain position: first after the health check. Response (encoder) filters run in reverse chain
order, so the compressor sees responses last: local replies and bodies written by the filters
after it (error pages, rate-limit and auth refusals) are compressed too, and no filter has to
read a compressed body.
"""

from __future__ import annotations

import hashlib

from envoy.config.core.v3 import extension_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.compression.brotli.compressor.v3 import brotli_pb2
from envoy.extensions.compression.gzip.compressor.v3 import gzip_pb2
from envoy.extensions.compression.zstd.compressor.v3 import zstd_pb2
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2
from google.protobuf.message import Message

from meshgate import ir
from meshgate.ir import shaping

NAME = "envoy.filters.http.compressor"
DISABLED_BY_DEFAULT = True  # routes with `compression` enable their instances
_LIBRARIES = {"gzip": "envoy.compression.gzip.compressor", "brotli": "envoy.compression.brotli.compressor",
              "zstd": "envoy.compression.zstd.compressor"}


def _instance_name(c: shaping.Compressor) -> str:
    name = f"{NAME}.{c.kind}"
    if c != shaping.Compressor(c.kind):
        name += "-" + hashlib.sha256(repr(c).encode()).hexdigest()[:8]  # stable: same settings, same name
    return name


def listener_filters(listener: ir.Listener) -> list[tuple[str, Message]]:
    found = {c for vhost in listener.virtual_hosts for route in vhost.routes if route.shaping is not None
             for c in route.shaping.compression}
    return [(_instance_name(c), _compressor(c)) for c in sorted(found, key=_instance_name)]


def route_filters(route: ir.Route) -> list[tuple[str, Message]]:
    if route.shaping is None:
        return []
    out = []
    for c in route.shaping.compression:
        # Enables the disabled-by-default instance, with its listener settings (empty overrides).
        enable = rc.FilterConfig()
        enable.config.Pack(compressor_pb2.CompressorPerRoute(overrides=compressor_pb2.CompressorOverrides()),
                           deterministic=True)
        out.append((_instance_name(c), enable))
    return out


def _compressor(c: shaping.Compressor) -> compressor_pb2.Compressor:
    out = compressor_pb2.Compressor()
    common = out.response_direction_config.common_config
    common.min_content_length.value = c.min_length
    common.content_type.extend(c.content_types)  # empty: Envoy's default list
    library = extension_pb2.TypedExtensionConfig(name=_LIBRARIES[c.kind])
    library.typed_config.Pack(_library(c), deterministic=True)
    out.compressor_library.CopyFrom(library)
    return out


def _library(c: shaping.Compressor) -> Message:
    if c.kind == "gzip":
        out = gzip_pb2.Gzip()
        if c.level is not None:
            out.compression_level = gzip_pb2.Gzip.CompressionLevel.Value(f"COMPRESSION_LEVEL_{c.level}")
        return out
    if c.kind == "brotli":
        out = brotli_pb2.Brotli()
        if c.level is not None:
            out.quality.value = c.level
        return out
    out = zstd_pb2.Zstd()
    if c.level is not None:
        out.compression_level.value = c.level
    return out
