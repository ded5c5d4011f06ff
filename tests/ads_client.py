"""Test helpers: small Envoy resources and a gRPC client that speaks ADS like Envoy does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from meshgate.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot

TIMEOUT = 3.0  # bound for anything we expect to happen
# Type URLs of probe requests (see AdsClient.expect_no_response): not Envoy types, so the server
# treats them as full-state types the snapshot has none of, and answers a first request at once.
PROBE_PREFIX = "type.googleapis.com/meshgate.test.Probe"


# ---- resources ---------------------------------------------------------------------------------


def _ads_source() -> config_source_pb2.ConfigSource:
    src = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    src.ads.SetInParent()
    return src


def make_cluster(name: str, connect_timeout_s: int = 1) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.eds_cluster_config.eds_config.CopyFrom(_ads_source())
    c.connect_timeout.seconds = connect_timeout_s
    return c


def make_cla(name: str, ports: Iterable[int]) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address="127.0.0.1", port_value=p
                                )
                            )
                        )
                    )
                    for p in ports
                ]
            )
        ],
    )


def make_listener(name: str, route_name: str, port: int = 10000) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = route_name
    hcm.rds.config_source.CopyFrom(_ads_source())
    typed = any_pb2.Any()
    typed.Pack(hcm, deterministic=True)
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="0.0.0.0", port_value=port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=typed
                    )
                ]
            )
        ],
    )


def make_route(name: str, cluster: str, domain: str = "*") -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="all",
                domains=[domain],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=route_components_pb2.RouteAction(cluster=cluster),
                    )
                ],
            )
        ],
    )


def make_snapshot(
    clusters: Mapping[str, Iterable[int]] | None = None,
    listeners: Mapping[str, str] | None = None,
    routes: Mapping[str, str] | None = None,
    timeouts: Mapping[str, int] | None = None,
) -> Snapshot:
    """clusters: name -> endpoint ports; listeners: name -> route name; routes: name -> cluster."""
    clusters = {"a": [8080]} if clusters is None else clusters
    listeners = {"http": "main"} if listeners is None else listeners
    routes = {"main": next(iter(clusters), "a")} if routes is None else routes
    timeouts = timeouts or {}
    return Snapshot.build({
        CLUSTER: {n: make_cluster(n, timeouts.get(n, 1)) for n in clusters},
        ENDPOINT: {n: make_cla(n, ports) for n, ports in clusters.items()},
        LISTENER: {n: make_listener(n, r, 10000 + i) for i, (n, r) in enumerate(listeners.items())},
        ROUTE: {n: make_route(n, c) for n, c in routes.items()},
    })


def names_of(response) -> list[str]:  # noqa: ANN001
    """Resource names in a SotW or delta response."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return [r.name for r in response.resources]
    out = []
    for res in response.resources:
        for cls, attr in (
            (listener_pb2.Listener, "name"),
            (route_pb2.RouteConfiguration, "name"),
            (cluster_pb2.Cluster, "name"),
            (endpoint_pb2.ClusterLoadAssignment, "cluster_name"),
            (secret_pb2.Secret, "name"),
        ):
            if res.type_url.endswith(cls.DESCRIPTOR.full_name):
                msg = cls()
                res.Unpack(msg)
                out.append(getattr(msg, attr))
    return out


# ---- the fake Envoy ----------------------------------------------------------------------------


class AdsClient:
    """One ADS stream, as Envoy opens it: node on the first request only, responses queued."""

    def __init__(self, port: int, *, delta: bool = False, node_id: str = "envoy-1",
                 cluster: str = "edge") -> None:
        self.delta = delta
        self.node = base_pb2.Node(id=node_id, cluster=cluster)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
        self.responses: asyncio.Queue = asyncio.Queue()
        self._sent_node = False
        self._probes = 0
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    await self.responses.put(EOFError("stream ended"))
                    return
                await self.responses.put(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the test
            await self.responses.put(exc)

    def _with_node(self, req, send_node: bool | None) -> None:  # noqa: ANN001
        if send_node if send_node is not None else not self._sent_node:
            req.node.CopyFrom(self.node)
        self._sent_node = True

    async def request(self, type_url: str, names: Iterable[str] = (), *, nonce: str = "",
                      version: str = "", error: str | None = None,
                      send_node: bool | None = None) -> None:
        """Send a SotW DiscoveryRequest."""
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), response_nonce=nonce,
            version_info=version)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._with_node(req, send_node)
        await self.call.write(req)

    async def ack(self, response, names: Iterable[str] = ()) -> None:  # noqa: ANN001
        await self.request(response.type_url, names, nonce=response.nonce,
                           version=response.version_info)

    async def delta_request(self, type_url: str, subscribe: Iterable[str] = (),
                            unsubscribe: Iterable[str] = (), *, nonce: str = "",
                            initial: Mapping[str, str] | None = None,
                            error: str | None = None) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce,
            initial_resource_versions=dict(initial or {}))
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._with_node(req, None)
        await self.call.write(req)

    async def recv(self, timeout: float = TIMEOUT):  # noqa: ANN201
        item = await asyncio.wait_for(self.responses.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def expect_no_response(self) -> None:
        """Assert the server owes this stream nothing now, without waiting for a timeout.

        Sends a request the server must answer (the first request for a new probe type URL) and
        asserts that the next response is that answer. Requests on a stream are handled in order
        and a response for an Envoy type is written before one for another type, so a response
        the server wrongly owed for anything sent (or published) before the probe arrives first.
        """
        self._probes += 1
        probe = f"{PROBE_PREFIX}{self._probes}"
        if self.delta:
            await self.delta_request(probe)
        else:
            await self.request(probe)
        item = await self.recv()
        if item.type_url != probe:
            raise AssertionError(f"expected no response, got {item}")

    async def close(self) -> None:
        self.call.cancel()
        self._pump.cancel()
        try:
            await self._pump
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass
        await self.channel.close()


# ---- TLS over SDS --------------------------------------------------------------------------------


def make_secret(name: str, cert: bytes = b"CERT", key: bytes = b"KEY") -> secret_pb2.Secret:
    """A TLS certificate Secret (SDS). The default bytes are placeholders Envoy would reject."""
    secret = secret_pb2.Secret(name=name)
    secret.tls_certificate.certificate_chain.inline_bytes = cert
    secret.tls_certificate.private_key.inline_bytes = key
    return secret


def sds_tls_socket(secret: str, *, upstream: bool = False) -> base_pb2.TransportSocket:
    """A TLS transport socket whose certificate Envoy fetches over ADS (SDS) by name."""
    ctx = tls_pb2.UpstreamTlsContext() if upstream else tls_pb2.DownstreamTlsContext()
    sds = ctx.common_tls_context.tls_certificate_sds_secret_configs.add(name=secret)
    sds.sds_config.CopyFrom(_ads_source())
    typed = any_pb2.Any()
    typed.Pack(ctx, deterministic=True)
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=typed)


def make_tls_listener(name: str, route_name: str, secret: str, port: int = 10443) -> listener_pb2.Listener:
    listener = make_listener(name, route_name, port)
    listener.filter_chains[0].transport_socket.CopyFrom(sds_tls_socket(secret))
    return listener


# ---- an Envoy-like client -------------------------------------------------------------------------


def _eds_names(response) -> list[str]:  # noqa: ANN001
    names = []
    for res in response.resources:
        c = cluster_pb2.Cluster()
        res.Unpack(c)
        if c.type == cluster_pb2.Cluster.EDS:
            names.append(c.eds_cluster_config.service_name or c.name)
    return sorted(names)


def _rds_names(response) -> list[str]:  # noqa: ANN001
    names = []
    for res in response.resources:
        listener = listener_pb2.Listener()
        res.Unpack(listener)
        for chain in listener.filter_chains:
            for f in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                if f.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                    names.append(hcm.rds.route_config_name)
    return sorted(set(names))


class FakeEnvoy:
    """Plays Envoy's side of a SotW ADS stream: wildcard CDS and LDS, EDS and RDS names taken from
    the clusters and listeners it accepted, every response ACKed, or NACKed when `reject(response)`
    returns an error message (the version it runs then stays the last ACKed one)."""

    def __init__(self, client: AdsClient, reject=None) -> None:  # noqa: ANN001
        self.client = client
        self.reject = reject or (lambda response: None)
        self.acked: dict[str, str] = {}  # type URL -> version_info it runs
        self.nonce: dict[str, str] = {}  # type URL -> latest nonce received
        self.names: dict[str, list[str]] = {ENDPOINT: [], ROUTE: []}
        self.received: list = []
        self.nacked: list = []
        self._task: asyncio.Task | None = None

    async def start(self) -> FakeEnvoy:
        await self.client.request(CLUSTER)
        await self.client.request(LISTENER)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            item = await self.client.responses.get()
            if isinstance(item, BaseException):
                return
            await self._answer(item)

    async def _answer(self, response) -> None:  # noqa: ANN001
        t = response.type_url
        self.received.append(response)
        self.nonce[t] = response.nonce
        names = self.names.get(t, [])
        error = self.reject(response)
        if error is not None:
            self.nacked.append(response)
            await self.client.request(t, names, nonce=response.nonce, version=self.acked.get(t, ""), error=error)
            return
        self.acked[t] = response.version_info
        await self.client.request(t, names, nonce=response.nonce, version=response.version_info)
        # Accepted clusters/listeners decide which endpoints/routes Envoy subscribes to.
        child, wanted = {CLUSTER: (ENDPOINT, _eds_names), LISTENER: (ROUTE, _rds_names)}.get(t, (None, None))
        if child is not None and wanted(response) != self.names[child]:
            self.names[child] = wanted(response)
            await self.client.request(child, self.names[child], nonce=self.nonce.get(child, ""),
                                      version=self.acked.get(child, ""))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.client.close()
