"""Wiring for `meshgate xds` (control plane alone) and `meshgate run` (control plane + a local
Envoy + sample upstreams, in one process). The CLI only parses flags and calls these.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshgate.gatewayapi import Translation
from meshgate import ir
from meshgate.gatewayapi.security import EDGE_COMPANION_CLUSTER
from meshgate.errors import EnvoyError, StartupError
from meshgate.xds.tls import XdsTLS
from meshgate.api.models import Backend
from meshgate.envoy.bootstrap import BootstrapOptions, render_bootstrap
from meshgate.controlplane.pipeline import ControlPlane
from meshgate.controlplane.health_checks import start_checks
from meshgate.controlplane.dependencies import ConfigDependencies
from meshgate.controlplane.spans import run_until_closed, start_spans
from meshgate.controlplane.upstreams import UpstreamHealth
from meshgate.otlp import service_name, start_metrics_push
from meshgate.controlplane.status import ControlPlaneStatus
from meshgate.controlplane.readiness import kubernetes_check, process_check
from meshgate.envoy.process import EnvoyProcess
from meshgate.envoy.stats import DEFAULT_STATS_PORT, STATS_PATH, bound_stats_port, pick_free_port
from meshgate.xds.server import start_xds_server
from meshgate.xds.snapshot import SnapshotCache
from meshgate.controlplane.status_server import start_status_server
from meshgate.xds.translator import TranslateOptions
from meshgate.xds.translator.tracing import TracingOptions

log = logging.getLogger("meshgate.run")

# A Backend with this annotation gets sample echo servers on its loopback endpoints in `meshgate run`.
SAMPLE_UPSTREAM_ANNOTATION = "meshgate.io/sample-upstream"
# `echo`: HTTP echo (or raw-bytes gRPC echo for protocol GRPC); `greeter`: the gRPC Greeter service.
SAMPLE_UPSTREAM_KINDS = ("echo", "greeter")


@dataclass
class RunOptions:
    paths: Sequence[str]
    env: str | None = None
    group: str = "edge"  # node group (node.cluster) the snapshot is published for
    xds_host: str = "127.0.0.1"
    xds_port: int = 18000
    status_host: str = "127.0.0.1"
    status_port: int = 19000
    bind_address: str = "127.0.0.1"  # where Gateway listeners bind in `meshgate run`
    admin_port: int = 19901
    # Envoy's Prometheus endpoint (meshgate.envoy.stats) in `meshgate run`; None = none (port 0 = any free).
    stats_host: str = "127.0.0.1"
    stats_port: int | None = DEFAULT_STATS_PORT
    state_dir: Path = Path(".meshgate")
    concurrency: int = 1
    delta: bool = False
    sample_upstreams: bool = True
    edge_address: tuple[str, int] | None = None  # where Envoy reaches the edge companion (None: a free port)
    start_edge: bool = True  # False: the companion runs elsewhere (`meshgate edge`), at edge_address
    access_log: str | None = ""  # "" = the default (STATE_DIR/access.log for run, Envoy's stdout for xds); None = off
    log_level: str = "info"
    # Envoy's OpenTelemetry tracing (from OTEL_* environment variables, see translator/tracing.py); None = off.
    tracing: TracingOptions | None = None
    route_stats: bool = True  # per-rule statistics in Envoy (TranslateOptions.route_stats)
    # Per-tenant limits (meshgate.gatewayapi.tenant_limits); None = no limit.
    max_objects_per_namespace: int | None = None
    max_routes_per_namespace: int | None = None
    # Envoy's metrics also pushed over OTLP/gRPC to (host, port) (BootstrapOptions.otlp_metrics); None = not.
    otlp_metrics: tuple[str, int] | None = None
    audit_log: str | None = None  # `--audit-log PATH` (TranslateOptions.audit_log_path); None = none
    # `--health-check NAME=URL[,optional]`: custom /readyz checks (meshgate.controlplane.health_checks)
    health_checks: list = field(default_factory=list)
    envoy_log_level: str = "info"
    # `meshgate xds --xds-tls-*`: the ADS port over mutual TLS (meshgate.xds.tls); None = plaintext.
    xds_tls: XdsTLS | None = None
    kubernetes: bool = False  # `meshgate xds --kubernetes`: objects from the Kubernetes API, not files
    kubeconfig: str | None = None  # None: $KUBECONFIG, else in-cluster (the pod's service account)
    gateway_addresses: tuple[str, ...] = ()  # with kubernetes: reported in Gateways' status.addresses
    # Backends' `spec.consul` (meshgate.providers.consul): the default agent (None: $CONSUL_HTTP_ADDR,
    # else Consul's default) and a file holding the ACL token (None: $CONSUL_HTTP_TOKEN, else none).
    consul_address: str | None = None
    consul_token_file: str | None = None
    # where errors of a rejected config are printed, in the same format as `meshgate validate`
    print_errors: Callable[[list[str]], None] = field(
        default=lambda lines: print("\n".join(lines), file=sys.stderr, flush=True)
    )


class SampleUpstreams:
    """Starts echo servers for Backends annotated `meshgate.io/sample-upstream: echo`."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, int], object] = {}
        self.pending: list[asyncio.Task] = []

    def sync(self, config: Translation) -> None:
        for (namespace, name), backend in config.backends.items():
            kind = backend.metadata.annotations.get(SAMPLE_UPSTREAM_ANNOTATION)
            if kind not in SAMPLE_UPSTREAM_KINDS:
                continue
            for i, endpoint in enumerate(backend.spec.endpoints):
                key = (endpoint.address, endpoint.port)
                if key in self.servers or not _is_loopback(endpoint.address):
                    continue
                self.servers[key] = server = self._server(backend, f"{name}-{i + 1}", endpoint.address, endpoint.port)
                self.pending.append(asyncio.get_running_loop().create_task(self._start(server)))

    @staticmethod
    def _server(backend: Backend, name: str, host: str, port: int):
        if backend.metadata.annotations.get(SAMPLE_UPSTREAM_ANNOTATION) == "greeter":
            from meshgate.devtools.greeter import GreeterServer  # a real protobuf API (gRPC-Web, transcoding)

            return GreeterServer(name, host, port)
        if backend.spec.protocol == "GRPC":
            from meshgate.devtools.grpc_echo import GrpcEchoServer

            return GrpcEchoServer(name, host, port)
        from meshgate.devtools.upstreams import EchoServer

        return EchoServer(name, host, port)

    @staticmethod
    async def _start(server) -> None:
        try:
            await server.start()
            log.info("sample upstream started", extra={"upstream": server.name, "port": server.port})
        except OSError as exc:
            log.error("sample upstream could not start", extra={"upstream": server.name, "error": str(exc)})

    async def settle(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
            self.pending.clear()

    async def stop(self) -> None:
        await self.settle()
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await server.stop()


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _start_servers(stack: contextlib.AsyncExitStack, opts: RunOptions, cache: SnapshotCache,
                         status: ControlPlaneStatus) -> tuple[int, int]:
    """Start the ADS and status servers (stopped by `stack`); returns their bound ports."""
    xds_address = f"{opts.xds_host}:{opts.xds_port}"
    try:
        xds, xds_port = await start_xds_server(cache, status, xds_address, tls=opts.xds_tls)
    except RuntimeError:  # grpc reports a failed bind as RuntimeError
        raise StartupError(f"cannot listen for xDS on {xds_address}: address in use or not available "
                           "(choose another with --xds-address)") from None
    stack.push_async_callback(xds.stop, 1)
    try:
        runner, status_port = await start_status_server(status, opts.status_host, opts.status_port)
    except OSError as exc:
        raise StartupError(f"cannot listen for status on {opts.status_host}:{opts.status_port}: "
                           f"{os.strerror(exc.errno) if exc.errno else exc} (choose another with --status-address)") from None
    stack.push_async_callback(runner.cleanup)
    return xds_port, status_port


def _tenant_limits(opts: RunOptions, status: ControlPlaneStatus):  # noqa: ANN202
    """`--max-objects-per-namespace`, `--max-routes-per-namespace`, with their gauge in /metrics."""
    from meshgate.gatewayapi.tenant_limits import NamespaceLimits

    return NamespaceLimits(opts.max_objects_per_namespace, opts.max_routes_per_namespace,
                           registry=status.metrics.registry)


def _consul(plane: ControlPlane, opts: RunOptions):  # noqa: ANN202
    """The follower of Backends' Consul services (it connects only when a Backend names one)."""
    from meshgate.providers.consul import ConsulEndpoints, read_token

    consul = ConsulEndpoints(plane, address=opts.consul_address, token=read_token(opts.consul_token_file, os.environ))
    consul.install()
    return consul


async def serve_xds(opts: RunOptions) -> int:
    """`meshgate xds`: ADS server + status server + file watcher, until SIGINT/SIGTERM."""
    cache = SnapshotCache()
    status = ControlPlaneStatus()
    access_log = "/dev/stdout" if opts.access_log == "" else opts.access_log
    provider = None
    if opts.kubernetes:
        from meshgate.providers.kubernetes import KubernetesProvider

        provider = KubernetesProvider(opts.kubeconfig)
        await provider.start()  # the first lists, so the first config is the whole cluster
        status.dependencies["kubernetes"] = kubernetes_check(provider)  # /readyz detail
    plane = ControlPlane(opts.paths, cache, group=opts.group, env=opts.env, status=status,
                         options=TranslateOptions(bind_address=opts.bind_address, access_log_path=access_log,
                                                  tracing=opts.tracing, route_stats=opts.route_stats,
                                                  audit_log_path=opts.audit_log),
                         on_rejected=opts.print_errors, provider=provider)
    plane.tenant_limits = _tenant_limits(opts, status)
    consul = _consul(plane, opts)
    dependencies = ConfigDependencies(status)  # the IdP's JWKS, Redis: checked while the config uses them
    plane.translation_listeners.append(dependencies.sync)
    status.extra["tracing"] = _tracing_status(opts.tracing)
    spans = start_spans(opts.tracing, status, plane)  # the control plane's own reload and push spans
    plane.reload()
    async with contextlib.AsyncExitStack() as stack:
        await run_until_closed(stack, spans)
        start_metrics_push(stack, status.metrics.registry, service_name(os.environ, "control-plane"))
        stack.callback(dependencies.close)
        await start_checks(stack, status, opts.health_checks)
        if provider is not None:
            from meshgate.providers.kubernetes.controller import Controller

            stack.push_async_callback(provider.close)
            # Leader election and status written back to the objects (closed before the provider).
            controller = Controller(plane, provider, addresses=opts.gateway_addresses)
            controller.start()
            stack.push_async_callback(controller.close)
        stack.push_async_callback(consul.close)
        xds_port, status_port = await _start_servers(stack, opts, cache, status)
        log.info("control plane serving", extra={"xds": f"{opts.xds_host}:{xds_port}", "status": f"http://{opts.status_host}:{status_port}"})
        # Every Prometheus endpoint; the Envoys' own are wherever their bootstraps put them.
        status.extra["metrics"] = {"control_plane": f"http://{opts.status_host}:{status_port}/metrics"}
        watcher = asyncio.create_task(plane.watch())
        stack.callback(watcher.cancel)
        stack.push_async_callback(plane.publisher.aclose)  # a staged publish still waiting ends too
        await _until_signalled()
    return 0


async def run_local(opts: RunOptions) -> int:
    """`meshgate run`: everything `serve_xds` does, plus a supervised Envoy and sample upstreams."""
    state = opts.state_dir.resolve()
    access_log = str(state / "access.log") if opts.access_log == "" else opts.access_log
    upstreams = SampleUpstreams()
    cache = SnapshotCache()
    status = ControlPlaneStatus()
    edge = _LocalEdge(opts, state)

    def on_config(config: Translation) -> None:
        if opts.sample_upstreams:
            upstreams.sync(config)
        edge.sync(config)

    plane = ControlPlane(
        opts.paths, cache, group=opts.group, env=opts.env, status=status,
        options=TranslateOptions(bind_address=opts.bind_address, access_log_path=access_log, tracing=opts.tracing,
                                 route_stats=opts.route_stats,
                                 # absolute: the local Envoy runs in the state directory
                                 audit_log_path=str(Path(opts.audit_log).resolve()) if opts.audit_log else None),
        on_config=on_config,
        on_rejected=opts.print_errors,
    )
    plane.tenant_limits = _tenant_limits(opts, status)
    consul = _consul(plane, opts)  # Backends' spec.consul: their endpoints as EDS alone
    dependencies = ConfigDependencies(status)  # the IdP's JWKS, Redis: checked while the config uses them
    plane.translation_listeners.append(dependencies.sync)
    spans = start_spans(opts.tracing, status, plane)  # the control plane's own reload and push spans
    async with contextlib.AsyncExitStack() as stack:  # stops everything started, in reverse order
        await run_until_closed(stack, spans)
        # The control plane's own metrics over OTLP too (OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT).
        start_metrics_push(stack, status.metrics.registry, service_name(os.environ, "control-plane"))
        stack.callback(dependencies.close)
        await start_checks(stack, status, opts.health_checks)
        stack.push_async_callback(upstreams.stop)
        stack.push_async_callback(consul.close)
        # Envoy reaches the edge companion (ext_authz) where this run starts it.
        plane.set_cluster_endpoints(EDGE_COMPANION_CLUSTER, [ir.Endpoint(edge.host, edge.port, 1)])
        plane.reload()
        if plane.status.last_error:
            # At start, any problem stops us (errors already printed): a first config is all the
            # user's and should be whole. Later reloads publish the valid objects and keep the rest.
            return 1
        state.mkdir(parents=True, exist_ok=True)  # only once the config is valid: a failed run leaves nothing
        xds_port, status_port = await _start_servers(stack, opts, cache, status)
        edge.xds_address = f"{_url_host(opts.xds_host)}:{xds_port}"
        stack.push_async_callback(edge.stop)  # before the ADS server stops: no reconnect warnings on exit
        status.extra["edge"] = edge.status
        if edge.enabled:  # in use while a route is signed (those fail closed without it): /readyz says so
            status.dependencies["edge_companion"] = process_check(
                lambda: edge.process, "edge companion", in_use=lambda: edge.needed(plane.translation))
        if edge.needed(plane.translation):
            try:  # before Envoy: the first signed request finds its verifier
                await edge.start()
            except RuntimeError as exc:
                raise StartupError(str(exc)) from None
        admin_port = opts.admin_port
        if opts.stats_port is not None and not admin_port:
            admin_port = pick_free_port()  # the stats listener forwards to the admin port: it must be known
        bootstrap = render_bootstrap(BootstrapOptions(
            xds_host=opts.xds_host, xds_port=xds_port, node_cluster=opts.group,
            node_id=f"{opts.group}-local", admin_port=admin_port, delta=opts.delta,
            stats_host=opts.stats_host, stats_port=opts.stats_port, otlp_metrics=opts.otlp_metrics,
        ))
        # Flush the access log every 0.5 s (Envoy's default is 10 s) so `tail -f` shows requests as they happen.
        envoy = EnvoyProcess(bootstrap, state, concurrency=opts.concurrency, log_level=opts.envoy_log_level,
                             extra_args=("--file-flush-interval-msec", "500"))
        stack.push_async_callback(envoy.stop)
        envoy.log_path.unlink(missing_ok=True)  # one run, one log: errors below come from this run
        await upstreams.settle()
        try:
            await envoy.start(wait_ready=True)
        except EnvoyError as exc:
            raise StartupError(f"Envoy did not start: {_envoy_reason(str(exc))} (full log: {envoy.log_path})") from None
        status.extra["envoy"] = lambda: {"pid": envoy.pid, "restarts": envoy.restarts, "admin": envoy.admin_url,
                                         "log": str(envoy.log_path), "access_log": access_log}
        # /readyz: each Backend's healthy endpoints as this Envoy sees them (not gating).
        health = status.dependencies["upstreams"] = UpstreamHealth(lambda: envoy.admin_url if envoy.pid else None,
                                                                   interval=dependencies.interval)
        health.task = asyncio.create_task(health.run(), name="upstream health")
        stack.callback(health.task.cancel)
        status.extra["status_url"] = f"http://{opts.status_host}:{status_port}"
        metrics = {"control_plane": f"http://{opts.status_host}:{status_port}/metrics"}
        if opts.stats_port is not None:
            stats_port = await bound_stats_port(envoy.admin_url)  # the bound one, when asked for port 0
            metrics["envoy"] = f"http://{_url_host(opts.stats_host)}:{stats_port}{STATS_PATH}"
        # Every Prometheus endpoint of this run; the edge companion's once it runs (it starts
        # when a route first needs it).
        status.extra["metrics"] = lambda: {**metrics, **edge.metrics()}
        status.extra["tracing"] = _tracing_status(opts.tracing)
        shown = {**metrics, **(edge.metrics(planned=True) if edge.needed(plane.translation) else {})}
        print(_summary(plane, opts, status_port, envoy, access_log, shown), flush=True)
        watcher = asyncio.create_task(plane.watch())
        stack.callback(watcher.cancel)
        stack.push_async_callback(plane.publisher.aclose)  # a staged publish still waiting ends too
        await _until_signalled()
        log.info("stopping")
    return 0


class _LocalEdge:
    """The edge companion of `meshgate run` (meshgate.edge): a supervised `meshgate edge`
    subprocess, started once the config has a route that needs it (request signatures, global rate
    limits; its Redis is $MESHGATE_REDIS_URL, default redis://127.0.0.1:6379/0)."""

    def __init__(self, opts: RunOptions, state: Path) -> None:
        self.host, self.port = opts.edge_address or ("127.0.0.1", pick_free_port())
        self.enabled = opts.start_edge
        self.metrics_port = pick_free_port()
        self.state = state
        self.log_level = opts.log_level
        self.xds_address = ""  # known once the ADS server listens
        self.process = None
        self._starting: asyncio.Task | None = None

    @staticmethod
    def needed(config: Translation | None) -> bool:
        from meshgate.edge.config import needs_companion

        return config is not None and needs_companion(config.ir.listeners)

    async def start(self) -> None:
        from meshgate.edge.process import EdgeProcess

        if self.process is not None or not self.enabled:
            return
        self.process = EdgeProcess(self.xds_address, f"{self.host}:{self.port}", f"127.0.0.1:{self.metrics_port}",
                                   self.state / "edge.log", log_level=self.log_level)
        await self.process.start()

    def sync(self, config: Translation) -> None:
        """A reload that adds the first signed route starts the companion (later reloads only
        change its config, over ADS)."""
        if self.enabled and self.process is None and self.xds_address and self._starting is None and self.needed(config):
            self._starting = asyncio.get_running_loop().create_task(self._start_logged())

    async def _start_logged(self) -> None:
        try:
            await self.start()
        except RuntimeError as exc:
            log.error("edge companion did not start", extra={"error": str(exc)})

    async def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        if self.process is not None:
            await self.process.stop()

    def metrics(self, planned: bool = False) -> dict[str, str]:
        """{"edge_companion": its /metrics URL} once it was started (or, `planned`, will be)."""
        if not self.enabled or (self.process is None and not planned):
            return {}
        return {"edge_companion": f"http://127.0.0.1:{self.metrics_port}/metrics"}

    def status(self) -> dict[str, object]:
        if self.process is None:
            return {"running": False}
        return {"running": self.process.pid is not None, "pid": self.process.pid, "restarts": self.process.restarts,
                "ext_authz": f"{self.host}:{self.port}", "metrics": f"http://127.0.0.1:{self.metrics_port}/metrics",
                "log": str(self.process.log_path)}


def _envoy_reason(message: str) -> str:
    """The line of Envoy's output that says why it failed (its `critical` log line), if any."""
    critical = [line for line in message.splitlines() if "[critical]" in line]
    if critical:
        return critical[-1].split("] ", 3)[-1].strip()
    return message.splitlines()[0] if message else "unknown error"


def _tracing_status(tracing: TracingOptions | None) -> dict[str, object]:
    if tracing is None:
        return {"enabled": False}
    return {"enabled": True, "exporter": "otlp-grpc", "endpoint": tracing.endpoint,
            "sampling_percent": tracing.sampling_percent, "service_name": tracing.service_name}


def _url_host(host: str) -> str:
    return "localhost" if host in ("0.0.0.0", "::") else host


def _summary(plane: ControlPlane, opts: RunOptions, status_port: int, envoy: EnvoyProcess, access_log: str | None,
             metrics: dict[str, str]) -> str:
    from meshgate.xds.snapshot import LISTENER, ROUTE

    snap = plane.snapshot
    lines = [f"meshgate is running: config version {snap.version}"]
    host = opts.bind_address if opts.bind_address not in ("0.0.0.0", "::") else "localhost"
    for name, listener in sorted(snap.resources[LISTENER].items()):
        port = listener.address.socket_address.port_value
        scheme = "https" if listener.filter_chains and listener.filter_chains[0].HasField("transport_socket") else "http"
        routes = sum(len(vh.routes) for vh in snap.resources[ROUTE][name].virtual_hosts)
        lines.append(f"  listener {name}: {scheme}://{host}:{port}/  ({routes} routes)")
    summary = plane.status.summary
    lines.append(f"  {summary.get('routes', 0)} route objects, {summary.get('backends', 0)} backends")
    lines.append(f"  status:     http://{opts.status_host}:{status_port}/status  (also /healthz /readyz /metrics)")
    lines.append(f"  Envoy:      pid {envoy.pid}, admin {envoy.admin_url}")
    lines.append(f"  metrics:    {metrics['control_plane']}  (control plane)"
                 + (f", {metrics['envoy']}  (Envoy)" if "envoy" in metrics else "")
                 + (f", {metrics['edge_companion']}  (edge companion)" if "edge_companion" in metrics else ""))
    if opts.tracing is not None:
        lines.append(f"  traces:     OTLP/gRPC to {opts.tracing.endpoint}  ({opts.tracing.sampling_percent:g}% of requests, "
                     f"service.name {opts.tracing.service_name})")
    edge = plane.status.extra.get("edge")
    edge_status = edge() if callable(edge) else {}
    if edge_status.get("running"):
        lines.append(f"  edge:       pid {edge_status['pid']}, ext_authz {edge_status['ext_authz']}, "
                     f"metrics {edge_status['metrics']}  (request signatures)")
    lines.append(f"  logs:       {envoy.log_path}  (Envoy), " + (f"{access_log}  (access log, JSON lines)" if access_log else "access log off"))
    for node in plane.status.nodes.values():
        for kind, nack in sorted(node.nacked.items()):
            lines.append(f"  WARNING: Envoy rejected the {kind} config: {nack['error'].strip()}")
    lines.append("  Edit the config files to reload; Ctrl-C stops everything.")
    return "\n".join(lines)
