"""The live status page (`/` on the status server) in a REAL headless Chromium (Debian's
`chromium`), driven over the Chrome DevTools protocol with `websockets`: the DOM shows the
listeners, routes and backends of a running `meshgate run`, and updates by itself (server-sent
events) when traffic flows and when the config changes, including a rejected one. With
`--update-golden` it saves the screenshot the docs show (docs/img/status-page.png)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import websockets

from harness import ROOT, Meshgate, free_port, request, wait_until, write, write_tls_files

CONFIG = Path(__file__).parent / "e2e" / "dashboards"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "docs" / "img" / "status-page.png"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's `chromium` is not installed: ./scripts/setup installs it")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    from test_dashboards import jwks

    work = tmp_path_factory.mktemp("status-page")
    config = work / "config"
    shutil.copytree(CONFIG, config)
    write_tls_files(work, ["api.example.com"])
    env = {"HTTP_PORT": str(free_port()), "HTTPS_PORT": str(free_port()), "ECHO_PORT": str(free_port()),
           "TLS_DIR": str(work), "JWKS": jwks()}
    mg = Meshgate([str(config)], work, env=env).start()
    mg.http, mg.config_dir = int(env["HTTP_PORT"]), config
    yield mg
    assert mg.stop() == 0, mg.output()


class Browser:
    """Headless Chromium with a fresh profile; one page, spoken to over CDP."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--window-size=1280,1400", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=(profile.parent / "chromium.log").open("wb"), stdin=subprocess.DEVNULL)
        # Chromium writes the port it bound into the profile (no race for a free port).
        port_file = profile / "DevToolsActivePort"
        self.port = int(wait_until(lambda: self._alive() and port_file.exists() and port_file.read_text().split("\n")[0],
                                   timeout=30, what="Chromium's DevTools port"))
        self.ws = None
        self.next_id = 0

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"chromium exited: {(self.profile.parent / 'chromium.log').read_text()[-2000:]}")
        return True

    async def open(self, url: str) -> None:
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5).read())  # noqa: S310
        page = next(p for p in pages if p["type"] == "page")
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)

    async def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        ident = self.next_id
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:  # events interleave with answers
            message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=20))
            if message.get("id") == ident:
                assert "error" not in message, message
                return message["result"]

    async def js(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def until(self, expression: str, what: str, timeout: float = 20.0) -> object:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                value = await self.js(expression)
            except AssertionError:  # the page is still loading (elements not there yet)
                value = None
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                text = await self.js("document.body.innerText")
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; the page shows:\n{text}")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
async def browser(tmp_path: Path):
    b = Browser(tmp_path / "profile")
    try:
        yield b
    finally:
        await b.close()


ROUTE_ROWS = "[...document.querySelectorAll('#routes tr[data-rule]')]"


async def test_status_page_shows_the_config_and_updates_live(gw: Meshgate, browser: Browser, pytestconfig: pytest.Config) -> None:
    update_golden = pytestconfig.getoption("--update-golden")
    with urllib.request.urlopen(f"{gw.status_url}/", timeout=5) as resp:  # noqa: S310 - loopback
        assert resp.headers["Content-Type"].startswith("text/html")
    await browser.open(f"{gw.status_url}/")
    await browser.until("document.querySelector('#conn').textContent === 'live'", "the event stream")
    # Listeners, routes (one row per rule and virtual host), backends with endpoint health from Envoy.
    listeners = await browser.js("[...document.querySelectorAll('#listeners tr[data-listener]')].map(r => r.dataset.listener)")
    assert listeners == ["default/edge/http", "default/edge/https"]
    rules = await browser.until(f"{ROUTE_ROWS}.length >= 4 && {ROUTE_ROWS}.map(r => r.dataset.rule)", "the route rules")
    assert {f"httproute/default/app/rule/{i}" for i in range(4)} <= set(rules)
    assert await browser.js("document.querySelector('#routes tr[data-route=\"HTTPRoute/default/app\"] td').className") == "ok"
    endpoint = await browser.until("(e => e && e.className + ' ' + e.textContent)"
                                   "(document.querySelector('#backends tr[data-backend=\"default/echo\"] [data-endpoint]'))",
                                   "the backend's endpoints")
    assert endpoint.startswith("ok ") and endpoint.endswith("healthy"), endpoint
    assert await browser.js("document.querySelector('#backends tr[data-backend=\"default/echo\"] td:last-child').textContent") == "envoy"
    # Envoy and the edge companion (a node of its own group: it takes its config over ADS too)
    assert await browser.js("document.querySelectorAll('#nodes tr[data-node]').length") == 2

    # Traffic: the rule's request count and rate rise on the page without a reload.
    for _ in range(10):
        assert request(gw.http, "/public/x").status == 200
    public = ("document.querySelector('#routes tr[data-rule=\"httproute/default/app/rule/0\"]"
              f"[data-vhost^=\"default/edge/{gw.http}/\"]')")  # the HTTP listener's virtual host
    await browser.until(f"Number({public}.dataset.total) >= 10 && Number({public}.querySelector('.rps').textContent) > 0",
                        "the request rate of rule 0")

    # A config change: a new route appears.
    write(gw.config_dir / "extra.yaml", """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: extra}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /extra}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: echo}]
""")
    await browser.until("!!document.querySelector('#routes tr[data-route=\"HTTPRoute/default/extra\"]')", "the new route")

    # A change with a problem: listed under rejected configs, the route marked.
    write(gw.config_dir / "extra.yaml", """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: extra}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /extra}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: missing}]
""")
    rejected = await browser.until("(r => r && r.textContent)(document.querySelector('#problems tr.rejected'))",
                                   "the rejected config")
    assert "extra.yaml" in rejected and "missing" in rejected, rejected
    await browser.until("document.querySelector('#routes tr[data-route=\"HTTPRoute/default/extra\"] td').className === 'bad'",
                        "the route marked as having a problem")
    assert request(gw.http, "/extra/x").status == 500  # Gateway API: a rule with no valid backend answers 500

    for _ in range(5):  # some traffic in the picture
        request(gw.http, "/public/y")
        request(gw.http, "/admin/z")
    await browser.until(f"Number({public}.dataset.total) >= 15", "the latest counts")
    shot = await browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    if update_golden:  # refresh the docs' screenshot only when asked: a test run must not dirty the checkout
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(png)
