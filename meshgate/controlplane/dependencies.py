"""Dependency checks that follow the config, in `/readyz` (meshgate.controlplane.readiness).

What a config uses, the control plane checks, each in the background with its last result:

- `jwks:<URI>`: each remote JWKS a JWT provider names (SecurityPolicy `jwt.providers[].remoteJWKS`).
  A GET answered 200 with a JSON key set that has keys is ok. Envoy fetches the set itself
  (through a cluster meshgate creates) and keeps the last one it got, so a failing IdP is
  *degraded*, not unready: `gating: false`.
- `redis`: the Redis the edge companion counts global rate limits in (`MESHGATE_REDIS_URL`),
  while some route has a global rate limit or a requestSignature with `nonceStore: Redis` (its
  nonces are there too). A PING answered is ok. Not gating either: while it is down, Envoy
  applies each limit's failure mode, the companion each signature policy's.

Checks come and go with the config: a reload that drops the last remote JWKS drops its check.
The probe runs from the control plane's network position, which may differ from Envoy's (a
firewall that lets only the proxies out shows here as a failure Envoy doesn't have): the
message says where it probed from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from meshgate import ir
from meshgate.controlplane.health_checks import ProbeCheck

log = logging.getLogger(__name__)

INTERVAL_S = 10.0  # between probes; MESHGATE_DEPENDENCY_CHECK_INTERVAL (seconds) overrides it
TIMEOUT_S = 3.0
WHERE = "the control plane"  # probes run from here, not from Envoy (see the module doc)
MAX_JWKS_BYTES = 1 << 20  # a key set larger than this is not a key set
USER_AGENT = "meshgate-dependency-check"  # so an IdP's logs tell our probes from Envoy's fetches


def _jwks_probe(uri: str):  # noqa: ANN202
    async def probe() -> str:
        import aiohttp

        async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as session, \
                session.get(uri, allow_redirects=False) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            body = await resp.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise RuntimeError(f"over {MAX_JWKS_BYTES} bytes: not a key set")
        try:
            keys = json.loads(body).get("keys")
        except (ValueError, AttributeError):
            raise RuntimeError("not a JSON key set") from None
        if not isinstance(keys, list) or not keys:
            raise RuntimeError("a key set without keys")
        return f"ok, {len(keys)} key(s)"

    return probe


def _redis_probe(url: str):  # noqa: ANN202
    async def probe() -> str:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        try:
            await client.ping()
        finally:
            await client.aclose()
        return "ok, PING answered"

    return probe


def jwks_uris(listeners: Iterable[ir.Listener]) -> set[str]:
    """Every remote JWKS URI a route's JWT requirement names."""
    uris = set()
    for listener in listeners:
        for vhost in listener.virtual_hosts:
            for route in vhost.routes:
                jwt = route.security.jwt if route.security is not None else None
                for provider in jwt.providers if jwt is not None else ():
                    if provider.jwks_uri:
                        uris.add(provider.jwks_uri)
    return uris


class ConfigDependencies:
    """Keeps `status.dependencies` holding one check per dependency the current config uses."""

    def __init__(self, status, redis_url: str | None = None, interval: float | None = None) -> None:  # noqa: ANN001
        self.status = status
        self.redis_url = redis_url or os.environ.get("MESHGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
        self.interval = interval or check_interval(os.environ)
        self.checks: dict[str, ProbeCheck] = {}

    def wanted(self, translation) -> dict[str, Any]:  # noqa: ANN001 - a gatewayapi.Translation
        from meshgate.edge.config import global_rate_limits, signature_policies

        listeners = tuple(translation.ir.listeners)
        out = {f"jwks:{uri}": (uri, _jwks_probe(uri)) for uri in sorted(jwks_uris(listeners))}
        # The same Redis holds the nonces of requestSignature policies with nonceStore Redis.
        if global_rate_limits(listeners) or any(s.nonce_store == "Redis" for s in signature_policies(listeners).values()):
            out["redis"] = (_redact(self.redis_url), _redis_probe(self.redis_url))
        return out

    def sync(self, translation) -> None:  # noqa: ANN001 - called on the event loop after each publish
        wanted = self.wanted(translation)
        for name in [n for n in self.checks if n not in wanted]:
            check = self.checks.pop(name)
            if check.task is not None:
                check.task.cancel()
            self.status.dependencies.pop(name, None)
        for name, (target, probe) in wanted.items():
            if name in self.checks:
                continue
            check = self.checks[name] = ProbeCheck(target, probe, gating=False, interval=self.interval,
                                                   timeout=TIMEOUT_S, where=WHERE)
            self.status.dependencies[name] = check
            check.task = asyncio.get_running_loop().create_task(check.run(), name=f"dependency {name}")

    def close(self) -> None:
        for check in self.checks.values():
            if check.task is not None:
                check.task.cancel()


def check_interval(environ) -> float:  # noqa: ANN001
    """MESHGATE_DEPENDENCY_CHECK_INTERVAL (seconds, 0.1 to 3600), else INTERVAL_S."""
    from meshgate.environment import env_number

    return env_number(environ, "MESHGATE_DEPENDENCY_CHECK_INTERVAL", INTERVAL_S, 0.1, 3600, "seconds, 0.1 to 3600")


def _redact(url: str) -> str:
    """A Redis URL without its password (`redis://:secret@host` -> `redis://***@host`)."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at and credentials else url
