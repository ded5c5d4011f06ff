"""meshgate.io/v1alpha1 GRPCJSONTranscoder: serve a gRPC service as REST/JSON (a meshgate
extension; Envoy Gateway has no such kind).

A route rule names it with a Gateway API `ExtensionRef` filter:

    filters:
      - type: ExtensionRef
        extensionRef: {group: meshgate.io, kind: GRPCJSONTranscoder, name: greeter-rest}

and Envoy's `grpc_json_transcoder` filter then turns that rule's JSON requests into gRPC calls to
the rule's (gRPC) backend, by the `google.api.http` options of the methods in the descriptor set,
and the replies (and gRPC errors, as HTTP status codes) back into JSON.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/grpc_json_transcoder_filter
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshgate.api.models import MESHGATE_V1ALPHA1, Model, Resource

__all__ = ["GRPCJSONTranscoder", "TRANSCODING_KINDS", "descriptor_set_problem"]

MAX_DESCRIPTOR_BYTES = 4 << 20


class DescriptorSetSource(Model):
    """A compiled protobuf descriptor set (`protoc --include_imports --descriptor_set_out=FILE`)."""

    file: str | None = Field(None, min_length=1, description="path of the descriptor set, relative to this YAML file")
    inline: str | None = Field(None, min_length=1, description="the descriptor set itself, base64")

    @model_validator(mode="after")
    def _exactly_one(self) -> DescriptorSetSource:
        if (self.file is None) == (self.inline is None):
            raise ValueError("set exactly one of file, inline")
        return self

    @field_validator("inline")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode("".join(value.split()), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("inline is not valid base64") from None
        return value

    def inline_bytes(self) -> bytes:
        return base64.b64decode("".join((self.inline or "").split()))


class TranscoderPrintOptions(Model):
    """How replies are printed as JSON (Envoy's `print_options`)."""

    add_whitespace: bool = Field(False, description="indent the JSON")
    always_print_primitive_fields: bool = Field(False, description="print fields with default values (0, \"\", false)")
    always_print_enums_as_ints: bool = Field(False, description="enums as numbers, not names")
    preserve_proto_field_names: bool = Field(False, description="`user_id` instead of `userId`")


class GRPCJSONTranscoderSpec(Model):
    descriptor_set: DescriptorSetSource
    services: list[str] = Field(min_length=1, max_length=64,
                                description="fully qualified names of the services to serve as JSON (`pkg.Service`)")
    print_options: TranscoderPrintOptions = Field(default_factory=TranscoderPrintOptions)
    ignore_unknown_query_parameters: bool = Field(
        False, description="ignore query parameters that are no field of the request (by default such a request gets 400)")
    convert_grpc_status: bool = Field(
        True, description="a gRPC error's body is JSON `{\"code\": N, \"message\": ...}` (the HTTP status is mapped either way)")

    @field_validator("services")
    @classmethod
    def _names(cls, services: list[str]) -> list[str]:
        import re

        for s in services:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", s):
                raise ValueError(f"{s!r} is not a fully qualified service name like pkg.Service")
        if len(set(services)) != len(services):
            raise ValueError("a service is listed twice")
        return services

    @model_validator(mode="after")
    def _inline_descriptor(self) -> GRPCJSONTranscoderSpec:
        if self.descriptor_set.inline is not None:
            problem = descriptor_set_problem(self.descriptor_set.inline_bytes(), self.services)
            if problem:
                raise ValueError(f"descriptorSet.inline: {problem}")
        return self


class GRPCJSONTranscoder(Resource):
    """meshgate.io/v1alpha1 GRPCJSONTranscoder: a gRPC service served as REST/JSON by the rules
    that name it in an `ExtensionRef` filter (meshgate extension)."""

    api_version: Literal["meshgate.io/v1alpha1"]
    kind: Literal["GRPCJSONTranscoder"]
    spec: GRPCJSONTranscoderSpec


def descriptor_set_problem(data: bytes, services: list[str]) -> str | None:
    """Why Envoy would refuse this descriptor set for these services, or None. Parsed the way
    Envoy does: a google.protobuf.FileDescriptorSet whose files (with every import) build a
    descriptor pool, and in which each service exists."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message import DecodeError

    if len(data) > MAX_DESCRIPTOR_BYTES:
        return f"larger than {MAX_DESCRIPTOR_BYTES >> 20} MiB"
    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError:
        return "not a protobuf FileDescriptorSet (compile it with protoc --descriptor_set_out)"
    if not fds.file:
        return "the descriptor set holds no .proto file"
    pool = descriptor_pool.DescriptorPool()
    pending = {f.name: f for f in fds.file}
    added: set[str] = set()
    while pending:  # add files after their imports
        ready = [f for f in pending.values() if all(d in added for d in f.dependency)]
        if not ready:
            name, f = next(iter(pending.items()))
            missing = next(d for d in f.dependency if d not in added and d not in pending)
            return f"{name} imports {missing}, which is not in the set (compile with protoc --include_imports)"
        for f in ready:
            try:
                pool.Add(f)
            except (TypeError, ValueError) as exc:
                return f"{f.name}: {exc}"
            added.add(f.name)
            del pending[f.name]
    for service in services:
        try:
            pool.FindServiceByName(service)
        except KeyError:
            known = sorted(s.full_name for f in fds.file for s in pool.FindFileByName(f.name).services_by_name.values())
            return f"service {service} is not in the descriptor set (it has: {', '.join(known) or 'no services'})"
    return None


TRANSCODING_KINDS: dict[tuple[str, str], type[Resource]] = {(MESHGATE_V1ALPHA1, "GRPCJSONTranscoder"): GRPCJSONTranscoder}
