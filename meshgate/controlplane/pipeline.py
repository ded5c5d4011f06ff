"""The control plane loop: config files → object store → Gateway API translation (IR + a status
per object) → Envoy resources → snapshot → staged publish.

`ControlPlane.reload()` runs the pipeline once. Valid objects are always published; an invalid
one is reported (`/status` `objects`, `last_error`, the log, once per problem) and left out, or,
if it was valid before, its last valid version keeps serving. `ControlPlane.watch()` reloads when
config files change (inotify, through `meshgate.providers.file.FileProvider`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshgate.api.config import all_problems
from meshgate.providers.base import EndpointSource, Provider
from meshgate.providers.file import FileProvider
from meshgate.controlplane.audit import ConfigAudit
from meshgate.controlplane.publish import StagedPublisher
from meshgate.controlplane.status import ControlPlaneStatus
from meshgate.errors import MeshgateError
from meshgate.gatewayapi import Translation, TranslationMemo, translate_view
from meshgate.gatewayapi.tenant_limits import NamespaceLimits
from meshgate.providers.store import ObjectStore, StoreView
from envoy.config.endpoint.v3 import endpoint_pb2

from meshgate import ir
from meshgate.gatewayapi.routes import cluster_name_of
from meshgate.xds.snapshot import ENDPOINT, InconsistentSnapshot, Snapshot, SnapshotCache
from meshgate.xds.translator import Resources, TranslateMemo, TranslateOptions, translate, translate_endpoints

log = logging.getLogger("meshgate.controlplane.pipeline")

# Seconds without a reload after which the garbage of past reloads is collected (see _collect).
GC_IDLE_SECONDS = 5.0
# A reload that leaves more young objects than this freezes them without collecting first.
YOUNG_COLLECT_LIMIT = 100_000
# Endpoint updates arriving within this window go out together, in one EDS push.
ENDPOINT_BATCH_SECONDS = 0.01


def cluster_variants(translation: Translation) -> dict[str, list[str]]:
    """Backend cluster name -> the names of its variants (same endpoints, a BackendTrafficPolicy's
    cluster settings), which must get every endpoint update the Backend's own cluster gets."""
    out: dict[str, list[str]] = {}
    for cluster in translation.ir.clusters:
        if cluster.backend is not None:
            out.setdefault(cluster.backend, []).append(cluster.name)
    return out


def _named(cla: endpoint_pb2.ClusterLoadAssignment, name: str) -> endpoint_pb2.ClusterLoadAssignment:
    if cla.cluster_name == name:
        return cla
    renamed = endpoint_pb2.ClusterLoadAssignment()
    renamed.CopyFrom(cla)
    renamed.cluster_name = name
    return renamed


def _cla(cluster: str, endpoints: tuple[ir.Endpoint, ...]) -> endpoint_pb2.ClusterLoadAssignment:
    return translate_endpoints(ir.Cluster(name=cluster, endpoints=endpoints, lb="RoundRobin", protocol="HTTP1",
                                          connect_timeout_s=0, dns=False))


def compile_config(translation: Translation, options: TranslateOptions, memo: TranslateMemo | None = None) -> Resources:
    """IR → Envoy resources, shared by `meshgate translate` and the control plane."""
    return translate(translation.ir, options, memo)


@dataclass
class Compiled:
    """One run of the pure pipeline."""

    translation: Translation | None
    snapshot: Snapshot | None
    problems: list[str]  # FILE:LINE: field: message, every problem of the current files
    fatal: str | None = None  # why nothing could be published at all (a bug, not a config problem)
    empty: bool = False  # the paths hold no documents at all
    view: StoreView | None = None  # what the store gave (the audit log diffs its versions)
    started_ns: int = field(default_factory=time.time_ns)  # when the reload began (its span's start)


class ControlPlane:
    """Watches config files and publishes a snapshot for one node group."""

    def __init__(
        self,
        paths: Sequence[str],
        cache: SnapshotCache,
        *,
        group: str = "edge",
        env: str | None = None,
        options: TranslateOptions = TranslateOptions(),
        status: ControlPlaneStatus | None = None,
        environ: Mapping[str, str] | None = None,
        on_config: Callable[[Translation], None] | None = None,
        on_rejected: Callable[[list[str]], None] | None = None,
        provider: Provider | None = None,
    ) -> None:
        self.paths = list(paths)
        self.cache = cache
        self.group = group
        self.env = env
        self.options = options
        self.status = status or ControlPlaneStatus()
        self.environ = environ
        self.on_config = on_config  # called with every translation that was published
        self.on_rejected = on_rejected  # called with problem lines not reported before
        # Called with every translation that was applied, published or unchanged (Consul's
        # follower, meshgate.providers.consul, must see a Backend leave Consul even when the
        # endpoints it had set make the snapshot look unchanged).
        self.on_translation: Callable[[Translation], None] | None = None
        self.publisher = StagedPublisher(cache, group, self.status)
        # Loads the files (re-reading only changed ones) and reports settled changes; or another
        # source of documents (the Kubernetes API), see meshgate.providers.base.
        self.provider: Provider = provider if provider is not None else FileProvider(self.paths, env, environ)
        self.source = getattr(provider, "description", "") or ", ".join(self.paths)  # for messages
        self._provider_clas: dict[str, tuple[tuple, endpoint_pb2.ClusterLoadAssignment]] = {}
        self._provider_clas_lock = threading.Lock()  # the loop and a reload's worker thread both read them
        self.store = ObjectStore()  # objects with their last valid versions, across reloads
        # Per-tenant limits (meshgate.gatewayapi.tenant_limits): off unless the command sets them.
        self.tenant_limits = NamespaceLimits()
        self.memo = TranslationMemo()  # per-route translations, reused while unchanged
        self.xds_memo = TranslateMemo()  # per-route Envoy messages, likewise
        self.translation: Translation | None = None  # the last translation published
        self._reported: set[str] = set()  # problem lines already logged
        self._gc_timer: asyncio.TimerHandle | None = None
        # Endpoints set from outside the config files (set_endpoints), by cluster name; they win
        # over the Backend's own endpoints in every snapshot until set again.
        self.endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
        self._endpoints_dirty: set[str] = set()
        self._endpoints_flush: asyncio.TimerHandle | None = None
        self.status.objects = self.objects_status
        # Called on the loop with every translation applied, published or not (its statuses may
        # have changed even when Envoy's config did not): the Kubernetes status writer listens.
        self.translation_listeners: list[Callable[[Translation], None]] = []
        self.spans = None  # meshgate.controlplane.spans.ControlPlaneSpans while tracing is on
        # `--audit-log`: every config change as a JSON line (Envoy appends its denials to the same file).
        self.audit = ConfigAudit(options.audit_log_path, self.source) if options.audit_log_path else None

    @property
    def snapshot(self) -> Snapshot | None:
        """The last snapshot published (possibly an intermediate stage of a staged publish)."""
        return self.publisher.snapshot

    def objects_status(self, problems_only: bool = False) -> list[dict]:
        """Every object (or those with a problem) with its conditions, for `/status`; an object
        whose resource an Envoy rejected (NACK) says so in `Programmed`."""
        if self.translation is None:
            return []
        rejected = self._rejected_objects()
        out = []
        for key, status in sorted(self.translation.status.objects.items()):
            if problems_only and status.ok and key not in rejected:
                continue
            entry = status.as_dict()
            if key in rejected:
                entry["conditions"] = [c for c in entry["conditions"] if c["type"] != "Programmed"] + [
                    {"type": "Programmed", "status": "False", "reason": "Rejected", "message": rejected[key]}]
            out.append(entry)
        return out

    def _rejected_objects(self) -> dict[tuple, str]:
        """Object key -> why Envoy rejected its resources, for every outstanding NACK. Envoy's
        message names the resource it refused (a listener, a cluster, a route by its name
        `httproute/NS/NAME/...`); that name leads back to the object."""
        out: dict[tuple, str] = {}
        translation = self.translation
        port_of = {listener.name: listener.port for listener in translation.ir.listeners}
        for nack in self.status.nacks():
            error = nack["error"]
            names = [n for n in nack.get("resources", []) if n in error] or list(nack.get("resources", []))
            message = f"Envoy node {nack['node']} rejected {nack['type']}: {error.strip()[:300]}"
            keys: set[tuple] = set()
            for m in re.finditer(r"\b(httproute|grpcroute)/([a-z0-9.-]+)/([a-z0-9.-]+)/rule/", error):
                kind = "HTTPRoute" if m.group(1) == "httproute" else "GRPCRoute"
                keys |= {k for k in translation.status.objects if k[1:] == (kind, m.group(2), m.group(3))}
            for name in names if not keys else ():
                if name.startswith("backend/"):
                    _, ns, backend = name.split("/", 2)
                    keys.add(("meshgate.io", "Backend", ns, backend))
                elif name in port_of:  # a listener or its route configuration: the Gateways on that port
                    keys |= {(g.api_version.split("/")[0], "Gateway", g.metadata.namespace, g.metadata.name)
                             for g in translation.gateways if any(l.port == port_of[name] for l in g.spec.listeners)}
                elif name.startswith("secret/"):
                    _, ns, secret = name.split("/", 2)
                    keys.add(("", "Secret", ns, secret))
            for key in keys:
                out.setdefault(key, message)
        return out

    def reload(self) -> bool:
        """Run the pipeline once. Returns True when a new snapshot was published."""
        return self._apply(self._compile())

    async def reload_in_thread(self) -> bool:
        """`reload`, with the pipeline on a worker thread so ADS streams and the status server
        keep answering while a large config is translated."""
        return self._apply(await asyncio.to_thread(self._compile))

    def _compile(self) -> Compiled:
        """The pure part: files -> snapshot and problems. No shared state but the document cache
        and the object store, so it may run on a worker thread (one at a time)."""
        started = time.perf_counter()
        started_ns = time.time_ns()
        gc_was_enabled = gc.isenabled()
        # The pipeline allocates ~100 objects per route; the cyclic GC would otherwise rescan
        # everything alive many times over (measured: build_ir 0.5 s -> 0.15 s at 10,000 routes).
        gc.disable()
        try:
            loaded = self.provider.load()
            view = self.store.update(loaded.documents, loaded.errors)
            view = self.tenant_limits.apply(view)  # the objects beyond a namespace's limits left out
            translation = translate_view(view, memo=self.memo)
            self.tenant_limits.report(translation)  # ... and their status says why
            problems = [str(e) for e in all_problems(view, translation)]
            resources = compile_config(translation, self.options, self.xds_memo)
            variants = cluster_variants(translation)
            external = dict(self._provider_endpoints())
            external.update(self.endpoints)  # a copy: set_endpoints runs on the loop
            for cluster, cla in external.items():
                for name in (cluster, *variants.get(cluster, ())):
                    if name in resources[ENDPOINT]:
                        resources[ENDPOINT][name] = _named(cla, name)
            snapshot = Snapshot.build(resources, previous=self.snapshot)
            snapshot.check_consistent()
            return Compiled(translation, snapshot, problems, empty=loaded.empty, view=view,
                            started_ns=started_ns)
        except InconsistentSnapshot as exc:
            return Compiled(None, None, [], fatal=f"internal error, snapshot refused: {exc}", started_ns=started_ns)
        except MeshgateError as exc:
            return Compiled(None, None, [], fatal=str(exc), started_ns=started_ns)
        finally:
            if gc_was_enabled:
                # What survived is mostly the config, alive until the next reload: move it out of
                # the collector's sight (gc.freeze), so a collection doesn't walk millions of
                # objects in the middle of a push. Frozen objects are never collected, so the
                # garbage cycles of past reloads are collected later, when reloads pause.
                # The young garbage of an edit is collected first; after a load of everything
                # (the first, 10,000 routes: ~770,000 young objects, ~120 ms to walk for a
                # hundred garbage ones) that waits for the pause too.
                if gc.get_count()[0] < YOUNG_COLLECT_LIMIT:
                    gc.collect(0)
                gc.freeze()
                gc.enable()
            self.status.metrics.translation.observe(time.perf_counter() - started)

    def _apply(self, result: Compiled) -> bool:
        """Publish the valid part of a compiled config (in stages when clusters come or go) and
        report its problems."""
        metrics = self.status.metrics
        self._schedule_collect()
        if result.snapshot is None or result.translation is None:
            self.status.last_error = [result.fatal or "unknown error"]
            metrics.reloads.labels("error").inc()
            kept = f"; still serving version {self.snapshot.version}" if self.snapshot else ""
            log.error("config could not be translated%s", kept, extra={"errors": self.status.last_error})
            if self.on_rejected is not None:
                self.on_rejected(self.status.last_error)
            if self.audit is not None:
                self.audit.record(outcome="rejected", old_version=self.snapshot.version if self.snapshot else None,
                                  new_version=None, objects={}, problems=self.status.last_error)
            if self.spans is not None:
                self.spans.reload(result.started_ns, "rejected", None, len(self.status.last_error),
                                  error=self.status.last_error[0])
            return False
        self._report(result)
        if self.audit is not None:
            self.audit.record(outcome="partially_accepted" if self.status.last_error else "accepted",
                              old_version=self.snapshot.version if self.snapshot else None,
                              new_version=result.snapshot.version, objects=result.view.versions if result.view else {},
                              problems=self.status.last_error)
        if self.spans is not None:  # the span ends here: publishing is the ADS push spans' part
            self.spans.reload(result.started_ns, "partially_accepted" if self.status.last_error else "accepted",
                              result.snapshot.version, len(self.status.last_error))
        self._publish_companions(result.translation)  # first: a policy is there before Envoy's routes ask for it
        published = self.publisher.publish(result.snapshot)
        self.translation = result.translation
        for listener in self.translation_listeners:
            listener(result.translation)
        self.status.summary = result.translation.summary()
        self.status.last_reload = time.time()
        if self.on_translation is not None:
            self.on_translation(result.translation)
        if not published:
            metrics.reloads.labels("unchanged").inc()
            log.info("config unchanged", extra={"version": result.snapshot.version})
            return False
        metrics.reloads.labels("published" if not result.problems else "published_partially").inc()
        if self.on_config is not None:
            self.on_config(result.translation)
        return True

    def _publish_companions(self, translation: Translation) -> None:
        """The edge companions' config (their own node group and xDS type, meshgate.edge.config):
        the request-signature policies with their keys, which never go to Envoy. Published on
        every reload, so a rotated key reaches them even when Envoy's config is unchanged."""
        from meshgate.edge.config import EDGE_GROUP, companion_resources

        try:
            previous = self.cache.get_snapshot(EDGE_GROUP)
            self.cache.set_snapshot(EDGE_GROUP, Snapshot.build(companion_resources(translation.ir.listeners),
                                                               previous=previous))
        except InconsistentSnapshot as exc:  # a bug: the companions keep their last config
            log.error("edge companion config refused: %s", exc)

    def _report(self, result: Compiled) -> None:
        """Log each problem once (while it lasts), and say when the config is valid again."""
        problems = result.problems
        if result.empty:
            problems = [f"{self.source}: no objects found (an empty config serves nothing)"]
        self.status.metrics.config_errors.set(len(result.problems))
        self.status.last_error = problems
        new = [p for p in problems if p not in self._reported]
        if new:
            kept = "; valid objects are published, rejected ones keep their last valid version or are left out"
            log.error("config has problems%s", kept, extra={"errors": new})
            if self.on_rejected is not None:
                self.on_rejected(new)
        elif self._reported and not problems:
            log.info("config is valid again")
        self._reported = set(problems)

    # -- endpoints -----------------------------------------------------------------------------
    def set_endpoints(self, namespace: str, name: str, endpoints: Iterable[tuple[str, int, int]]) -> None:
        """Set a Backend's endpoints (address, port, weight) from outside the config files: what a
        provider watching Kubernetes EndpointSlices or a Consul catalog does as pods come and go.

        Goes out as EDS alone (a new ClusterLoadAssignment; no route, listener or cluster is
        translated again), and updates arriving within `ENDPOINT_BATCH_SECONDS` are sent together.
        Must be called on the event loop.
        """
        self.set_cluster_endpoints(cluster_name_of(namespace, name), (ir.Endpoint(a, p, w) for a, p, w in endpoints))

    def set_cluster_endpoints(self, cluster: str, endpoints: Iterable[ir.Endpoint]) -> None:
        """`set_endpoints` for any cluster by name (e.g. a Service port's `service/NS/NAME/PORT`)."""
        self.endpoints[cluster] = _cla(cluster, tuple(endpoints))
        self._endpoints_changed({cluster})

    def _endpoints_changed(self, clusters: Iterable[str]) -> None:
        self._endpoints_dirty.update(clusters)
        if self._endpoints_flush is None:
            self._endpoints_flush = asyncio.get_running_loop().call_later(ENDPOINT_BATCH_SECONDS, self._flush_endpoints)

    def _flush_endpoints(self) -> None:
        self._endpoints_flush = None
        current = self.publisher.snapshot
        if current is None or self.status.pending_stages:
            # No config yet, or a staged publish under way: go out right after it.
            self._endpoints_flush = asyncio.get_running_loop().call_later(ENDPOINT_BATCH_SECONDS, self._flush_endpoints)
            return
        dirty, self._endpoints_dirty = self._endpoints_dirty, set()
        eds = dict(current.resources.get(ENDPOINT, {}))
        # A Backend's endpoints go to its own cluster and to its policy variants (BackendTrafficPolicy).
        variants = cluster_variants(self.translation) if self.translation is not None else {}
        targets = [(c, name) for c in dirty for name in (c, *variants.get(c, ()))]
        changed = [(c, name) for c, name in targets if name in eds]  # not (yet) in the config: applied when they are
        if not changed:
            return
        external = self._provider_endpoints()
        for cluster, name in changed:
            cla = self.endpoints.get(cluster)
            cla = cla if cla is not None else external.get(cluster)
            if cla is not None:
                eds[name] = _named(cla, name)
        resources = {**current.resources, ENDPOINT: eds}
        self.publisher.publish(Snapshot.build(resources, previous=current))
        self.status.metrics.endpoint_updates.inc(len({c for c, _ in changed}))

    def _provider_endpoints(self) -> dict[str, endpoint_pb2.ClusterLoadAssignment]:
        """The provider's endpoints (an `EndpointSource`: Kubernetes EndpointSlices) as
        ClusterLoadAssignments, each built again only when its endpoints changed."""
        if not isinstance(self.provider, EndpointSource):
            return {}
        table, known = self.provider.endpoints(), self._provider_clas
        out = {}
        with self._provider_clas_lock:
            for cluster, endpoints in table.items():
                cached = known.get(cluster)
                if cached is None or cached[0] != endpoints:
                    cached = known[cluster] = (endpoints, _cla(cluster, endpoints))
                out[cluster] = cached[1]
            if len(known) > len(table):
                for cluster in [c for c in known if c not in table]:
                    del known[cluster]
        return out

    # -- memory --------------------------------------------------------------------------------
    def _schedule_collect(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a synchronous caller (tests, `validate`): nothing runs later anyway
        if self._gc_timer is not None:
            self._gc_timer.cancel()
        self._gc_timer = loop.call_later(GC_IDLE_SECONDS, self.collect_garbage)

    @staticmethod
    def collect_garbage() -> None:
        """Collect what past reloads left in reference cycles (frozen, so never collected
        otherwise), then freeze what lives. Runs when reloads pause, not in the middle of one."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    # -- watching ------------------------------------------------------------------------------
    async def watch(self) -> None:
        """Reload whenever a config file (or a certificate file a Gateway names) has changed and
        settled: inotify through the file provider, no polling. With another provider, whenever
        its objects change; its endpoint changes (an `EndpointSource`) go out as EDS alone."""
        if isinstance(self.provider, EndpointSource):
            await asyncio.gather(self._watch_config(), self._watch_endpoints())
        else:
            await self._watch_config()

    async def _watch_endpoints(self) -> None:
        async for clusters in self.provider.endpoint_changes():  # type: ignore[attr-defined]
            self._endpoints_changed(clusters)

    async def _watch_config(self) -> None:
        files = isinstance(self.provider, FileProvider)
        async for changed in self.provider.changes():
            if files:
                log.info("config files changed, reloading", extra={"files": sorted(changed)[:20]})
            else:
                log.info("config changed, reloading", extra={"objects": sorted(changed)[:20]})
            try:
                await self.reload_in_thread()
            except Exception:  # a bug must not end hot reload for the life of the process
                log.exception("reload failed unexpectedly; the last good config keeps serving")
