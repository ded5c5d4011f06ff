"""Rules of the resource model that golden files show only indirectly: hostname intersection,
route precedence, path templates, durations."""

from __future__ import annotations

import pytest

from meshgate.gatewayapi.checks import effective_hostnames
from meshgate.api.models import check_path_template, duration_seconds, template_variables
from meshgate.gatewayapi.routes import precedence as _precedence
from meshgate.ir import HeaderMatch, Match, PathMatch


@pytest.mark.parametrize("route,listener,expected", [
    ([], None, ("*",)),
    ([], "*.example.com", ("*.example.com",)),
    (["a.example.com"], None, ("a.example.com",)),
    (["a.example.com", "b.other.org"], "*.example.com", ("a.example.com",)),
    (["*.example.com"], "a.example.com", ("a.example.com",)),
    (["*.example.com"], "*.example.com", ("*.example.com",)),
    (["example.com"], "*.example.com", ()),  # a wildcard needs at least one more label
    (["*.b.example.com"], "*.example.com", ("*.b.example.com",)),
    (["other.org"], "a.example.com", ()),
])
def test_effective_hostnames(route, listener, expected) -> None:
    assert effective_hostnames(route, listener) == expected


def _key(path_kind: str, value: str, *, method=None, headers=0, query=0, name="r", rule=0):
    match = Match(PathMatch(path_kind, value), method=method,
                  headers=tuple(HeaderMatch(f"h{i}", "v") for i in range(headers)),
                  query=tuple(HeaderMatch(f"q{i}", "v") for i in range(query)))
    return _precedence(match, "default", name, rule, 0)


def test_route_precedence_follows_gateway_api() -> None:
    ordered = [
        _key("exact", "/a/b"),
        _key("template", "/users/{id}/orders"),
        _key("template", "/users/{id}"),
        _key("regex", "/items/[0-9]+"),
        _key("prefix", "/api/v1", method="GET"),
        _key("prefix", "/api/v1", headers=2),
        _key("prefix", "/api/v1", headers=1, query=1),
        _key("prefix", "/api/v1", headers=1),
        _key("prefix", "/api/v1", name="a-route"),
        _key("prefix", "/api/v1", name="b-route"),
        _key("prefix", "/api"),
        _key("prefix", "/"),
    ]
    assert sorted(ordered) == ordered


@pytest.mark.parametrize("template", ["/users/{id}", "/static/**", "/a/*/b", "/f/{path=**}", "/x/{a}/{b=*}/c"])
def test_valid_templates(template: str) -> None:
    check_path_template(template)


@pytest.mark.parametrize("template,problem", [
    ("users/{id}", "must start with '/'"),
    ("/a/**/b", "'**' may only be the last segment"),
    ("/a/{x}/{x}", "appears twice"),
    ("/a/x{y}", "bad segment"),
    ("/{a}/{b}/{c}/{d}/{e}/{f}", "at most 5 variables"),
    ("/a//b", "empty path segment"),
])
def test_invalid_templates(template: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("*", r"\*").replace("(", r"\(")):
        check_path_template(template)


def test_template_variables() -> None:
    assert template_variables("/users/{id}/orders/{order=*}/{rest=**}") == ["id", "order", "rest"]


@pytest.mark.parametrize("text,seconds", [("10s", 10), ("500ms", 0.5), ("1m30s", 90), ("1h", 3600), ("2s500ms", 2.5), ("0s", 0)])
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def test_clip() -> None:
    from meshgate.api.messages import clip

    assert clip("short") == "'short'"
    assert clip("a" * 80) == repr("a" * 80)
    assert clip("a" * 5000) == repr("a" * 80) + "… (5000 characters)"
    assert clip(12345) == "12345"


def test_describe_validation_error_without_context() -> None:
    """Callers with only the pydantic error (no model, no data) still get plain words."""
    from pydantic import ValidationError

    from meshgate.api.messages import describe_validation_error
    from meshgate.api.models import BackendEndpoint, HTTPRoute

    with pytest.raises(ValidationError) as info:
        BackendEndpoint.model_validate({"address": "a b", "port": 1, "wieght": 1})
    messages = sorted(describe_validation_error(e) for e in info.value.errors())
    assert messages == ["'a b' is not an IP address or a DNS name: a space is not allowed (letters, digits, '-' and '.')",
                        "unknown field"]
    data = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
            "spec": {"parentRefs": [{"name": "e"}], "rules": [{"backendRefs": [{"name": "b"}], "backendRef": []}]}}
    with pytest.raises(ValidationError) as info:
        HTTPRoute.model_validate(data)
    (error,) = info.value.errors()
    # backendRefs is already there: suggesting it would send the user in circles.
    assert describe_validation_error(error, HTTPRoute, data) == "unknown field"


@pytest.mark.parametrize("address", ["10.0.0.1", "::1", "fe80::1", "localhost", "db.example.com", "db.example.com.",
                                     "DB-1.Example.COM", "xn--bcher-kva.example", "a" * 63 + ".io"])
def test_valid_addresses(address: str) -> None:
    from meshgate.api.models import check_address

    assert check_address(address) == address


@pytest.mark.parametrize("value", ["", "plain", "a b\tc", "café", "x" * 4096, "%REQ(x)%"])
def test_valid_header_values(value: str) -> None:
    from meshgate.api.models import check_header_value

    assert check_header_value(value) == value
