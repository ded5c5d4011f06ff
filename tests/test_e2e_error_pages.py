"""BackendTrafficPolicy `responseOverride` (custom error pages) through the real Envoy: the
upstream's error responses and Envoy's own are replaced on the policy's routes only."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import Meshgate, free_port, request

CONFIG = Path(__file__).parent / "e2e" / "error-pages"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    env = {"HTTP_PORT": str(free_port()), "APP_PORT": str(free_port()), "DOWN_PORT": str(free_port())}
    mg = Meshgate([str(CONFIG)], tmp_path_factory.mktemp("error-pages"), env=env).start()
    mg.port = int(env["HTTP_PORT"])
    yield mg
    assert mg.stop() == 0, mg.output()


def test_an_upstream_404_gets_the_json_page(gw: Meshgate) -> None:
    r = request(gw.port, "/pages/__status/404")
    assert r.status == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json == {"error": "not found"}


@pytest.mark.parametrize("code", [500, 502, 599])
def test_every_5xx_gets_the_html_page_as_503(gw: Meshgate, code: int) -> None:
    r = request(gw.port, f"/pages/__status/{code}")
    assert r.status == 503
    assert r.headers["content-type"] == "text/html" and r.body == b"<h1>Back soon</h1>"


def test_envoys_own_503_is_replaced_too(gw: Meshgate) -> None:
    r = request(gw.port, "/down/x")  # no upstream listening: Envoy answers
    assert r.status == 503 and r.body == b"<h1>Back soon</h1>"


def test_other_statuses_and_other_routes_are_untouched(gw: Meshgate) -> None:
    ok = request(gw.port, "/pages/x")
    assert ok.status == 200 and ok.json["upstream"] == "app-1"
    assert request(gw.port, "/pages/__status/403").status == 403
    plain = request(gw.port, "/plain/__status/404")
    assert plain.status == 404 and plain.json["upstream"] == "app-1"  # the echo upstream's own body
