"""Malformed input, one case per row: the config a user writes and the one line `meshgate
validate` answers with. Everything here is something Envoy would NACK or mis-serve if it got
through (a CR/LF in a header, a Host rewrite by header, an address that isn't one), or a
message that must stay readable (clipped values, did-you-mean)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.api.config import KINDS
from meshgate.cli import main

# Other documents the route cases refer to; they follow the case, so its line numbers are its own.
CONTEXT = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: app}
spec:
  endpoints: [{address: 127.0.0.1, port: 9000}]
"""

# A route whose rule ends at line 7; a case's `rule` lines start at line 8.
ROUTE = """apiVersion: {api}
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]
"""
GW_V1 = "gateway.networking.k8s.io/v1"
MG = "meshgate.io/v1alpha1"


def route(rule: str, api: str = GW_V1) -> str:
    return ROUTE.format(api=api) + rule


def set_header(name: str, value: str, modifier: str = "requestHeaderModifier") -> str:
    kind = modifier[0].upper() + modifier[1:]
    return route(f"      filters:\n        - type: {kind}\n          {modifier}:\n"
                 f"            set: [{{name: {name}, value: {value}}}]\n")


def path_match(kind: str, value: str, api: str = GW_V1) -> str:
    return route(f"      matches: [{{path: {{type: {kind}, value: {value}}}}}]\n", api)


def rewrite(path: str, filter_type: str = "URLRewrite", key: str = "urlRewrite", host: str | None = None) -> str:
    body = f"hostname: {host}" if host else f"path: {path}"
    text = route(f"      filters:\n        - type: {filter_type}\n          {key}: {{{body}}}\n")
    if filter_type == "RequestRedirect":  # a redirect has no backends
        text = text.replace("    - backendRefs: [{group: meshgate.io, kind: Backend, name: app}]\n      filters:",
                            "    - filters:")
    return text


def backend(address: str) -> str:
    return ("apiVersion: meshgate.io/v1alpha1\nkind: Backend\nmetadata: {name: other}\n"
            f"spec:\n  endpoints: [{{address: {address}, port: 9000}}]\n")


SET = "spec.rules[0].filters[0].requestHeaderModifier.set[0]"
MATCH = "spec.rules[0].matches[0].path"
REWRITE = "spec.rules[0].filters[0].urlRewrite"
ADDRESS = "spec.endpoints[0].address"
NOT_ADDRESS = "is not an IP address or a DNS name"
LONG = "9" * 5000

BAD: list[tuple[str, str, str]] = [
    # -- header values (RFC 9110 field-value) ---------------------------------------------
    ("value-crlf", set_header("x-a", r'"a\r\nX-Injected: 1"'),
     f"11: {SET}.value: a header value can't contain control characters (CR at position 2)"),
    ("value-lf", set_header("x-a", r'"a\nb"'), f"11: {SET}.value: a header value can't contain control characters (LF (newline) at position 2)"),
    ("value-nul", set_header("x-a", r'"a\0b"'), f"11: {SET}.value: a header value can't contain control characters (NUL at position 2)"),
    ("value-ctl", set_header("x-a", r'"a\x01b"'), f"11: {SET}.value: a header value can't contain control characters (U+0001 at position 2)"),
    ("value-del", set_header("x-a", r'"a\x7f"'), f"11: {SET}.value: a header value can't contain control characters (DEL at position 2)"),
    ("value-leading-space", set_header("x-a", '" v"'), f"11: {SET}.value: a header value can't start or end with a space or tab"),
    ("value-trailing-tab", set_header("x-a", r'"v\t"'), f"11: {SET}.value: a header value can't start or end with a space or tab"),
    ("response-value-crlf", set_header("x-a", r'"a\r\n"', "responseHeaderModifier"),
     "11: spec.rules[0].filters[0].responseHeaderModifier.set[0].value: a header value can't contain control characters (CR at position 2)"),
    ("match-value-lf", route('      matches: [{headers: [{name: x-a, value: "a\\nb"}]}]\n'),
     "8: spec.rules[0].matches[0].headers[0].value: a header value can't contain control characters (LF (newline) at position 2)"),
    # -- header names (RFC 9110 token; Envoy won't touch pseudo-headers or Host) ----------
    ("name-space", set_header('"x a"', "v"),
     f"11: {SET}.name: 'x a' is not a valid header name: a space is not allowed (letters, digits and !#$%&'*+-.^_`|~ only)"),
    ("name-colon", set_header('"x:y"', "v"),
     f"11: {SET}.name: 'x:y' is not a valid header name: ':' is not allowed (letters, digits and !#$%&'*+-.^_`|~ only)"),
    ("name-pseudo", set_header('":path"', "/x"), f"11: {SET}.name: ':path': pseudo-headers like :path or :authority can't be used here"),
    ("name-empty", set_header('""', "v"), f"11: {SET}.name: '' is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"),
    ("set-host", set_header("Host", "evil.example.com"),
     f"11: {SET}.name: the Host header can't be set or removed by a header modifier "
     "(to change the Host sent upstream, use a URLRewrite filter's hostname)"),
    ("remove-host", route("      filters:\n        - type: RequestHeaderModifier\n          requestHeaderModifier: {remove: [host]}\n"),
     "10: spec.rules[0].filters[0].requestHeaderModifier.remove[0]: the Host header can't be set or removed by a header "
     "modifier (to change the Host sent upstream, use a URLRewrite filter's hostname)"),
    ("duplicate-set", route("      filters:\n        - type: RequestHeaderModifier\n          requestHeaderModifier:\n"
                            "            set: [{name: X-A, value: '1'}, {name: x-a, value: '2'}]\n"),
     "11: spec.rules[0].filters[0].requestHeaderModifier.set: header 'x-a' appears twice (names are case-insensitive)"),
    ("match-name-pseudo", route("      matches: [{headers: [{name: ':authority', value: a}]}]\n"),
     "8: spec.rules[0].matches[0].headers[0].name: ':authority': pseudo-headers like :path or :authority can't be used here"),
    # -- rewrite and redirect hostnames ---------------------------------------------------
    ("rewrite-host-crlf", rewrite("", host=r'"a\r\nb.example.com"'),
     f"10: {REWRITE}.hostname: 'a\\r\\nb.example.com' is not a valid hostname (a lowercase DNS name like api.example.com, or *.example.com)"),
    ("rewrite-host-wildcard", rewrite("", host='"*.example.com"'),
     f"10: {REWRITE}.hostname: a wildcard can't be used here: give the exact hostname"),
    ("redirect-host-wildcard", rewrite("", "RequestRedirect", "requestRedirect", host='"*.example.com"'),
     "9: spec.rules[0].filters[0].requestRedirect.hostname: a wildcard can't be used here: give the exact hostname"),
    ("hostname-long-label", route("", GW_V1).replace("  rules:", f"  hostnames: [{'a' * 64}.example.com]\n  rules:"),
     "6: spec.hostnames[0]: DNS label 'aaaaaaaaaaaaaaaaaaaa'… (64 characters) is longer than 63 characters"),
    # -- paths ----------------------------------------------------------------------------
    ("match-space", path_match("PathPrefix", '"/a b"'), f"8: {MATCH}: a path can't contain a space (at position 3); percent-encode it"),
    ("match-query", path_match("Exact", '"/a?x=1"'), f"8: {MATCH}: a path can't contain '?' (the query string is not part of the path)"),
    ("match-fragment", path_match("PathPrefix", '"/a#top"'), f"8: {MATCH}: a path can't contain '#' (a fragment is never sent to the server)"),
    ("match-control", path_match("Exact", r'"/a\x01"'), f"8: {MATCH}: a path can't contain U+0001 (at position 3); percent-encode it"),
    ("match-bad-escape", path_match("Exact", '"/a%zz"'), f"8: {MATCH}: '%' at position 3 must start an escape like %20"),
    ("match-double-slash", path_match("PathPrefix", "/a//b"), f"8: {MATCH}: value can't contain '//'"),
    ("match-dot-dot", path_match("Exact", "/a/../b"), f"8: {MATCH}: value can't contain '/../'"),
    ("match-relative", path_match("PathPrefix", "api"), f"8: {MATCH}: value must start with '/'"),
    ("meshgate-match-space", path_match("Exact", '"/a b"', MG), f"8: {MATCH}: a path can't contain a space (at position 3); percent-encode it"),
    ("rewrite-query", rewrite("{type: ReplaceFullPath, replaceFullPath: '/x?y=1'}"),
     f"10: {REWRITE}.path.replaceFullPath: a path can't contain '?' (the query string is not part of the path)"),
    ("rewrite-fragment", rewrite("{type: ReplacePrefixMatch, replacePrefixMatch: '/x#y'}"),
     f"10: {REWRITE}.path.replacePrefixMatch: a path can't contain '#' (a fragment is never sent to the server)"),
    ("rewrite-crlf", rewrite(r'{type: ReplaceFullPath, replaceFullPath: "/x\r\nHost: evil"}'),
     f"10: {REWRITE}.path.replaceFullPath: a path can't contain CR (at position 3); percent-encode it"),
    ("rewrite-relative", rewrite("{type: ReplaceFullPath, replaceFullPath: x}"),
     f"10: {REWRITE}.path.replaceFullPath: a replacement path must start with '/'"),
    ("redirect-space", rewrite("{type: ReplaceFullPath, replaceFullPath: '/a b'}", "RequestRedirect", "requestRedirect"),
     "9: spec.rules[0].filters[0].requestRedirect.path.replaceFullPath: a path can't contain a space (at position 3); percent-encode it"),
    # -- Backend addresses ----------------------------------------------------------------
    ("address-words", backend("'not an address!'"),
     f"5: {ADDRESS}: 'not an address!' {NOT_ADDRESS}: a space is not allowed (letters, digits, '-' and '.')"),
    ("address-with-port", backend("'10.0.0.1:8080'"), f"5: {ADDRESS}: '10.0.0.1:8080' {NOT_ADDRESS}: put the port in the port field"),
    ("address-url", backend("'http://svc.local'"), f"5: {ADDRESS}: 'http://svc.local' {NOT_ADDRESS}: give a host, not a URL"),
    ("address-bad-ipv4", backend("999.1.1.1"), f"5: {ADDRESS}: '999.1.1.1' {NOT_ADDRESS}: it looks like an IPv4 address but isn't a valid one"),
    ("address-short-ipv4", backend("'1.2.3'"), f"5: {ADDRESS}: '1.2.3' {NOT_ADDRESS}: it looks like an IPv4 address but isn't a valid one"),
    ("address-hyphen", backend("-db.example.com"), f"5: {ADDRESS}: '-db.example.com' {NOT_ADDRESS}: a label can't start or end with '-'"),
    ("address-empty-label", backend("db..example.com"), f"5: {ADDRESS}: 'db..example.com' {NOT_ADDRESS}: empty label"),
    ("address-underscore", backend("db_1.example.com"), f"5: {ADDRESS}: 'db_1.example.com' {NOT_ADDRESS}: '_' is not allowed (letters, digits, '-' and '.')"),
    ("address-brackets", backend("'[::1]'"), f"5: {ADDRESS}: '[::1]' {NOT_ADDRESS}: write an IPv6 address without brackets"),
    ("address-long-label", backend("a" * 64 + ".example.com"),
     f"5: {ADDRESS}: '{'a' * 64}.example.com' {NOT_ADDRESS}: label 'aaaaaaaaaaaaaaaaaaaa'… (64 characters) is longer than 63 characters"),
    # -- long values are clipped ----------------------------------------------------------
    ("clip-duration", backend("127.0.0.1").replace("port: 9000}]", f"port: 9000}}]\n  connectTimeout: '{LONG}'"),
     f"6: spec.connectTimeout: '{'9' * 80}'… (5000 characters) is not a duration (use h, m, s or ms, like 10s, 500ms or 1m30s)"),
    ("clip-kind", f"apiVersion: v1\nkind: '{LONG}'\nmetadata: {{name: x}}\n",
     f"2: kind: unknown kind '{'9' * 80}'… (5000 characters) for apiVersion 'v1' (known: "
     # Every kind meshgate knows, as "apiVersion kind", sorted (the list grows with each new kind).
     + ", ".join(sorted(f"{v} {k}" for v, k in KINDS)) + ")"),
    # -- unknown fields suggest the nearest name ------------------------------------------
    ("did-you-mean-backendRefs", ROUTE.format(api=GW_V1).replace("- backendRefs", "- backendRef"),
     "7: spec.rules[0].backendRef: unknown field; did you mean backendRefs?"),
    ("did-you-mean-matches", route("      match: [{path: {value: /a}}]\n"),
     "8: spec.rules[0].match: unknown field; did you mean matches?"),
    ("did-you-mean-case", ROUTE.format(api=GW_V1).replace("  rules:", "  HostNames: [a.example.com]\n  rules:"),
     "6: spec.HostNames: unknown field; did you mean hostnames?"),
    ("did-you-mean-weight", ROUTE.format(api=GW_V1).replace("name: app}", "name: app, wieght: 2}"),
     "7: spec.rules[0].backendRefs[0].wieght: unknown field; did you mean weight?"),
    ("no-near-name", route("      colour: blue\n"), "8: spec.rules[0].colour: unknown field"),
    ("did-you-mean-in-backend", backend("127.0.0.1") + "  loadBalancer: {typ: Random}\n",
     "6: spec.loadBalancer.typ: unknown field; did you mean type?"),
    # -- what another apiVersion has ------------------------------------------------------
    ("template-needs-meshgate", path_match("Template", "'/users/{id}'"),
     "8: spec.rules[0].matches[0].path.type: input should be 'Exact', 'PathPrefix' or 'RegularExpression'; "
     "path templates need apiVersion meshgate.io/v1alpha1 (meshgate's HTTPRoute)"),
    ("kind-other-api-version", ROUTE.format(api="gateway.networking.k8s.io/v1beta1"),
     "2: kind: unknown kind 'HTTPRoute' for apiVersion 'gateway.networking.k8s.io/v1beta1'; "
     "did you mean apiVersion gateway.networking.k8s.io/v1 or meshgate.io/v1alpha1?"),
    ("kind-gateway-in-meshgate", "apiVersion: meshgate.io/v1alpha1\nkind: Gateway\nmetadata: {name: edge}\n",
     "2: kind: unknown kind 'Gateway' for apiVersion 'meshgate.io/v1alpha1'; did you mean apiVersion gateway.networking.k8s.io/v1?"),
    ("kind-typo", "apiVersion: meshgate.io/v1alpha1\nkind: Backnd\nmetadata: {name: b}\n",
     "2: kind: unknown kind 'Backnd' for apiVersion 'meshgate.io/v1alpha1'; did you mean kind Backend?"),
    ("kind-case", ROUTE.format(api=GW_V1).replace("kind: HTTPRoute", "kind: HttpRoute"),
     "2: kind: unknown kind 'HttpRoute' for apiVersion 'gateway.networking.k8s.io/v1'; did you mean kind HTTPRoute?"),
]

# Close to the cases above but valid: the checks must not reject what HTTP and Envoy accept.
GOOD: list[tuple[str, str]] = [
    ("value-inner-tab-and-utf8", set_header("x-a", r'"a\tb é"')),
    ("value-percent", set_header("x-a", '"50% off, %REQ(x)%"')),  # literal, not an Envoy formatter
    ("value-empty", set_header("x-a", '""')),
    ("name-token-chars", set_header("\"x_a!#$%&'*+.^`|~\"", "v")),
    ("match-escapes-and-subdelims", path_match("PathPrefix", "\"/a%20b/c;v=1/@x:y/!$&'()*+,=\"")),
    ("template-in-meshgate", path_match("Template", "'/users/{id}'", MG)),
    ("rewrite-template", route("      matches: [{path: {type: Template, value: '/u/{id}'}}]\n      filters:\n"
                               "        - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: '/users/{id}'}}}\n", MG)),
    ("address-ipv6", backend("'::1'")),
    ("address-names", backend("localhost").replace("port: 9000}]", "port: 9000}, {address: db-1.internal.example.com., port: 1},"
                                                    " {address: xn--bcher-kva.example, port: 2}, {address: 10.0.0.1, port: 3}]")),
]


def _validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, text: str) -> tuple[int, list[str]]:
    (tmp_path / "bad.yaml").write_text(text + CONTEXT)
    monkeypatch.chdir(tmp_path)
    code = main(["validate", "bad.yaml"])
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("text,expected", [pytest.param(t, e, id=i) for i, t, e in BAD])
def test_bad_input_is_one_exact_line(text: str, expected: str, tmp_path, monkeypatch, capsys) -> None:
    code, lines = _validate(tmp_path, monkeypatch, capsys, text)
    assert code == 1
    assert lines == [f"bad.yaml:{expected}", "1 problem(s) found"]


@pytest.mark.parametrize("text", [pytest.param(t, id=i) for i, t in GOOD])
def test_near_misses_are_valid(text: str, tmp_path, monkeypatch, capsys) -> None:
    code, lines = _validate(tmp_path, monkeypatch, capsys, text)
    assert (code, lines) == (0, [])


def test_messages_stay_short() -> None:
    """No message in the table echoes a value whole: each fits a terminal line or two."""
    assert max(len(expected) for _, _, expected in BAD if "known:" not in expected) < 260


def test_envoy_accepts_what_passes(tmp_path: Path) -> None:
    """The near misses above, translated, are valid Envoy config too (a '%' in a header value
    is literal, not the start of an Envoy formatter that Envoy would NACK)."""
    import json
    import subprocess

    from test_envoy_accepts import static_bootstrap

    from meshgate.api.config import load_config
    from meshgate.controlplane.pipeline import compile_config
    from meshgate.envoy.process import find_envoy
    from meshgate.xds.translator import TranslateOptions

    texts = {i: t for i, t in GOOD}
    for name in ("value-inner-tab-and-utf8", "value-percent", "name-token-chars", "match-escapes-and-subdelims",
                 "address-ipv6", "address-names"):
        (tmp_path / f"{name}.yaml").write_text(texts[name] + CONTEXT)
        resources = compile_config(load_config([str(tmp_path / f"{name}.yaml")], environ={}),
                                   TranslateOptions(access_log_path=None))
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps(static_bootstrap(resources)))
        result = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
