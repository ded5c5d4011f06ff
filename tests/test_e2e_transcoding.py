"""gRPC-JSON transcoding through the real Envoy: REST/JSON requests (http.client) to `/v1/...`
become gRPC calls to the Greeter (a real grpc upstream), by the `google.api.http` options in its
descriptor set; replies come back as JSON and gRPC errors as HTTP status codes.

One `meshgate run` serves `tests/e2e/transcoding/` (a GRPCJSONTranscoder named by an HTTPRoute
rule's ExtensionRef filter, and a plain HTTPRoute beside it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import Meshgate, free_port, request

CONFIG = Path(__file__).parent / "e2e" / "transcoding"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("transcoding")
    env = {name: str(free_port()) for name in ("HTTP_PORT", "GREETER_PORT", "WEB_PORT")}
    mg = Meshgate([str(CONFIG)], work, env=env).start()
    mg.http = int(env["HTTP_PORT"])
    yield mg
    assert mg.stop() == 0, mg.output()


def test_get_binds_path_and_query_parameters(gw: Meshgate) -> None:
    r = request(gw.http, "/v1/hello/ada?greeting=Hey", headers={"x-trace": "t1"})
    assert r.status == 200 and r.headers["content-type"] == "application/json", r
    assert r.json["message"] == "Hey, ada!" and r.json["upstream"] == "greeter-1"
    assert r.json["metadata"]["x-trace"] == "t1"  # request headers reach the gRPC upstream as metadata
    assert r.headers["x-upstream"] == "greeter-1"  # and its response metadata comes back as headers


def test_post_json_body(gw: Meshgate) -> None:
    r = request(gw.http, "/v1/hello", method="POST", body=json.dumps({"name": "bob", "greeting": "Yo"}).encode(),
                headers={"content-type": "application/json"})
    assert r.status == 200 and r.json["message"] == "Yo, bob!", r


def test_server_stream_is_a_json_array(gw: Meshgate) -> None:
    r = request(gw.http, "/v1/hello/ada/stream?count=2")
    assert r.status == 200 and [m["message"] for m in r.json] == ["Hello, ada!"] * 2, r


def test_print_options_apply(gw: Meshgate) -> None:
    # alwaysPrintPrimitiveFields: an empty map/field is printed, not left out.
    r = request(gw.http, "/v1/sleep/0")
    assert r.status == 200 and "metadata" in r.json and r.json["message"] == "slept 0 ms", r


@pytest.mark.parametrize("code, http_status", [(5, 404), (7, 403), (3, 400), (16, 401), (14, 503), (13, 500)])
def test_grpc_errors_map_to_http_status(gw: Meshgate, code: int, http_status: int) -> None:
    r = request(gw.http, f"/v1/fail/{code}?message=nope")
    assert r.status == http_status, r
    assert r.json == {"code": code, "message": "nope", "details": []}  # convertGrpcStatus: JSON google.rpc.Status


def test_unknown_query_parameter_is_rejected(gw: Meshgate) -> None:
    r = request(gw.http, "/v1/hello/ada?bogus=1")
    assert r.status == 400, r


def test_unknown_rest_path_is_not_forwarded(gw: Meshgate) -> None:
    r = request(gw.http, "/v1/nothing/here")
    assert r.status == 404, r


def test_plain_http_route_beside_it_is_unaffected(gw: Meshgate) -> None:
    r = request(gw.http, "/plain/x")
    assert r.status == 200 and r.upstream == "web-1" and r.json["path"] == "/plain/x", r


def test_filter_is_off_by_default_on_the_listener(gw: Meshgate) -> None:
    listeners = gw.dump_section("ListenersConfigDump")["dynamic_listeners"]
    chain = listeners[0]["active_state"]["listener"]["filter_chains"][0]
    hcm = next(f["typed_config"] for f in chain["filters"] if f["name"].endswith("http_connection_manager"))
    transcoder = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.grpc_json_transcoder")
    assert transcoder["disabled"] is True
