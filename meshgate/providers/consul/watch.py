"""`ServiceWatch`: one Consul service followed with blocking queries, through `py-consul`'s
asyncio client (`consul.aio`, unmodified).

A Consul *blocking query* is a long poll: `GET /v1/health/service/NAME?index=N&wait=30s` hangs
until the service changes after Raft index N (or `wait` ends), and every answer carries the
current index in `X-Consul-Index`. Consul's rules for clients
(https://developer.hashicorp.com/consul/api-docs/features/blocking), all followed here:

- an answer is no proof of change (a timeout or an idempotent write returns the same data), so the
  endpoints are compared, and only a real change goes out;
- an index that goes *backwards* (a restored snapshot, a new cluster) means start over: the next
  query is a plain read (index 0), never a block on the old index, which would wait forever;
- an index of 0 must never be blocked on (the query would return at once, forever): use 1;
- errors are retried with exponential back-off (with jitter), and the last endpoints stay.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshgate import ir

log = logging.getLogger("meshgate.providers.consul")

__all__ = ["ConsulQuery", "ServiceWatch", "endpoints_of"]

MAX_WEIGHT = 128  # the largest Backend endpoint weight meshgate gives Envoy


@dataclass(frozen=True)
class ConsulQuery:
    """What one watch asks Consul: the instances of `service` (in `datacenter`, with `tags`)."""

    address: str  # the agent's HTTP API, http(s)://HOST:PORT
    service: str
    datacenter: str | None = None
    tags: tuple[str, ...] = ()
    only_passing: bool = True

    def describe(self) -> str:
        where = f" in {self.datacenter}" if self.datacenter else ""
        tags = f" tagged {','.join(self.tags)}" if self.tags else ""
        return f"Consul service {self.service}{where}{tags} at {self.address}"


def endpoints_of(entries: list[dict[str, Any]] | None, only_passing: bool) -> tuple[tuple[ir.Endpoint, ...], list[str]]:
    """`/v1/health/service` entries -> (Envoy endpoints, why some instances were left out).

    An instance's address is its service address, else its node's (Consul's rule). Its weight is
    Consul's `Weights.Passing`, or `Weights.Warning` while a check warns (0 leaves it out, as
    Consul's DNS does). Critical instances never serve; with `only_passing`, neither do warning
    ones (the agent already filtered them with `?passing`; checked again here all the same).
    """
    out: dict[tuple[str, int], ir.Endpoint] = {}
    skipped: list[str] = []
    for entry in entries or ():
        service, node = entry.get("Service") or {}, entry.get("Node") or {}
        statuses = {check.get("Status") for check in entry.get("Checks") or ()}
        if "critical" in statuses or (only_passing and statuses - {"passing"}):
            continue
        address = service.get("Address") or node.get("Address") or ""
        port = service.get("Port") or 0
        name = service.get("ID") or service.get("Service") or "?"
        try:
            ipaddress.ip_address(address)
        except ValueError:
            # Envoy's EDS takes IP addresses only; a DNS name would make it reject the whole update.
            skipped.append(f"instance {name}: address {address!r} is not an IP address")
            continue
        if not 1 <= int(port) <= 65535:
            skipped.append(f"instance {name}: port {port!r} is not a port")
            continue
        weights = service.get("Weights") or {}
        weight = int(weights.get("Warning" if "warning" in statuses else "Passing", 1))
        if weight <= 0:
            continue
        out[(address, int(port))] = ir.Endpoint(address, int(port), min(weight, MAX_WEIGHT))
    return tuple(sorted(out.values(), key=lambda e: (e.address, e.port))), skipped


class ServiceWatch:
    """Follows one `ConsulQuery` (see the module doc). `endpoints` is None until Consul first
    answers; then the last endpoints seen, kept while Consul can't be reached (`stale`)."""

    def __init__(self, client: Any, query: ConsulQuery, on_change: Callable[[ServiceWatch], None], *,
                 token: str | None = None, wait: float = 30.0, min_backoff: float = 0.1, max_backoff: float = 30.0,
                 request_timeout: float = 10.0) -> None:
        self.client = client  # consul.aio.Consul
        self.query = query
        self.on_change = on_change  # called on the loop when endpoints or the watch's state change
        self.token = token
        self.wait = wait
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.request_timeout = request_timeout  # beyond `wait` (+ Consul's wait/16 jitter)
        self.endpoints: tuple[ir.Endpoint, ...] | None = None
        self.index = 0  # the X-Consul-Index to block on next; 0 = a plain read
        self.stale = False  # Consul can't be read now; `endpoints` are the last known
        self.reason = "Pending"  # Synced | ConsulUnreachable | ConsulAccessDenied | ConsulError | Pending
        self.message = f"waiting for the first answer of {query.describe()}"
        self.skipped: list[str] = []
        self.last_success: float | None = None
        self.failures = 0  # consecutive
        self.queries = 0

    async def run(self) -> None:
        from consul import ACLDisabled, ACLPermissionDenied, ConsulException

        backoff = self.min_backoff
        while True:
            index_sent = self.index
            started = time.monotonic()
            try:
                self.queries += 1
                index, entries = await asyncio.wait_for(
                    self.client.health.service(
                        self.query.service, index=index_sent or None, wait=f"{self.wait:g}s",
                        passing=self.query.only_passing, tag=list(self.query.tags) or None,
                        dc=self.query.datacenter, token=self.token),
                    self.wait * 17 / 16 + self.request_timeout)
            except asyncio.CancelledError:
                raise
            except (ACLPermissionDenied, ACLDisabled) as exc:
                self._failed("ConsulAccessDenied", f"Consul refused the ACL token (403: {_text(exc)}): "
                             "give a token with service:read and node:read (--consul-token-file or $CONSUL_HTTP_TOKEN)")
            except ConsulException as exc:
                self._failed("ConsulError", f"Consul answered an error: {_text(exc)}")
            except (OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - aiohttp's errors, timeouts
                self._failed("ConsulUnreachable", f"cannot reach Consul: {_text(exc) or type(exc).__name__}")
            else:
                backoff = self.min_backoff
                changed = self._answered(int(index), entries, index_sent)
                if not changed and time.monotonic() - started < self.min_backoff:
                    # Consul's "rate limit" rule: a query that neither blocked nor changed anything
                    # (a server answering index 0, or the same index at once) must not spin.
                    await asyncio.sleep(self.min_backoff)
                continue
            # Back off (with jitter, so many meshgates don't retry in step), keep the last endpoints.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.max_backoff)

    def _answered(self, index: int, entries: list[dict[str, Any]] | None, index_sent: int) -> bool:
        """Take an answer; True if the endpoints or the watch's state changed."""
        if index <= 0:
            self.index = 1  # never block on 0: it would return at once, forever
        elif index < index_sent:
            # Consul's rule: an index that goes backwards means start over with a plain read.
            log.info("Consul index went backwards; reading the service again",
                     extra={"service": self.query.service, "index": index, "previous": index_sent})
            self.index = 0
        else:
            self.index = index
        endpoints, skipped = endpoints_of(entries, self.query.only_passing)
        changed = endpoints != self.endpoints or self.stale or self.reason != "Synced"
        if skipped != self.skipped and skipped:
            log.warning("Consul instances left out", extra={"service": self.query.service, "problems": skipped[:10]})
        self.endpoints, self.skipped = endpoints, skipped
        self.stale, self.failures, self.last_success = False, 0, time.time()
        self.reason = "Synced"
        self.message = f"{len(endpoints)} endpoint(s) from {self.query.describe()} (index {index})"
        if skipped:
            self.message += f"; left out: {'; '.join(skipped[:3])}"
        if changed:
            self.on_change(self)
        return changed

    def _failed(self, reason: str, message: str) -> None:
        self.failures += 1
        self.index = 0  # after an error, start with a plain read: the agent may be another one now
        first = not self.stale or reason != self.reason
        self.stale, self.reason = True, reason
        kept = ("no endpoints yet" if self.endpoints is None else
                f"serving the {len(self.endpoints)} endpoint(s) last seen"
                + (f" {time.strftime('%H:%M:%S', time.localtime(self.last_success))}" if self.last_success else ""))
        self.message = f"{message}; {kept}; retrying"
        if first:
            log.warning("Consul service can't be read; keeping its last endpoints",
                        extra={"service": self.query.service, "address": self.query.address, "reason": reason,
                               "error": message})
            self.on_change(self)

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.query.service, "datacenter": self.query.datacenter, "tags": list(self.query.tags),
                "address": self.query.address, "endpoints": None if self.endpoints is None else len(self.endpoints),
                "index": self.index, "stale": self.stale, "reason": self.reason, "message": self.message}


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
