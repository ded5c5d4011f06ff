"""SecurityPolicy `oidc` through the real Envoy (its oauth2 filter) against a real OpenID
provider: panva's `oidc-provider` on node (tests/clients/oidc-provider, installed by
scripts/setup), its development login form, and a cookie-keeping client that follows every
redirect the way a browser does. Access tokens live 2 s, so the refresh is seen too.
"""

from __future__ import annotations

import http.client
import re
import secrets
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from harness import ROOT, Meshgate, free_port, wait_until

CONFIG = Path(__file__).parent / "e2e" / "oidc"
PROVIDER = ROOT / "tests" / "clients" / "oidc-provider"
CLIENT_SECRET = "oidc-" + secrets.token_hex(12)
TOKEN_TTL_S = 2

pytestmark = pytest.mark.skipif(shutil.which("node") is None or not (PROVIDER / "node_modules").is_dir(),
                                reason="needs node and the oidc-provider npm package (scripts/setup installs it)")


class Browser:
    """Follows redirects and keeps cookies by name (everything here is on 127.0.0.1, and cookies
    ignore ports). Records each hop."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}
        self.hops: list[tuple[str, int]] = []

    def request(self, url: str, method: str = "GET", body: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, str]:
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        hdrs = {"Accept": "text/html", **(headers or {})}
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            for name, value in resp.getheaders():
                if name.lower() == "set-cookie":
                    cookie, _, attrs = value.partition(";")
                    key, _, val = cookie.strip().partition("=")
                    expired = re.search(r"(?i)max-age=0|expires=thu, 01 jan 1970", attrs)
                    if expired or val in ("", "deleted"):
                        self.cookies.pop(key, None)
                    else:
                        self.cookies[key] = val
            self.hops.append((url, resp.status))
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, url
        finally:
            conn.close()

    def follow(self, url: str, method: str = "GET", body: str | None = None, limit: int = 15):
        status, headers, data, at = self.request(url, method, body)
        for _ in range(limit):
            if status not in (301, 302, 303, 307, 308):
                return status, headers, data, at
            url = urllib.parse.urljoin(at, headers["location"])
            status, headers, data, at = self.request(url)
        raise AssertionError(f"too many redirects: {self.hops}")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("oidc")
    http_port, oidc_port = free_port(), free_port()
    redirect = f"http://127.0.0.1:{http_port}/app/oauth2/callback"
    provider = subprocess.Popen(
        ["node", str(PROVIDER / "provider.mjs"), str(oidc_port), "meshgate-app", CLIENT_SECRET, redirect, str(TOKEN_TTL_S)],
        stdout=(work / "provider.out").open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    mg = Meshgate([str(CONFIG)], work, env={"HTTP_PORT": str(http_port), "APP_PORT": str(free_port()),
                                            "CLIENT_SECRET": CLIENT_SECRET, "OIDC_ISSUER": f"http://127.0.0.1:{oidc_port}"})
    try:
        wait_until(lambda: b"listening" in (work / "provider.out").read_bytes(), timeout=20, what="the OpenID provider")
        mg.start()
        mg.base = f"http://127.0.0.1:{http_port}"
        mg.issuer = f"http://127.0.0.1:{oidc_port}"
        mg.provider_log = work / "provider.out"
        yield mg
        assert mg.stop() == 0, mg.output()
    finally:
        mg.stop()
        provider.terminate()
        try:
            provider.wait(10)
        except subprocess.TimeoutExpired:
            provider.kill()


def login(gw: Meshgate, browser: Browser, path: str = "/app/page") -> tuple[int, dict, bytes, str]:
    """From a page of the app, through the provider's login form, back to the page."""
    status, headers, data, at = browser.follow(gw.base + path)
    assert status == 200 and at.startswith(gw.issuer + "/interaction/"), (status, at, browser.hops)
    action = re.search(rb'<form[^>]*action="([^"]+)"', data).group(1).decode()
    form = urllib.parse.urlencode({"login": "alice", "password": "anything", "prompt": "login"})
    return browser.follow(urllib.parse.urljoin(at, action), method="POST", body=form)


def test_a_browser_is_sent_to_the_provider_with_pkce(gw: Meshgate) -> None:
    status, headers, _, _ = Browser().request(gw.base + "/app/page")
    assert status == 302
    location = urllib.parse.urlsplit(headers["location"])
    query = urllib.parse.parse_qs(location.query)
    assert f"{location.scheme}://{location.netloc}{location.path}" == gw.issuer + "/auth"
    assert query["client_id"] == ["meshgate-app"] and query["response_type"] == ["code"]
    assert query["redirect_uri"] == [gw.base + "/app/oauth2/callback"]
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]  # PKCE
    assert "openid" in query["scope"][0].split() and "profile" in query["scope"][0].split()


def test_login_then_the_upstream_gets_the_access_token(gw: Meshgate) -> None:
    browser = Browser()
    status, _, data, at = login(gw, browser)
    assert status == 200 and at == gw.base + "/app/page", browser.hops
    assert b'"upstream": "app-1"' in data
    assert re.search(rb'"authorization": "Bearer [^"]+"', data)  # forwardAccessToken
    assert CLIENT_SECRET.encode() not in data
    assert any(name.startswith("OauthHMAC-") for name in browser.cookies)
    # The session holds: the next request goes straight through.
    status, _, data, at = browser.follow(gw.base + "/app/other")
    assert status == 200 and at == gw.base + "/app/other"


def test_an_api_client_gets_401_not_a_redirect(gw: Meshgate) -> None:
    status, headers, _, _ = Browser().request(gw.base + "/app/data", headers={"Accept": "application/json"})
    assert status == 401
    assert "location" not in headers


def test_a_forged_session_is_sent_to_log_in(gw: Meshgate) -> None:
    browser = Browser()
    login(gw, browser)
    bearer = next(k for k in browser.cookies if k.startswith("BearerToken-"))
    browser.cookies[bearer] = "forged" + browser.cookies[bearer][6:]
    browser.cookies = {k: v for k, v in browser.cookies.items() if not k.startswith("RefreshToken-")}
    status, headers, _, _ = browser.request(gw.base + "/app/page")
    assert status == 302 and headers["location"].startswith(gw.issuer + "/auth")


def test_an_expired_access_token_is_refreshed_without_a_new_login(gw: Meshgate) -> None:
    browser = Browser()
    login(gw, browser)
    before = dict(browser.cookies)
    time.sleep(TOKEN_TTL_S + 1)  # the access token expires (the provider issued it for 2 s)
    status, _, data, at = browser.follow(gw.base + "/app/page")
    assert status == 200 and at == gw.base + "/app/page", browser.hops[-4:]
    assert not any(url.startswith(gw.issuer + "/interaction") for url, _ in browser.hops[-3:])
    bearer = next(k for k in before if k.startswith("BearerToken-"))
    assert browser.cookies[bearer] != before[bearer]  # a new access token, from the refresh token


def test_logout_ends_the_session(gw: Meshgate) -> None:
    browser = Browser()
    login(gw, browser)
    status, headers, _, _ = browser.request(gw.base + "/app/logout")
    assert status == 302
    assert not any(k.startswith(("BearerToken-", "OauthHMAC-")) for k in browser.cookies), browser.cookies
    status, headers, _, _ = browser.request(gw.base + "/app/page")
    assert status == 302 and headers["location"].startswith(gw.issuer + "/auth")


def test_other_routes_are_not_behind_the_login(gw: Meshgate) -> None:
    status, _, _, _ = Browser().request(gw.base + "/public/x")
    assert status == 200


def test_the_client_secret_shows_nowhere(gw: Meshgate) -> None:
    import json

    for where, text in {"meshgate output": gw.output(), "/status": json.dumps(gw.status()),
                        "/status/objects": json.dumps(gw.objects())}.items():
        assert CLIENT_SECRET not in text, where
