"""`envoy.filters.http.rate_limit_quota` (placeholder until the Budget mode is built)."""

from __future__ import annotations

NAME = "envoy.filters.http.rate_limit_quota"


def listener_filters(listener):  # noqa: ANN001, ANN201
    return []
