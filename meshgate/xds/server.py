"""meshgate's ADS server: delivers snapshots to Envoy over gRPC, state-of-the-world and delta.

Envoy opens one long-lived bidirectional stream (ADS, the Aggregated Discovery Service) and
multiplexes every resource type over it, told apart by ``type_url``. It asks with
DiscoveryRequests and we answer with DiscoveryResponses; each response carries a ``nonce`` that
Envoy echoes in its next request for that type, with ``error_detail`` set if it rejected the
response (a NACK) and unset if it applied it (an ACK).

Two wire variants exist and both are served here:

- state of the world (SotW, ``StreamAggregatedResources``): every response for a type carries the
  full set of resources the client wants of that type;
- delta (incremental, ``DeltaAggregatedResources``): responses carry only resources that changed,
  plus the names of removed ones, and the client subscribes/unsubscribes names explicitly.

The rules implemented here (when to answer, when to stay silent) are those of
https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol and Istio's ``ShouldRespond``.

Each stream runs a reader task that records requests into per-type state, and a writer loop that
wakes on a request or a snapshot change, works out what each type owes the client, and writes it
in make-before-break order (SDS, CDS, EDS, LDS, RDS). The server only delivers: it never builds config.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshgate.xds.tls import XdsTLS, peer_identities, server_credentials
from meshgate.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    NAMED_TYPES,
    TYPE_ORDER,
    Snapshot,
    SnapshotCache,
    combine_versions,
)

__all__ = [
    "SERVER_OPTIONS",
    "AdsServer",
    "NodeRef",
    "NullObserver",
    "XdsObserver",
    "response_version",
    "start_xds_server",
]

log = logging.getLogger("meshgate.xds.server")

WILDCARD = "*"

_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

SERVER_OPTIONS = [
    # Envoy sends HTTP/2 keepalive pings on its control-plane connection (cluster
    # upstream_connection_options.tcp_keepalive / http2 connection_keepalive). Without these,
    # gRPC counts the pings as abuse and closes the connection with GOAWAY "too_many_pings".
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    # Our own pings find Envoys that vanished without closing the TCP connection.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # A RouteConfiguration with 10,000 routes is several MiB in one response.
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class NodeRef:
    """One Envoy instance as the server sees it: one ADS stream.

    ``node.id`` is chosen by whoever writes the bootstrap, and replicas started from one bootstrap
    share it; so each stream gets its own ``instance`` key, unique in this process, and two
    Envoys with the same id stay two nodes.
    """

    instance: str  # "<node.id>#<stream number>"
    node_id: str
    group: str  # the snapshot group (node.cluster by default)
    kind: str  # "sotw" or "delta"
    peer: str = ""  # the gRPC peer address, for logs


class XdsObserver(Protocol):
    """Receives what happens on ADS streams (for status APIs and metrics).

    Resource maps are ``{name: resource version}`` (``Snapshot.resource_version``), read-only
    views of the stream's state: copy them to keep them.
    """

    def on_stream_open(self, node: NodeRef) -> None: ...
    def on_stream_close(self, node: NodeRef) -> None: ...
    # A response was written; `resources` is what it carried (in delta: only the changed ones).
    def on_push(self, node: NodeRef, type_url: str, version: str, resources: Mapping[str, str]) -> None: ...
    # The client ACKed a response of version `version`; `resources` is everything of this type
    # it now runs, as far as its ACKs tell (SotW: that response's content; delta: accumulated).
    def on_ack(self, node: NodeRef, type_url: str, version: str, resources: Mapping[str, str]) -> None: ...
    # The client rejected the response of version `version` that carried `names` (a NACK).
    def on_nack(self, node: NodeRef, type_url: str, version: str, error: str, names: Sequence[str]) -> None: ...
    # The client stopped asking for names it had ACKed: it no longer has them.
    def on_unsubscribe(self, node: NodeRef, type_url: str, names: Sequence[str]) -> None: ...
    # Everything the snapshot owes this client is written (possibly nothing).
    def on_snapshot_sent(self, node: NodeRef, snapshot_version: str) -> None: ...


class NullObserver:
    """An XdsObserver that records nothing (subclass it to implement only some events)."""

    def on_stream_open(self, node: NodeRef) -> None:
        pass

    def on_stream_close(self, node: NodeRef) -> None:
        pass

    def on_push(self, node: NodeRef, type_url: str, version: str, resources: Mapping[str, str]) -> None:
        pass

    def on_ack(self, node: NodeRef, type_url: str, version: str, resources: Mapping[str, str]) -> None:
        pass

    def on_nack(self, node: NodeRef, type_url: str, version: str, error: str, names: Sequence[str]) -> None:
        pass

    def on_unsubscribe(self, node: NodeRef, type_url: str, names: Sequence[str]) -> None:
        pass

    def on_snapshot_sent(self, node: NodeRef, snapshot_version: str) -> None:
        pass


def _ordered(type_urls: Iterator[str] | list[str]) -> list[str]:
    """Type URLs in make-before-break order; types meshgate doesn't order come last, sorted."""
    present = set(type_urls)
    return [t for t in TYPE_ORDER if t in present] + sorted(present - set(TYPE_ORDER))


def response_version(snapshot: Snapshot, type_url: str) -> str:
    """The version_info / system_version_info we put on a response of this type.

    EDS also folds in the cluster version: a changed cluster needs a fresh EDS response to
    finish warming (envoy#13009), and that response should look new even if endpoints are not.
    """
    if type_url == ENDPOINT:
        return combine_versions(snapshot.type_version(ENDPOINT), snapshot.type_version(CLUSTER))
    return snapshot.type_version(type_url)


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


class _Stream:
    """What SotW and delta streams share: node, nonces, reader task, writer loop, observer."""

    kind = ""

    def __init__(self, server: AdsServer, context: grpc.aio.ServicerContext) -> None:
        self.server = server
        self.cache = server.cache
        self.context = context
        self.node = base_pb2.Node()
        self.group = ""
        self.ref = NodeRef("", "", "", self.kind)
        self._nonces = itertools.count(1)
        self._wake = asyncio.Event()
        self._closed = False

    @property
    def node_id(self) -> str:
        return self.node.id

    def next_nonce(self) -> str:
        # A nonce only has to be unique within the stream: a counter is enough and readable.
        return str(next(self._nonces))

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _notify(self, method: str, *args: object) -> None:
        """Call the observer; a broken observer must not break the stream (logged at ERROR with
        the traceback; the tests fail on such a log line)."""
        try:
            getattr(self.server.observer, method)(self.ref, *args)
        except Exception:
            log.exception("xDS observer %s failed", method)

    async def run(self) -> None:
        first = await self.context.read()
        if first is grpc.aio.EOF:
            return
        # Envoy (with set_node_on_first_message_only) only sends `node` on the first request of
        # a stream; without node.id we can't tell who this is or which snapshot applies.
        if not first.node.id:
            log.warning("rejecting %s xDS stream from %s: first request has no node.id",
                        self.kind, self.context.peer())
            await self.context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "first request on the stream must carry node.id"
            )
        self.node.CopyFrom(first.node)
        self.group = self.cache.group_of(self.node)
        if self.server.bind_group:
            names = peer_identities(self.context)
            if self.group not in names:
                log.warning("rejecting %s xDS stream from %s: node %r asks for group %r, its certificate names %s",
                            self.kind, self.context.peer(), first.node.id, self.group, sorted(names) or "nothing")
                await self.context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                         f"this client's certificate is not for node group {self.group!r}")
        self.ref = NodeRef(f"{self.node_id}#{next(self.server._instances)}", self.node_id, self.group,
                           self.kind, self.context.peer() or "")
        unwatch = self.cache.watch(self.group, self._wake.set)
        twins = [s.ref for s in self.server._streams if s.node_id == self.node_id]
        self.server._streams.add(self)
        log.info("xDS %s stream opened: node=%s group=%s peer=%s instance=%s",
                 self.kind, self.node_id, self.group, self.ref.peer, self.ref.instance)
        if twins:
            # Envoy sends node.id; replicas started from one bootstrap share it. They are served
            # as separate nodes, but logs and metrics keyed by id would merge them.
            log.warning("node.id %r is used by %d open xDS streams (peers %s): give each Envoy its own id "
                        "(meshgate bootstrap uses $POD_NAME); an Envoy reconnecting before its old stream "
                        "closed looks the same for a moment", self.node_id, len(twins) + 1,
                        ", ".join([t.peer for t in twins] + [self.ref.peer]))
        self._notify("on_stream_open")
        reader: asyncio.Task[None] | None = None
        try:
            self.handle_request(first)
            reader = asyncio.create_task(self._read_requests())
            await self._write_responses()
        finally:
            unwatch()
            self.server._streams.discard(self)
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            log.info("xDS %s stream closed: node=%s group=%s instance=%s",
                     self.kind, self.node_id, self.group, self.ref.instance)
            self._notify("on_stream_close")

    async def _read_requests(self) -> None:
        try:
            while True:
                request = await self.context.read()
                if request is grpc.aio.EOF:
                    break  # the client half-closed the stream: we end it too
                try:
                    self.handle_request(request)
                except Exception:
                    log.exception("xDS stream of %s: could not handle request %s",
                                  self.node_id, request.type_url)
                    break
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away mid-read
            log.debug("xDS stream of %s: read ended: %r", self.node_id, exc)
        finally:
            self.close()

    async def _write_responses(self) -> None:
        while not self._closed:
            # Clear before looking, so a request or snapshot arriving while we write wakes us.
            self._wake.clear()
            snapshot = self.cache.get_snapshot(self.group)
            if snapshot is not None:
                for response in self.responses(snapshot):
                    if self._closed:
                        return
                    try:
                        await self.context.write(response)
                    except Exception as exc:
                        log.debug("xDS stream of %s: write failed: %r", self.node_id, exc)
                        return
                # Everything this snapshot owes the client is written (possibly nothing).
                self._notify("on_snapshot_sent", snapshot.version)
            await self._wake.wait()

    def handle_request(self, request) -> None:  # noqa: ANN001 - SotW or delta request
        raise NotImplementedError

    def responses(self, snapshot: Snapshot) -> Iterator:
        """Yield the responses owed now, updating per-type state as each one is produced."""
        raise NotImplementedError

    def record_nack(self, type_url: str, version: str, error: str, names: Sequence[str]) -> None:
        log.warning("NACK from node=%s group=%s type=%s version=%s: %s",
                    self.node_id, self.group, _short(type_url), version, error)
        self._notify("on_nack", type_url, version, error, list(names))

    def forget_acked(self, type_url: str, acked: dict[str, str], keep: Iterator[str] | set[str]) -> None:
        """Drop from `acked` the names the client unsubscribed from (it dropped them too)."""
        keep = set(keep)
        gone = sorted(n for n in acked if n not in keep)
        for name in gone:
            del acked[name]
        if gone:
            self._notify("on_unsubscribe", type_url, gone)


# ---- state of the world ------------------------------------------------------------------------


@dataclass
class _SotwType:
    """What one SotW stream knows about one resource type."""

    # Names the client asked for; {"*"} is a wildcard subscription (everything of the type).
    subscribed: set[str] = field(default_factory=set)
    # Legacy wildcard: a client that never named a resource wants all of them.
    ever_named: bool = False
    # name -> resource version of what we last sent (sent, not necessarily ACKed: a NACKed
    # version must not be resent, only a newer one). Trimmed when names are unsubscribed.
    sent: dict[str, str] = field(default_factory=dict)
    nonce: str = ""  # nonce of the latest response of this type; older nonces are stale
    version: str = ""  # version_info of that response
    carried: dict[str, str] = field(default_factory=dict)  # what that response carried
    settled: bool = True  # that response was ACKed or NACKed already
    acked: dict[str, str] = field(default_factory=dict)  # what the client runs (last ACKed content)
    respond: bool = False  # answer at the next chance even if nothing changed


class _SotwStream(_Stream):
    kind = "sotw"

    def __init__(self, server: AdsServer, context: grpc.aio.ServicerContext) -> None:
        super().__init__(server, context)
        self.types: dict[str, _SotwType] = {}

    def handle_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = request.type_url
        if not type_url:
            log.warning("node=%s sent a request without type_url; ignored", self.node_id)
            return
        st = self.types.setdefault(type_url, _SotwType())
        nonce = request.response_nonce
        if nonce and not st.nonce:
            # A nonce on the first request for a type comes from an earlier stream (Envoy
            # reconnected, maybe to another replica): treat it as an initial request.
            nonce = ""
        if nonce and nonce != st.nonce:
            # Stale: the client answers a response we've since superseded; it will answer the
            # newer one too. Responding here could go back in time (xds_protocol "stale nonce").
            if request.HasField("error_detail"):
                log.info("node=%s %s: NACK of superseded response (nonce %s): %s",
                         self.node_id, _short(type_url), nonce, request.error_detail.message)
            else:
                log.debug("node=%s %s: stale nonce %s (latest %s) ignored",
                          self.node_id, _short(type_url), nonce, st.nonce)
            return
        if nonce and request.HasField("error_detail"):
            if not st.settled:
                # NACK: Envoy keeps its last good config. Record it, send nothing: resending the
                # same content would be rejected again (go-control-plane#962). The next different
                # content is sent when a new snapshot brings it.
                st.settled = True
                self.record_nack(type_url, st.version, request.error_detail.message, sorted(st.carried))
            return
        if nonce and not st.settled and request.version_info == st.version:
            # ACK: the latest nonce AND that response's version. After a NACK, Envoy's later
            # requests (e.g. a subscription change) echo the latest nonce with the version it
            # still runs and no error_detail: those are not ACKs, and a nonce is settled once.
            st.settled = True
            st.acked = dict(st.carried)
            self._notify("on_ack", type_url, st.version, MappingProxyType(st.acked))
        elif not nonce:
            # Empty nonce: first request for this type on the stream (new Envoy or reconnect).
            # Always answer, even if the client claims to have a version already.
            st.respond = True
        else:
            log.debug("node=%s %s: request with nonce %s, version %r: a subscription update, not an ACK",
                      self.node_id, _short(type_url), nonce, request.version_info)
        self._update_names(type_url, st, request.resource_names)

    def _update_names(self, type_url: str, st: _SotwType, resource_names) -> None:  # noqa: ANN001
        names = set(resource_names)
        if names:
            st.ever_named = True
            subscribed = names
        elif st.ever_named:
            subscribed = set()  # the client unsubscribed from everything
        else:
            subscribed = {WILDCARD}
        st.subscribed = subscribed
        if WILDCARD not in subscribed:
            # Forget what we sent for names no longer wanted: if they are asked for again, they
            # must be sent again even if unchanged (Envoy may have dropped them).
            st.sent = {n: v for n, v in st.sent.items() if n in subscribed}
            self.forget_acked(type_url, st.acked, subscribed)

    def responses(self, snapshot: Snapshot) -> Iterator[discovery_pb2.DiscoveryResponse]:
        for type_url in _ordered(list(self.types)):
            response = self._response_for(snapshot, type_url, self.types[type_url])
            if response is not None:
                yield response

    def _response_for(
        self, snapshot: Snapshot, type_url: str, st: _SotwType
    ) -> discovery_pb2.DiscoveryResponse | None:
        available = snapshot.names(type_url)
        if WILDCARD in st.subscribed:
            wanted = list(available)
        else:
            wanted = sorted(n for n in st.subscribed if n in available)
        desired = {n: snapshot.resource_version(type_url, n) for n in wanted}

        if type_url not in NAMED_TYPES:
            # Full state (LDS, CDS and any type but RDS/EDS/SDS/VHDS, companion config included):
            # additions, changes and removals all need a response, and an empty response is
            # meaningful ("you have no listeners").
            changed = desired != st.sent
            send = changed or st.respond
        else:
            # RDS/EDS/SDS: only new or changed resources need a response; removals follow the
            # parent (an empty response means nothing to Envoy), and if none of the requested
            # names exist yet we wait until one appears.
            changed = any(st.sent.get(n) != v for n, v in desired.items())
            send = bool(desired) and (changed or st.respond)
        st.respond = False
        if not send:
            return None

        previous = st.sent
        st.sent = desired
        st.carried = dict(desired)
        st.settled = False
        st.nonce = self.next_nonce()
        st.version = response_version(snapshot, type_url)
        if type_url == CLUSTER:
            self._mark_endpoints_stale(snapshot, previous, desired)
        self._notify("on_push", type_url, st.version, MappingProxyType(st.carried))
        log.debug("push node=%s %s version=%s nonce=%s count=%d",
                  self.node_id, _short(type_url), st.version, st.nonce, len(desired))
        return discovery_pb2.DiscoveryResponse(
            version_info=st.version,
            resources=[snapshot.packed(type_url, n) for n in desired],
            type_url=type_url,
            nonce=st.nonce,
        )

    def _mark_endpoints_stale(
        self, snapshot: Snapshot, previous: dict[str, str], current: dict[str, str]
    ) -> None:
        """After sending new or changed clusters, their EDS resources must be sent again.

        Envoy warms an updated cluster until it receives a ClusterLoadAssignment for it, even
        when the endpoints did not change (envoy#13009), so forgetting we sent them makes the
        EDS pass right after this one resend them.
        """
        eds = self.types.get(ENDPOINT)
        if eds is None:
            return
        for cluster, version in current.items():
            if previous.get(cluster) != version:
                eds_name = snapshot.eds_name_of_cluster(cluster)
                if eds_name is not None:
                    eds.sent.pop(eds_name, None)


# ---- delta -------------------------------------------------------------------------------------


@dataclass
class _DeltaSent:
    """One delta response not yet ACKed/NACKed: what it told the client."""

    version: str  # its system_version_info
    resources: dict[str, str]  # name -> resource version it carried
    removed: list[str]  # names in its removed_resources


@dataclass
class _DeltaType:
    """What one delta stream knows about one resource type."""

    # Explicitly subscribed names; "*" is the wildcard subscription.
    subscribed: set[str] = field(default_factory=set)
    # name -> version we told the client; None means we told an explicit subscriber the
    # resource does not exist (so we don't repeat it). Removed wildcard-only names are dropped.
    known: dict[str, str | None] = field(default_factory=dict)
    # Names that need an answer (resource or removal) even if the client state seems current.
    must_answer: set[str] = field(default_factory=set)
    # Nonces sent and not yet ACKed/NACKed -> what they carried.
    pending: dict[str, _DeltaSent] = field(default_factory=dict)
    # What the client runs as far as its ACKs tell: ACKed resources minus ACKed removals.
    acked: dict[str, str] = field(default_factory=dict)
    initial: bool = True  # no response sent yet for this type


class _DeltaStream(_Stream):
    kind = "delta"

    def __init__(self, server: AdsServer, context: grpc.aio.ServicerContext) -> None:
        super().__init__(server, context)
        self.types: dict[str, _DeltaType] = {}

    def handle_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        type_url = request.type_url
        if not type_url:
            log.warning("node=%s sent a delta request without type_url; ignored", self.node_id)
            return
        st = self.types.get(type_url)
        first = st is None
        if st is None:
            st = self.types[type_url] = _DeltaType()
            # Legacy wildcard: a first request naming nothing subscribes to everything.
            if not request.resource_names_subscribe and not request.resource_names_unsubscribe:
                st.subscribed.add(WILDCARD)

        # Subscription changes apply even when the nonce is stale (unlike SotW): delta requests
        # are edits, and dropping one would lose it for good.
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                st.subscribed.add(WILDCARD)
                continue
            st.subscribed.add(name)
            # A (re)subscribed name must be sent even if we believe the client has it: it may
            # have forgotten it.
            st.known.pop(name, None)
        unsubscribed = False
        for name in request.resource_names_unsubscribe:
            unsubscribed = True
            if name == WILDCARD:
                st.subscribed.discard(WILDCARD)
                # The client drops what it only had through the wildcard.
                st.known = {n: v for n, v in st.known.items() if n in st.subscribed}
                continue
            st.subscribed.discard(name)
            st.known.pop(name, None)
            if WILDCARD in st.subscribed:
                # The client can't tell whether the wildcard still covers this name, so it must
                # be told: resent if it exists, removed otherwise (xds_protocol "Unsubscribing").
                st.must_answer.add(name)
        if unsubscribed and WILDCARD not in st.subscribed:
            self.forget_acked(type_url, st.acked, st.subscribed)

        if first:
            # Reconnect: the client says which versions it already has; send only what differs.
            for name, version in request.initial_resource_versions.items():
                st.known[name] = version

        nonce = request.response_nonce
        if not nonce:
            return
        sent = st.pending.get(nonce)
        if sent is None:
            # Already settled, or from another stream: only the subscription changes count.
            log.debug("node=%s %s: stale delta nonce %s", self.node_id, _short(type_url), nonce)
            return
        # This ACK/NACK settles this response; older unanswered ones are superseded.
        st.pending = {n: v for n, v in st.pending.items() if int(n) > int(nonce)}
        if request.HasField("error_detail"):
            # NACK: the client keeps its previous resources. `known` already holds what we sent,
            # so the rejected versions are not resent; a newer version will be.
            self.record_nack(type_url, sent.version, request.error_detail.message,
                             sorted([*sent.resources, *sent.removed]))
        else:
            st.acked.update(sent.resources)
            for name in sent.removed:
                st.acked.pop(name, None)
            self._notify("on_ack", type_url, sent.version, MappingProxyType(st.acked))

    def responses(self, snapshot: Snapshot) -> Iterator[discovery_pb2.DeltaDiscoveryResponse]:
        for type_url in _ordered(list(self.types)):
            response = self._response_for(snapshot, type_url, self.types[type_url])
            if response is not None:
                yield response

    def _response_for(
        self, snapshot: Snapshot, type_url: str, st: _DeltaType
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        available = snapshot.names(type_url)
        wildcard = WILDCARD in st.subscribed
        explicit = st.subscribed - {WILDCARD}
        candidates = explicit | st.must_answer
        if wildcard:
            candidates |= set(available) | set(st.known)

        resources: list[discovery_pb2.Resource] = []
        carried: dict[str, str] = {}
        removed: list[str] = []
        for name in sorted(candidates):
            if name in available:
                version = snapshot.resource_version(type_url, name)
                if st.known.get(name) != version:
                    resources.append(discovery_pb2.Resource(
                        name=name, version=version, resource=snapshot.packed(type_url, name)))
                    st.known[name] = version
                    carried[name] = version
            else:
                # The client has it and it's gone, or it asked for a name that doesn't exist
                # and hasn't been told yet: say so in removed_resources.
                has_it = st.known.get(name) is not None
                never_told = name not in st.known and (name in explicit or name in st.must_answer)
                if has_it or never_told:
                    removed.append(name)
                if name in explicit:
                    st.known[name] = None  # told "doesn't exist": don't repeat it
                else:
                    # Removed and not asked for by name: the client drops it for good, and so do
                    # we (otherwise every deletion would stay in `known` for the stream's life).
                    st.known.pop(name, None)
        st.must_answer.clear()

        # The first response for a wildcard type is owed even if empty: Envoy waits for it to
        # finish initializing (e.g. "no clusters" is an answer).
        owe_initial = st.initial and wildcard
        st.initial = False
        if not resources and not removed and not owe_initial:
            return None

        nonce = self.next_nonce()
        version = response_version(snapshot, type_url)
        st.pending[nonce] = _DeltaSent(version, carried, removed)
        if type_url == CLUSTER:
            self._mark_endpoints_stale(snapshot, [r.name for r in resources])
        self._notify("on_push", type_url, version, MappingProxyType(carried))
        log.debug("delta push node=%s %s version=%s nonce=%s +%d -%d",
                  self.node_id, _short(type_url), version, nonce, len(resources), len(removed))
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            resources=resources,
            type_url=type_url,
            removed_resources=removed,
            nonce=nonce,
        )

    def _mark_endpoints_stale(self, snapshot: Snapshot, clusters: list[str]) -> None:
        """Resend EDS for clusters just sent: an updated cluster warms until it gets a
        ClusterLoadAssignment, even an unchanged one (envoy#13009)."""
        eds = self.types.get(ENDPOINT)
        if eds is None:
            return
        for cluster in clusters:
            eds_name = snapshot.eds_name_of_cluster(cluster)
            if eds_name is not None and eds.known.get(eds_name) is not None:
                del eds.known[eds_name]


# ---- the gRPC service --------------------------------------------------------------------------


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """The Aggregated Discovery Service: serves snapshots from a SnapshotCache to Envoys."""

    def __init__(self, cache: SnapshotCache, observer: XdsObserver | None = None, bind_group: bool = False) -> None:
        self.cache = cache
        self.observer: XdsObserver = observer if observer is not None else NullObserver()
        # Mutual TLS (meshgate.xds.tls): a client may only ask for the group its certificate names.
        self.bind_group = bind_group
        self._streams: set[_Stream] = set()
        self._instances = itertools.count(1)  # numbers each stream's NodeRef.instance

    @property
    def stream_count(self) -> int:
        """Number of open ADS streams (both variants)."""
        return len(self._streams)

    def close_streams(self) -> None:
        """End every open stream with status OK (e.g. before a graceful server stop)."""
        for stream in list(self._streams):
            stream.close()

    async def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802, ANN001
        # We read with context.read() in our own reader task, not with request_iterator.
        await self._serve(_SotwStream(self, context))

    async def DeltaAggregatedResources(self, request_iterator, context):  # noqa: N802, ANN001
        await self._serve(_DeltaStream(self, context))

    @staticmethod
    async def _serve(stream: _Stream) -> None:
        try:
            await stream.run()
        except asyncio.CancelledError:
            # gRPC cancels the handler when the client goes away or the server stops: that is
            # how ADS streams normally end (they have no last message). Cleanup already ran in
            # run()'s finally; re-raising would only make grpc log it as an unhandled error.
            log.debug("xDS %s stream of %s cancelled", stream.kind, stream.node_id or "?")


async def start_xds_server(
    cache: SnapshotCache,
    observer: XdsObserver | None = None,
    address: str = "127.0.0.1:18000",
    tls: XdsTLS | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start a gRPC server with the ADS service on ``address``; returns (server, bound port).

    ``address`` may use port 0 to pick a free port. Stop it with ``await server.stop(grace)``.
    """
    server = grpc.aio.server(options=SERVER_OPTIONS)
    servicer = AdsServer(cache, observer, bind_group=tls is not None and tls.bind_group)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    # With `tls`: mutual TLS, every client authenticated by its certificate (meshgate.xds.tls).
    port = server.add_secure_port(address, server_credentials(tls)) if tls is not None else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind xDS server to {address}")
    await server.start()
    log.info("xDS server listening on %s (port %d, %s)", address, port, "mutual TLS" if tls else "plaintext")
    return server, port
