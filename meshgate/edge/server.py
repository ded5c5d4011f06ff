"""`meshgate edge`: the edge companion's gRPC server and its ADS client.

- `envoy.service.auth.v3.Authorization/Check`: Envoy's ext_authz filter asks, per request of a
  route with `requestSignature`, whether to let it through (meshgate.edge.signing decides);
- `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: Envoy's ratelimit filter asks,
  per request of a route with an exact global rate limit, whether it is over the limit (counters
  in Redis: meshgate.edge.ratelimit);
- `envoy.service.rate_limit_quota.v3.RateLimitQuotaService/StreamRateLimitQuotas`: Envoy's
  rate_limit_quota filter reports usage and gets its share of each budget (meshgate.edge.quota);
- `grpc.health.v1.Health`: SERVING once the first config has arrived (a Kubernetes gRPC probe);
- Prometheus metrics on their own HTTP port: decisions by route and reason, check latency;
- JSON logs (meshgate.logs), each refusal with Envoy's `x-request-id`.

Its config (policies and their keys) comes from meshgate's ADS server, over the same protocol
Envoy uses: one state-of-the-world stream, as a node of group `meshgate-edge`, subscribed to
the meshgate types `meshgate.edge.v1.SignatureConfig` and `RateLimitConfig` (meshgate.edge.config). Each response is
ACKed, or NACKed (`error_detail`) if it can't be used, and then the last good config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.rate_limit_quota.v3 import rlqs_pb2
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

from meshgate.edge.config import (EDGE_GROUP, POLICY_KEY, RATE_LIMIT_CONFIG, ROUTE_KEY, SIGNATURE_CONFIG, TYPE_URLS,
                                  RateLimitConfig, SignatureConfig, policies_from)
from meshgate.edge.quota import QUOTA_SERVICE, QuotaService
from meshgate.edge.ratelimit import RATE_LIMIT_SERVICE, RateLimitService, rules_from
from meshgate.edge.signing import REASON_HEADER, ReplayCache, Verdict, Verifier
from meshgate.edge.tracing import log_ids, record, start_tracing, trace_of
from meshgate.otlp import service_name, start_metrics_push

log = logging.getLogger("meshgate.edge")

AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"

# The same keepalive settings as the ADS server expects from Envoy (meshgate.xds.server).
_CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
                    ("grpc.keepalive_permit_without_calls", 1)]
_SERVER_OPTIONS = [("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.http2.min_ping_interval_without_data_ms", 5_000), ("grpc.http2.max_ping_strikes", 0)]


@dataclass
class EdgeOptions:
    xds_address: str = "127.0.0.1:18000"
    address: str = "127.0.0.1:18002"  # where Envoy's ext_authz reaches us
    metrics_address: str | None = "127.0.0.1:19003"  # None: no metrics endpoint
    node_id: str = ""  # default: meshgate-edge-<hostname>
    replay_cache_size: int = 100_000
    # Where the global rate-limit counters live (shared by every companion replica).
    redis_url: str = os.environ.get("MESHGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_timeout_s: float = 0.05  # a Redis round trip slower than this fails the call (Envoy's failure mode)
    # Mutual TLS to the ADS server (meshgate xds --xds-tls-*): (client cert, key, CA of the server's
    # certificate), PEM files read at each connection so a rotated certificate is used at the next.
    xds_tls: tuple[str, str, str] | None = None
    xds_server_name: str | None = None  # the name the server's certificate carries, if not the address's host

    def xds_credentials(self) -> grpc.ChannelCredentials | None:
        """Channel credentials for the ADS stream (None: plaintext, loopback)."""
        if self.xds_tls is None:
            return None
        cert, key, ca = (_read_pem(path, what) for path, what in zip(self.xds_tls, ("--xds-tls-cert", "--xds-tls-key",
                                                                                     "--xds-ca")))
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.decisions = Counter("meshgate_edge_decisions", "ext_authz decisions by route, decision and reason",
                                 ["route", "decision", "reason"], registry=self.registry)
        self.latency = Histogram("meshgate_edge_check_seconds", "Time to decide one ext_authz check",
                                 buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
                                 registry=self.registry)
        self.config_updates = Counter("meshgate_edge_config_updates", "Configs from the control plane, by result",
                                      ["result"], registry=self.registry)
        self.policies = Gauge("meshgate_edge_policies", "Signature policies in force", registry=self.registry)
        self.replay_entries = Gauge("meshgate_edge_replay_cache_entries", "Nonces remembered",
                                    registry=self.registry)
        self.nonce_store = Counter("meshgate_edge_nonce_store_operations",
                                   "Nonce claims in the shared store (nonceStore Redis) by result (claimed, replayed, "
                                   "error)", ["result"], registry=self.registry)
        self.nonce_store_latency = Histogram("meshgate_edge_nonce_store_seconds",
                                             "Time of one nonce claim in the shared store (a Redis round trip)",
                                             buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1),
                                             registry=self.registry)
        self.rate_limit_decisions = Counter("meshgate_edge_rate_limit_decisions",
                                            "ShouldRateLimit answers by result (ok, over_limit, unlimited, error)",
                                            ["result"], registry=self.registry)
        self.quota_reports = Counter("meshgate_edge_quota_reports", "RLQS usage reports answered with shares",
                                     registry=self.registry)
        self.rate_limit_rules = Gauge("meshgate_edge_rate_limit_rules", "Global rate-limit rules in force",
                                      registry=self.registry)
        self._children: dict[tuple[str, str, str], object] = {}

    def decision(self, route: str, decision: str, reason: str):  # noqa: ANN201 - a prometheus child
        key = (route, decision, reason)
        child = self._children.get(key)
        if child is None:  # .labels() costs a lock and a tuple each call: keep the children
            child = self._children[key] = self.decisions.labels(route, decision, reason)
        return child


# The auth scheme a 401 names, per signature scheme (RFC 9421 defines none: "Signature", as the
# draft it replaced and most implementations use).
_WWW_AUTHENTICATE = {"Meshgate": "MESHGATE-HMAC-SHA256", "RFC9421": "Signature"}
STORE_UNAVAILABLE = "replay-store-unavailable"
# Added for the upstream when the nonce store was down and the policy let the request through.
REPLAY_UNCHECKED_HEADER = "x-meshgate-replay-unchecked"


def _denied(reason: str, scheme: str = "Meshgate") -> bytes:
    """A CheckResponse refusing with 401 and the reason (a fixed word), serialized once. The nonce
    store unreachable is no fault of the client's: 503, as for an unreachable companion."""
    if reason == STORE_UNAVAILABLE:
        code, status, headers = code_pb2.UNAVAILABLE, http_status_pb2.ServiceUnavailable, [(REASON_HEADER, reason)]
    else:
        code, status = code_pb2.UNAUTHENTICATED, http_status_pb2.Unauthorized
        headers = [(REASON_HEADER, reason), ("www-authenticate", _WWW_AUTHENTICATE.get(scheme, "Signature"))]
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code, message=reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status), body=f"request signature refused: {reason}\n"))
    for key, value in headers:
        option = response.denied_response.headers.add()
        option.header.key, option.header.value = key, value
    return response.SerializeToString()


_OK = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK),
                                      ok_response=external_auth_pb2.OkHttpResponse()).SerializeToString()
_OK_UNCHECKED = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=code_pb2.OK),
    ok_response=external_auth_pb2.OkHttpResponse(headers=[base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=REPLAY_UNCHECKED_HEADER, value="true"))])).SerializeToString()


class Companion:
    """The state of one companion: the verifier (policies + replay cache), metrics, health."""

    def __init__(self, options: EdgeOptions) -> None:
        self.options = options
        self.verifier = Verifier(replay=ReplayCache(options.replay_cache_size))
        self.metrics = Metrics()
        self.health = health_aio.HealthServicer()
        self.version = ""  # the config version in force ("" before the first)
        self.ready = asyncio.Event()
        self._denials: dict[tuple[str, str], bytes] = {}
        self.ratelimit = RateLimitService(_redis(options), self.metrics)
        self.quota = QuotaService(self.ratelimit.redis, self.metrics)
        self.versions: dict[str, str] = {}  # type URL -> version in force
        self.spans = None  # meshgate.otlp.SpanQueue while tracing is on (meshgate.edge.tracing)

    # -- ext_authz Check -----------------------------------------------------------------------
    async def check(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Authorization/Check on raw bytes: the request is parsed here (upb, a few µs) and the
        answers are serialized once and reused, so the per-call cost is the check itself."""
        started = time.perf_counter()
        request = external_auth_pb2.CheckRequest.FromString(data)
        attributes = request.attributes
        http = attributes.request.http
        extensions = attributes.context_extensions
        route = extensions.get(ROUTE_KEY, "")
        verdict = self.verifier.verify(extensions.get(POLICY_KEY, ""), method=http.method, path=http.path,
                                       headers=http.headers, body=http.raw_body, host=http.host, scheme=http.scheme)
        unchecked = False
        if verdict.claim is not None:  # nonceStore Redis: only routes with such a policy get here
            verdict, unchecked = await self._claim(verdict)
        metrics = self.metrics
        spans = self.spans
        # Envoy's trace context: read for every call only when spans are exported; for a refusal's
        # log line in any case (meshgate.edge.tracing).
        trace = trace_of(context) if spans is not None or not verdict.ok else None
        if verdict.ok:
            metrics.decision(route, "allow", "").inc()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request allowed", extra={"x_request_id": http.headers.get("x-request-id", ""),
                                                    "route": route, "key_id": verdict.key_id, **log_ids(trace)})
            answer = _OK_UNCHECKED if unchecked else _OK
        else:
            metrics.decision(route, "deny", verdict.reason).inc()
            log.info("request refused", extra={"x_request_id": http.headers.get("x-request-id", ""), "route": route,
                                               "reason": verdict.reason, "key_id": verdict.key_id, **log_ids(trace)})
            scheme = verdict.policy.scheme if verdict.policy is not None else "Meshgate"
            answer = self._denials.get((verdict.reason, scheme))
            if answer is None:
                answer = self._denials[(verdict.reason, scheme)] = _denied(verdict.reason, scheme)
        elapsed = time.perf_counter() - started
        metrics.latency.observe(elapsed)
        if spans is not None:
            record(spans, trace, "meshgate.edge.check", elapsed, {
                "meshgate.route": route, "meshgate.decision": "allow" if verdict.ok else "deny",
                "meshgate.reason": verdict.reason or "", "meshgate.key_id": verdict.key_id or "",
                "guid:x-request-id": http.headers.get("x-request-id", "")})
        return answer

    async def _claim(self, verdict: Verdict) -> tuple[Verdict, bool]:
        """Claim a valid request's nonce in the shared store: SET NX with an expiry, one Redis
        round trip; the key already there is a replay. Redis unreachable or slower than its
        timeout: refused with 503, or (failureModeAllow) let through marked unchecked. Returns
        the final verdict and whether it passed unchecked."""
        claim = verdict.claim
        assert claim is not None
        started = time.perf_counter()
        try:
            # The client's own timeouts bound each socket operation; this bounds the whole call.
            claimed = await asyncio.wait_for(self.ratelimit.redis.set(claim.key, b"1", nx=True, ex=claim.ttl_s),
                                             self.options.redis_timeout_s * 4)
        except Exception as exc:  # noqa: BLE001 - any Redis failure is the policy's failure mode
            self.metrics.nonce_store.labels("error").inc()
            log.warning("nonce store unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
            if verdict.policy is not None and verdict.policy.failure_mode_allow:
                return verdict, True
            return Verdict(False, STORE_UNAVAILABLE, verdict.key_id, policy=verdict.policy), False
        finally:
            self.metrics.nonce_store_latency.observe(time.perf_counter() - started)
        if not claimed:
            self.metrics.nonce_store.labels("replayed").inc()
            return Verdict(False, "replayed", verdict.key_id, policy=verdict.policy), False
        self.metrics.nonce_store.labels("claimed").inc()
        return verdict, False

    # -- config --------------------------------------------------------------------------------
    def apply(self, response: discovery_pb2.DiscoveryResponse) -> None:
        """Use a config response (raises ValueError if it can't be used: the caller NACKs)."""
        kind = response.type_url
        message = {SIGNATURE_CONFIG: SignatureConfig, RATE_LIMIT_CONFIG: RateLimitConfig}.get(kind)
        if message is None:
            raise ValueError(f"unexpected response type {kind}")
        resources = {}
        for packed in response.resources:
            if packed.type_url != kind:
                raise ValueError(f"unexpected resource type {packed.type_url}")
            msg = message.FromString(packed.value)
            if not msg.name or msg.name in resources:
                raise ValueError(f"resource without a name, or twice: {msg.name!r}")
            resources[msg.name] = msg
        if kind == SIGNATURE_CONFIG:
            self.verifier.policies = policies_from(resources)  # one assignment: a check sees old or new, whole
            self.version = response.version_info
            self.metrics.policies.set(len(resources))
        else:
            try:
                rules = rules_from(resources)
                self.ratelimit.rules = self.quota.rules = rules
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"bad rate-limit rule: {exc}") from None
            self.metrics.rate_limit_rules.set(len(resources))
        self.versions[kind] = response.version_info
        self.metrics.config_updates.labels("applied").inc()
        log.info("config applied", extra={"version": response.version_info, "type": kind.rsplit(".", 1)[-1],
                                          "names": sorted(resources)})

    async def run_ads(self) -> None:
        """Keep one ADS stream to the control plane open (reconnecting with back-off)."""
        node = base_pb2.Node(id=self.options.node_id or f"{EDGE_GROUP}-{socket.gethostname()}", cluster=EDGE_GROUP)
        backoff = 0.2
        while True:
            try:
                async with self._channel() as channel:
                    await self._stream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel), node)
                    backoff = 0.2
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning("control plane stream ended; reconnecting", extra={
                    "xds": self.options.xds_address, "code": exc.code().name, "in_s": backoff})
            except OSError as exc:  # a certificate file gone or unreadable (mid-rotation): next time
                log.warning("cannot read the ADS client certificate; retrying", extra={"error": str(exc), "in_s": backoff})
            except Exception:  # noqa: BLE001 - a bug must not end the companion's config updates
                log.exception("control plane stream failed; reconnecting")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _channel(self) -> grpc.aio.Channel:
        credentials = self.options.xds_credentials()  # read again at every connection: rotation
        if credentials is None:
            return grpc.aio.insecure_channel(self.options.xds_address, options=_CHANNEL_OPTIONS)
        options = list(_CHANNEL_OPTIONS)
        if self.options.xds_server_name:
            options.append(("grpc.ssl_target_name_override", self.options.xds_server_name))
        return grpc.aio.secure_channel(self.options.xds_address, credentials, options=options)

    async def _stream(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, node: base_pb2.Node) -> None:
        requests: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            while True:
                yield await requests.get()

        # The first request carries the node (the server caches it per stream); no resource names
        # is a wildcard: every policy. After a reconnect the whole set comes again (full-state
        # types); applying the same config twice is harmless. Ready once every type has answered.
        for i, type_url in enumerate(TYPE_URLS):
            requests.put_nowait(discovery_pb2.DiscoveryRequest(node=node if i == 0 else None, type_url=type_url,
                                                               version_info=self.versions.get(type_url, "")))
        answered: set[str] = set()
        call = stub.StreamAggregatedResources(outgoing())
        async for response in call:
            try:
                self.apply(response)
            except Exception as exc:  # noqa: BLE001 - NACK: keep the last good config
                self.metrics.config_updates.labels("rejected").inc()
                log.error("config rejected; keeping the last good one", extra={
                    "version": response.version_info, "error": str(exc)})
                requests.put_nowait(discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url, version_info=self.versions.get(response.type_url, ""),
                    response_nonce=response.nonce,
                    error_detail=status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(exc)[:500])))
                continue
            requests.put_nowait(discovery_pb2.DiscoveryRequest(
                type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce))
            answered.add(response.type_url)
            if not self.ready.is_set() and answered >= set(TYPE_URLS):
                self.ready.set()
                await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
                await self.health.set(AUTHORIZATION_SERVICE, health_pb2.HealthCheckResponse.SERVING)
                await self.health.set(RATE_LIMIT_SERVICE, health_pb2.HealthCheckResponse.SERVING)


def _redis(options: EdgeOptions):  # noqa: ANN202 - a redis.asyncio.Redis
    """The Redis client of the rate-limit counters. It connects on first use (a companion with
    no global limit never does); no retries: a slow or absent Redis fails the call at once, and
    Envoy's failure mode (not a queue of retries here) decides."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.Redis.from_url(options.redis_url, socket_timeout=options.redis_timeout_s,
                                   socket_connect_timeout=options.redis_timeout_s, retry=Retry(NoBackoff(), 0),
                                   health_check_interval=0)


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise OSError(f"{what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise OSError(f"{what} {path}: not a PEM file")
    return data


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(options: EdgeOptions, stop: asyncio.Event | None = None) -> int:
    """Run the companion until `stop` is set (or SIGINT/SIGTERM when None)."""
    companion = Companion(options)
    server = grpc.aio.server(options=_SERVER_OPTIONS)
    handler = grpc.method_handlers_generic_handler(AUTHORIZATION_SERVICE, {
        # Raw bytes in and out (no (de)serializer): see Companion.check.
        "Check": grpc.unary_unary_rpc_method_handler(companion.check),
    })
    limits = grpc.method_handlers_generic_handler(RATE_LIMIT_SERVICE, {
        "ShouldRateLimit": grpc.unary_unary_rpc_method_handler(companion.ratelimit.should_rate_limit),
    })
    quota = grpc.method_handlers_generic_handler(QUOTA_SERVICE, {
        "StreamRateLimitQuotas": grpc.stream_stream_rpc_method_handler(
            companion.quota.stream, request_deserializer=rlqs_pb2.RateLimitQuotaUsageReports.FromString,
            response_serializer=rlqs_pb2.RateLimitQuotaResponse.SerializeToString),
    })
    server.add_generic_rpc_handlers((handler, limits, quota))
    health_pb2_grpc.add_HealthServicer_to_server(companion.health, server)
    await companion.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        port = server.add_insecure_port(options.address)
    except RuntimeError:
        log.error("cannot listen for ext_authz", extra={"address": options.address})
        return 1
    metrics_port = None
    if options.metrics_address:
        host, mport = _split(options.metrics_address)
        try:
            http_server, _ = start_http_server(mport, addr=host, registry=companion.metrics.registry)
        except OSError as exc:
            log.error("cannot listen for metrics", extra={"address": options.metrics_address, "error": str(exc)})
            return 1
        metrics_port = http_server.server_port
    telemetry = contextlib.AsyncExitStack()  # OTLP exporters (spans, metrics), flushed on stop
    companion.spans = companion.ratelimit.spans = start_tracing(telemetry, os.environ)
    start_metrics_push(telemetry, companion.metrics.registry, service_name(os.environ, "edge"))
    await server.start()
    host = options.address.rpartition(":")[0]
    log.info("edge companion serving", extra={
        "ext_authz": f"{host}:{port}", "metrics": f"http://{_split(options.metrics_address)[0]}:{metrics_port}/metrics"
        if metrics_port else None, "xds": options.xds_address})
    ads = asyncio.create_task(companion.run_ads(), name="edge-ads")
    replay_gauge = asyncio.create_task(_report_replay(companion), name="edge-replay-gauge")
    try:
        if stop is None:
            from meshgate.runner import _until_signalled

            await _until_signalled()
        else:
            await stop.wait()
    finally:
        ads.cancel()
        replay_gauge.cancel()
        await server.stop(1)
        await companion.ratelimit.redis.aclose()
        await telemetry.aclose()
        log.info("edge companion stopped")
    return 0


async def _report_replay(companion: Companion) -> None:
    while True:
        companion.metrics.replay_entries.set(len(companion.verifier.replay))
        await asyncio.sleep(5)


__all__ = ["Companion", "EdgeOptions", "serve"]
