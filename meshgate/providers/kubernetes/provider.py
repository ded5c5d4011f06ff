"""`KubernetesProvider`: config documents from a Kubernetes API server, kept current by informers
(list + watch, see `informer.py`), for the same `ObjectStore` and translation as files.

What is watched (all namespaces):

- Gateway API (`gateway.networking.k8s.io`): `GatewayClass`, `Gateway`, `HTTPRoute`, `GRPCRoute`,
  `ReferenceGrant` (v1 and v1beta1, whichever the cluster serves). A Gateway is meshgate's only when its `gatewayClassName` names a GatewayClass
  whose `spec.controllerName` is meshgate's (`CONTROLLER_NAME` by default): a cluster may run
  several gateway implementations side by side, each owning its classes.
- meshgate's kinds (`meshgate.io/v1alpha1`, CRDs): Backend, HTTPRoute, ClientTrafficPolicy,
  BackendTrafficPolicy, SecurityPolicy, GRPCJSONTranscoder, EnvoyProxy.
- Secrets of type `kubernetes.io/tls` and `Opaque` only (a field selector, so the server never
  sends service-account tokens or Helm releases).
- ConfigMaps, of which only those meshgate objects name are held (`config_map_refs`): a bounded
  cache, listed again when an object comes to name one that exists but wasn't held.
- Services, and EndpointSlices (those labelled `kubernetes.io/service-name`). Slices are not
  documents: their ready endpoints go to the control plane as EDS alone (`EndpointSource`), so a
  pod coming or going re-translates nothing.

Each document's origin is `kubernetes:KIND NAMESPACE/NAME`, which error messages and `/status`
show instead of FILE:LINE. Fields the API server adds (uid, resourceVersion, managedFields,
status) are dropped before the store sees a document, so a status write or a relist that changes
nothing is no change at all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import ValidationError

from meshgate import ir
from meshgate.api.service import SERVICE_NAME_LABEL, EndpointSlice, Service
from meshgate.errors import NO_LINE, StartupError
from meshgate.gatewayapi.services import service_clusters_endpoints
from meshgate.providers.file.loader import LoadResult, SourceDocument
from meshgate.providers.kubernetes.informer import Informer, ObjectKey, WatchedKind

log = logging.getLogger("meshgate.providers.kubernetes")

__all__ = ["CONTROLLER_NAME", "WATCHED", "KubernetesProvider"]

# The GatewayClass `spec.controllerName` that makes a class (and its Gateways) meshgate's.
CONTROLLER_NAME = "meshgate.io/gateway-controller"

GATEWAY_API = "gateway.networking.k8s.io"
MESHGATE = "meshgate.io"
GATEWAY_CLASS = WatchedKind(GATEWAY_API, "v1", "gatewayclasses", "GatewayClass")
SERVICES = WatchedKind("", "v1", "services", "Service")
# ConfigMaps: every namespace has a few nobody wrote for meshgate (`kube-root-ca.crt`, which the
# API server puts in each one, is left out by the field selector), and a cluster may hold
# thousands more. Their informer keeps only those meshgate objects name (see `_keep_config_map`).
CONFIG_MAPS = WatchedKind("", "v1", "configmaps", "ConfigMap", field_selector="metadata.name!=kube-root-ca.crt")
ENDPOINT_SLICES = WatchedKind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice",
                              label_selector=SERVICE_NAME_LABEL)

WATCHED: list[WatchedKind] = [
    GATEWAY_CLASS,
    WatchedKind(GATEWAY_API, "v1", "gateways", "Gateway"),
    WatchedKind(GATEWAY_API, "v1", "httproutes", "HTTPRoute"),
    WatchedKind(GATEWAY_API, "v1", "grpcroutes", "GRPCRoute"),
    # ReferenceGrant is served as v1 by newer Gateway API releases, as v1beta1 by older ones, and
    # as both in between (one stored object, read under either version): both are watched, a
    # version the server doesn't serve is no error, and an object seen under both is one document
    # (v1 first). See `_changed` and the informer's `other_versions`.
    WatchedKind(GATEWAY_API, "v1", "referencegrants", "ReferenceGrant"),
    WatchedKind(GATEWAY_API, "v1beta1", "referencegrants", "ReferenceGrant"),
    WatchedKind(MESHGATE, "v1alpha1", "backends", "Backend"),
    WatchedKind(MESHGATE, "v1alpha1", "httproutes", "HTTPRoute"),
    WatchedKind(MESHGATE, "v1alpha1", "clienttrafficpolicies", "ClientTrafficPolicy"),
    WatchedKind(MESHGATE, "v1alpha1", "backendtrafficpolicies", "BackendTrafficPolicy"),
    WatchedKind(MESHGATE, "v1alpha1", "securitypolicies", "SecurityPolicy"),
    WatchedKind(MESHGATE, "v1alpha1", "grpcjsontranscoders", "GRPCJSONTranscoder"),
    WatchedKind(MESHGATE, "v1alpha1", "envoyproxies", "EnvoyProxy"),  # Gateways' infrastructure.parametersRef
    WatchedKind("", "v1", "namespaces", "Namespace"),  # their labels: allowedRoutes selectors
    WatchedKind("", "v1", "secrets", "Secret", field_selector="type=kubernetes.io/tls"),
    WatchedKind("", "v1", "secrets", "Secret", field_selector="type=Opaque"),
    SERVICES,
    ENDPOINT_SLICES,
    CONFIG_MAPS,
]

# Written by `kubectl apply`: a copy of the whole object, no use to meshgate.
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

DocKey = tuple[str, str, str, str]  # (API group, kind, namespace, name), as the store's keys


def origin_of(kind: WatchedKind, namespace: str, name: str) -> str:
    """How messages name a cluster object: `kubernetes:HTTPRoute default/app`."""
    # meshgate's HTTPRoute shares its kind with Gateway API's: say which one.
    label = f"{kind.kind}.{kind.group}" if kind.group == MESHGATE and kind.kind == "HTTPRoute" else kind.kind
    return f"kubernetes:{label} {namespace}/{name}" if namespace else f"kubernetes:{label} {name}"


def config_map_refs(data: Any, namespace: str) -> frozenset[tuple[str, str]]:
    """(namespace, name) of every ConfigMap a document names: any `{kind: ConfigMap, name: ...}`
    in it (a Backend's `caCertificateRefs`, a policy's `valueRef`); always in its own namespace."""
    found: set[tuple[str, str]] = set()
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if value.get("kind") == "ConfigMap" and isinstance(value.get("name"), str):
                found.add((namespace, value["name"]))
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return frozenset(found)


def document_data(kind: WatchedKind, obj: dict) -> dict[str, Any]:
    """The object as a config document: what its author wrote, without what the server added."""
    meta = obj.get("metadata") or {}
    out_meta = {k: meta[k] for k in ("name", "namespace", "labels", "annotations", "creationTimestamp") if meta.get(k)}
    if _LAST_APPLIED in out_meta.get("annotations", {}):
        out_meta["annotations"] = {k: v for k, v in out_meta["annotations"].items() if k != _LAST_APPLIED}
    data: dict[str, Any] = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": out_meta}
    for key, value in obj.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            data[key] = value
    return data


# Where Kubernetes mounts a pod's service account: `token` (a bearer token the kubelet rotates,
# replacing the file), `ca.crt` (the API server's CA), `namespace`. $MESHGATE_SERVICE_ACCOUNT_DIR
# points elsewhere: tests (tests/test_kubernetes_incluster.py), or a service account mounted at
# another path; unset (production), the standard path.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_ACCOUNT_DIR_ENV = "MESHGATE_SERVICE_ACCOUNT_DIR"


def service_account_file(name: str) -> str:
    return os.path.join(os.environ.get(SERVICE_ACCOUNT_DIR_ENV) or SERVICE_ACCOUNT_DIR, name)


async def api_client(kubeconfig: str | None = None, context: str | None = None):  # noqa: ANN201
    """A `kubernetes_asyncio` ApiClient: from a kubeconfig file (`kubeconfig`, else $KUBECONFIG),
    else in-cluster (the pod's service account token and CA, and $KUBERNETES_SERVICE_HOST/PORT).

    In-cluster, the client reads the token file again once it is a minute old (before a request,
    `refresh_api_key_hook`), so a token the kubelet rotated is used from then on, with no restart."""
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.config import ConfigException

    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if path:
            await config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration,
                                         token_filename=service_account_file("token"),
                                         cert_filename=service_account_file("ca.crt"))
    except (ConfigException, OSError, TypeError, ValueError) as exc:
        where = f"kubeconfig {path}" if path else (
            f"in-cluster config (no --kubeconfig, no $KUBECONFIG; service account in {os.path.dirname(service_account_file('token'))})")
        raise StartupError(f"cannot load the {where}: {exc}") from None
    return client.ApiClient(configuration)


class KubernetesProvider:
    """Documents from a Kubernetes API server (see the module doc). `start` on the event loop
    first; `load` may then run on a worker thread."""

    def __init__(self, kubeconfig: str | None = None, *, context: str | None = None,
                 controller_name: str = CONTROLLER_NAME, watch_timeout: int = 300, sync_timeout: float = 30.0,
                 debounce: float = 0.02, max_backoff: float = 30.0) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.controller_name = controller_name
        self.watch_timeout = watch_timeout
        self.sync_timeout = sync_timeout
        self.debounce = debounce  # changes arriving within this are one reload
        self.max_backoff = max_backoff
        self.description = "Kubernetes"
        self.informers: list[Informer] = []
        self._by_kind: dict[WatchedKind, Informer] = {}
        self._api: Any = None
        self._tasks: list[asyncio.Task] = []
        self._lock = threading.Lock()  # `load` (a worker thread) reads what informers write (the loop)
        self._docs: dict[DocKey, SourceDocument] = {}
        self._our_classes: frozenset[str] = frozenset()
        self._classes: Informer | None = None
        self._config_pending: set[str] = set()
        self._config_event = asyncio.Event()
        # Endpoints: cluster name -> endpoints, replaced (never changed) on each update.
        self._table: Mapping[str, tuple[ir.Endpoint, ...]] = {}
        self._services: Informer | None = None
        self._slices: Informer | None = None
        self._slices_of: dict[tuple[str, str], set[str]] = {}  # (ns, Service) -> its slices' names
        self._service_of_slice: dict[tuple[str, str], str] = {}
        self._endpoints_dirty: set[tuple[str, str]] = set()  # (ns, Service)
        self._endpoints_event = asyncio.Event()
        # Called with (kind, (namespace, name)) on every object change, status-only ones included
        # (the status writer listens: someone else may have overwritten a status).
        self.object_listeners: list = []
        # ConfigMaps: only the named ones are held (a bounded cache). Per meshgate document, the
        # ConfigMaps it names; and how many documents name each one.
        self._config_maps: Informer | None = None
        self._refs_of: dict[DocKey, frozenset[tuple[str, str]]] = {}
        self._referenced: dict[tuple[str, str], int] = {}
        self._relist_pending = False

    @property
    def api(self) -> Any:
        """The `kubernetes_asyncio` ApiClient (after `start`), for writers sharing the connection."""
        return self._api

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, start an informer per watched kind, and wait (at most `sync_timeout`) for
        their first lists, so the first load is the whole cluster. Kinds that didn't list in time
        (API server down, CRD not installed, no RBAC) keep retrying and are logged."""
        from kubernetes_asyncio import client

        self._api = await api_client(self.kubeconfig, self.context)
        self.description = f"Kubernetes API {self._api.configuration.host}"
        core, discovery = client.CoreV1Api(self._api), client.DiscoveryV1Api(self._api)
        custom = client.CustomObjectsApi(self._api)
        for kind in WATCHED:
            if kind.plural == "services":
                list_function = core.list_service_for_all_namespaces
            elif kind.plural == "secrets":
                list_function = core.list_secret_for_all_namespaces
            elif kind.plural == "namespaces":
                list_function = core.list_namespace
            elif kind.plural == "endpointslices":
                list_function = discovery.list_endpoint_slice_for_all_namespaces
            elif kind.plural == "configmaps":
                list_function = core.list_config_map_for_all_namespaces
            else:  # CRDs (Gateway API's included), namespaced or not, in every namespace
                list_function = functools.partial(custom.list_cluster_custom_object, kind.group, kind.version, kind.plural)
            informer = Informer(kind, list_function, functools.partial(self._changed, kind),
                                watch_timeout=self.watch_timeout, max_backoff=self.max_backoff,
                                keep=self._keep_config_map if kind is CONFIG_MAPS else None)
            self._by_kind[kind] = informer
            self.informers.append(informer)
            if kind is GATEWAY_CLASS:
                self._classes = informer
            elif kind is SERVICES:
                self._services = informer
            elif kind is ENDPOINT_SLICES:
                self._slices = informer
            elif kind is CONFIG_MAPS:
                self._config_maps = informer
        for informer in self.informers:
            informer.other_versions = [i for i in self.informers if i.kind.plural == informer.kind.plural
                                       and i.kind.group == informer.kind.group and i.kind.version != informer.kind.version]
        # ConfigMaps last: which ones to keep depends on the objects naming them, listed first.
        first = [i for i in self.informers if i is not self._config_maps]
        self._tasks = [asyncio.create_task(i.run(), name=f"informer {i.kind.name}") for i in first]
        deadline = asyncio.get_running_loop().time() + self.sync_timeout
        await self._wait_synced(first, deadline)
        if self._config_maps is not None:
            self._tasks.append(asyncio.create_task(self._config_maps.run(), name=f"informer {CONFIG_MAPS.name}"))
        if await self._wait_synced(self.informers, deadline):
            missing = {i.kind.name: i.last_error or "no answer" for i in self.informers if not i.synced.is_set()}
            log.warning("some kinds could not be listed yet; serving what could, and retrying",
                        extra={"kinds": missing})
        self._recompute_endpoints()

    @staticmethod
    async def _wait_synced(informers: list[Informer], deadline: float) -> bool:
        """Wait until `informers` have listed, at most until `deadline`; True if some have not."""
        try:
            await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in informers)),
                                   max(0.0, deadline - asyncio.get_running_loop().time()))
            return False
        except asyncio.TimeoutError:
            return True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._api is not None:
            await self._api.close()

    # -- documents -----------------------------------------------------------------------------

    def load(self) -> LoadResult:
        with self._lock:
            ours = self._our_classes
            docs = [d for key, d in self._docs.items()
                    if key[1] != "Gateway" or key[0] != GATEWAY_API or _gateway_class(d) in ours]
        return LoadResult(documents=docs, errors=[], document_count=len(docs), files=[], named_files=[])

    async def changes(self) -> AsyncIterator[set[str]]:
        while True:
            await self._config_event.wait()
            await asyncio.sleep(self.debounce)
            self._config_event.clear()
            batch, self._config_pending = self._config_pending, set()
            if batch:
                yield batch

    def _changed(self, kind: WatchedKind, key: ObjectKey) -> None:
        """An informer saw an object appear, change or go (called on the event loop)."""
        namespace, name = key
        for listener in self.object_listeners:
            listener(kind, key)
        informer = self._by_kind[kind]
        obj = informer.objects.get(key)
        if obj is None or informer.other_versions:
            # One object may be held by several informers of its kind (ReferenceGrant's two
            # versions; Secrets, asked for by type): it is one document, from the first that holds it.
            kind, obj = next(((i.kind, i.objects[key]) for i in self.informers
                              if i.kind.kind == kind.kind and i.kind.group == kind.group and key in i.objects),
                             (kind, None))
        if kind is ENDPOINT_SLICES:
            self._slice_changed(namespace, name, obj)
            return
        origin = origin_of(kind, namespace, name)
        if kind is GATEWAY_CLASS:
            ours = frozenset(n for (_, n), gc in informer.objects.items()
                             if (gc.get("spec") or {}).get("controllerName") == self.controller_name)
            if ours == self._our_classes:
                return
            with self._lock:
                self._our_classes = ours
        else:
            doc_key = (kind.group, kind.kind, namespace or "default", name)
            with self._lock:
                if obj is None:
                    self._docs.pop(doc_key, None)
                    data = None
                else:
                    data = document_data(kind, obj)
                    previous = self._docs.get(doc_key)
                    if previous is not None and previous.data == data:
                        return  # e.g. only status or resourceVersion moved
                    self._docs[doc_key] = SourceDocument(origin, NO_LINE, data, {})
            if kind.group == MESHGATE:
                self._names_config_maps(doc_key, config_map_refs(data, namespace or "default") if data else frozenset())
            if kind is SERVICES:
                self._endpoints_dirty.add((namespace, name))
                self._endpoints_event.set()
        self._config_pending.add(origin)
        self._config_event.set()

    # -- ConfigMaps: a bounded cache ------------------------------------------------------------

    def _keep_config_map(self, key: ObjectKey) -> bool:
        namespace, name = key
        return (namespace or "default", name) in self._referenced

    def _names_config_maps(self, doc_key: DocKey, refs: frozenset[tuple[str, str]]) -> None:
        """Count the ConfigMaps a document names now. One named anew that the informer dropped
        (it existed, but nobody named it then) needs a list to be read; one no longer named by
        anybody is let go."""
        before = self._refs_of.pop(doc_key, frozenset())
        if refs:
            self._refs_of[doc_key] = refs
        if refs == before:
            return
        for ref in refs - before:
            self._referenced[ref] = self._referenced.get(ref, 0) + 1
        for ref in before - refs:
            self._referenced[ref] -= 1
            if not self._referenced[ref]:
                del self._referenced[ref]
        informer = self._config_maps
        if informer is None:
            return
        if any(key in informer.dropped for key in refs - before):
            self._relist_config_maps()
        for key in [k for k in informer.objects if not self._keep_config_map(k)]:
            del informer.objects[key]
            informer.dropped.add(key)
            self._changed(CONFIG_MAPS, key)

    def _relist_config_maps(self) -> None:
        """List the ConfigMaps again (once, however many references appeared at once)."""
        if self._relist_pending or self._config_maps is None:
            return
        self._relist_pending = True

        def restart() -> None:
            self._relist_pending = False
            for n, task in enumerate(self._tasks):
                if task.get_name() == f"informer {CONFIG_MAPS.name}":
                    task.cancel()
                    self._tasks[n] = asyncio.create_task(self._config_maps.run(), name=task.get_name())

        asyncio.get_running_loop().call_soon(restart)

    # -- endpoints -----------------------------------------------------------------------------

    def endpoints(self) -> Mapping[str, tuple[ir.Endpoint, ...]]:
        return self._table

    async def endpoint_changes(self) -> AsyncIterator[set[str]]:
        while True:
            await self._endpoints_event.wait()
            await asyncio.sleep(self.debounce)
            self._endpoints_event.clear()
            changed = self._recompute_endpoints()
            if changed:
                yield changed

    def _slice_changed(self, namespace: str, name: str, obj: dict | None) -> None:
        old = self._service_of_slice.pop((namespace, name), None)
        if old is not None:
            self._slices_of.get((namespace, old), set()).discard(name)
            self._endpoints_dirty.add((namespace, old))
        service = ((obj or {}).get("metadata", {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if obj is not None and service:
            self._service_of_slice[(namespace, name)] = service
            self._slices_of.setdefault((namespace, service), set()).add(name)
            self._endpoints_dirty.add((namespace, service))
        self._endpoints_event.set()

    def _recompute_endpoints(self) -> set[str]:
        """Rebuild the endpoints of the Services marked dirty; the names of clusters that changed."""
        if self._services is None or self._slices is None:
            return set()
        dirty, self._endpoints_dirty = self._endpoints_dirty, set()
        table = dict(self._table)
        changed: set[str] = set()
        for namespace, name in dirty:
            prefix = f"service/{namespace}/{name}/"
            before = {c: e for c, e in table.items() if c.startswith(prefix)}
            after = self._service_endpoints(namespace, name)
            for cluster in before.keys() - after.keys():
                del table[cluster]
            table.update(after)
            changed |= {c for c in before.keys() | after.keys() if before.get(c) != after.get(c)}
        if changed:
            self._table = table
        return changed

    def _service_endpoints(self, namespace: str, name: str) -> dict[str, tuple[ir.Endpoint, ...]]:
        assert self._services is not None and self._slices is not None
        raw = self._services.objects.get((namespace, name))
        if raw is None:
            return {}
        try:
            service = Service.model_validate(document_data(SERVICES, raw))
        except ValidationError:
            return {}  # reported by the store, as the Service document
        slices = []
        for slice_name in sorted(self._slices_of.get((namespace, name), ())):
            raw_slice = self._slices.objects.get((namespace, slice_name))
            if raw_slice is None:
                continue
            try:
                slices.append(EndpointSlice.model_validate(document_data(ENDPOINT_SLICES, raw_slice)))
            except ValidationError as exc:
                log.warning("EndpointSlice left out", extra={
                    "object": origin_of(ENDPOINT_SLICES, namespace, slice_name), "error": str(exc.errors()[0]["msg"])})
        return service_clusters_endpoints(service, slices)


def _gateway_class(doc: SourceDocument) -> str | None:
    spec = doc.data.get("spec")
    return spec.get("gatewayClassName") if isinstance(spec, dict) else None
