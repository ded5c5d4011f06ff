"""GRPCJSONTranscoder without Envoy: the descriptor set checks, and the Greeter's committed
descriptor set matching its .proto (compiled here with grpcio-tools' protoc)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from pydantic import ValidationError

from meshgate.api.transcoding import GRPCJSONTranscoder, descriptor_set_problem
from meshgate.devtools.greeter import DESCRIPTOR_SET

PROTOS = DESCRIPTOR_SET.parent / "protos"
GREETER = DESCRIPTOR_SET.read_bytes()


def compile_greeter(out: Path) -> bytes:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    rc = protoc.main(["protoc", f"-I{PROTOS}", f"-I{well_known}", "--include_imports", f"--descriptor_set_out={out}",
                      str(PROTOS / "meshgate" / "devtools" / "greeter.proto")])
    assert rc == 0
    return out.read_bytes()


def test_committed_descriptor_set_matches_the_proto(tmp_path: Path) -> None:
    fresh = descriptor_pb2.FileDescriptorSet.FromString(compile_greeter(tmp_path / "greeter.pb"))
    committed = descriptor_pb2.FileDescriptorSet.FromString(GREETER)
    assert fresh == committed, "regenerate meshgate/devtools/greeter.pb (command in greeter.proto)"


def test_the_greeter_descriptor_is_valid_and_has_http_rules() -> None:
    assert descriptor_set_problem(GREETER, ["meshgate.devtools.Greeter"]) is None
    fds = descriptor_pb2.FileDescriptorSet.FromString(GREETER)
    greeter = next(f for f in fds.file if f.name == "meshgate/devtools/greeter.proto")
    assert all(m.options.ByteSize() for m in greeter.service[0].method)  # every method has google.api.http


@pytest.mark.parametrize("data, services, problem", [
    (b"\xff\xff", ["a.B"], "not a protobuf FileDescriptorSet"),
    (b"", ["a.B"], "holds no .proto file"),
    (GREETER, ["meshgate.devtools.Nope"], "service meshgate.devtools.Nope is not in the descriptor set"),
])
def test_descriptor_problems(data: bytes, services: list[str], problem: str) -> None:
    assert problem in (descriptor_set_problem(data, services) or "")


def test_missing_imports_are_named() -> None:
    fds = descriptor_pb2.FileDescriptorSet.FromString(GREETER)
    only_greeter = descriptor_pb2.FileDescriptorSet(file=[f for f in fds.file if f.name.startswith("meshgate/")])
    problem = descriptor_set_problem(only_greeter.SerializeToString(), ["meshgate.devtools.Greeter"])
    assert "imports google/api/annotations.proto, which is not in the set (compile with protoc --include_imports)" in problem


def _transcoder(**spec) -> GRPCJSONTranscoder:
    return GRPCJSONTranscoder.model_validate({"apiVersion": "meshgate.io/v1alpha1", "kind": "GRPCJSONTranscoder",
                                              "metadata": {"name": "t"}, "spec": spec})


def test_inline_descriptor_is_checked_at_config_time() -> None:
    ok = _transcoder(descriptorSet={"inline": base64.b64encode(GREETER).decode()}, services=["meshgate.devtools.Greeter"])
    assert ok.spec.descriptor_set.inline_bytes() == GREETER
    with pytest.raises(ValidationError, match="service meshgate.devtools.Other is not in the descriptor set"):
        _transcoder(descriptorSet={"inline": base64.b64encode(GREETER).decode()}, services=["meshgate.devtools.Other"])
    with pytest.raises(ValidationError, match="not valid base64"):
        _transcoder(descriptorSet={"inline": "!!"}, services=["a.B"])
