"""A fake Kubernetes API server that speaks the real wire protocol, so that the production client
(`kubernetes-asyncio`, unmodified) runs against it in tests.

What a real kube-apiserver does and this one imitates (https://kubernetes.io/docs/reference/using-api/api-concepts/):

- discovery: `/api`, `/apis`, `/api/v1`, `/apis/GROUP/VERSION` list the resources served;
- objects by group/version/resource ("GVR", e.g. `gateway.networking.k8s.io/v1/httproutes`), with
  `metadata.uid`, `resourceVersion` (one counter for the whole server, as etcd's revision),
  `generation` (grows when anything but metadata and status changes) and `creationTimestamp`;
- a resource served in several versions (ReferenceGrant v1 and v1beta1): one stored object, read
  and watched under each version with that version's apiVersion; a version can stop (or start)
  being served while the server runs (`remove_resource`, `add_resource`), and then answers 404;
- list (`GET .../httproutes`) with the list's `resourceVersion`, `limit` + `continue` paging,
  `labelSelector` and `fieldSelector`;
- watch (`?watch=true`): a chunked HTTP response of JSON lines `{"type": ADDED|MODIFIED|DELETED|
  BOOKMARK|ERROR, "object": ...}` from a `resourceVersion` on; a version older than the kept
  history gets an ERROR event with a `Status` of code 410 (Gone, reason `Expired`), which tells a
  client to list again; `timeoutSeconds` ends the stream; `allowWatchBookmarks` gets BOOKMARK
  events (only a resourceVersion) every `bookmark_interval` seconds;
- create (POST), replace (PUT, with optimistic concurrency on `resourceVersion`: 409 Conflict),
  patch (merge patch, strategic merge treated as merge, JSON patch), delete; the `status`
  subresource (`.../NAME/status`) changes only `status`, and the main resource never changes it.

TLS (an `ssl_context`, as a pod's in-cluster config requires `https`) and one bearer token (which a
test may change, as a rotation); every request's Authorization header is kept (`tokens_seen`).

Not imitated: authentication beyond that token, admission, field managers
(server-side apply), consistent snapshots for paged lists (a continued page reads current state).
The store is general (any GVR can be added with `add_resource`) so that Lease and other kinds can
be served later.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str  # the URL path segment, e.g. "httproutes"
    kind: str
    namespaced: bool = True
    status_subresource: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvr(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    @property
    def storage(self) -> tuple[str, str]:
        """Where its objects are kept: one stored object is served under every version of a
        resource (as a CRD with several `served` versions is), each read with its own apiVersion."""
        return (self.group, self.plural)


GATEWAY = "gateway.networking.k8s.io"
MESHGATE = "meshgate.io"

# What a cluster with Gateway API and meshgate's CRDs installed serves (and a few core kinds).
DEFAULT_RESOURCES = [
    ResourceType("", "v1", "services", "Service"),
    ResourceType("", "v1", "secrets", "Secret", status_subresource=False),
    ResourceType("", "v1", "configmaps", "ConfigMap", status_subresource=False),
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", status_subresource=False),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", status_subresource=False),
    ResourceType(GATEWAY, "v1", "gatewayclasses", "GatewayClass", namespaced=False),
    ResourceType(GATEWAY, "v1", "gateways", "Gateway"),
    ResourceType(GATEWAY, "v1", "httproutes", "HTTPRoute"),
    ResourceType(GATEWAY, "v1", "grpcroutes", "GRPCRoute"),
    # Gateway API v1.2+ serves ReferenceGrant as v1 and v1beta1 (the same objects under both).
    ResourceType(GATEWAY, "v1", "referencegrants", "ReferenceGrant", status_subresource=False),
    ResourceType(GATEWAY, "v1beta1", "referencegrants", "ReferenceGrant", status_subresource=False),
    ResourceType(MESHGATE, "v1alpha1", "backends", "Backend"),
    ResourceType(MESHGATE, "v1alpha1", "httproutes", "HTTPRoute"),
    ResourceType(MESHGATE, "v1alpha1", "clienttrafficpolicies", "ClientTrafficPolicy"),
    ResourceType(MESHGATE, "v1alpha1", "backendtrafficpolicies", "BackendTrafficPolicy"),
    ResourceType(MESHGATE, "v1alpha1", "securitypolicies", "SecurityPolicy"),
    ResourceType(MESHGATE, "v1alpha1", "grpcjsontranscoders", "GRPCJSONTranscoder"),
    ResourceType(MESHGATE, "v1alpha1", "envoyproxies", "EnvoyProxy"),
]


class ApiError(Exception):
    """A request the server refuses, answered with a `Status` object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    """The `Status` kind the API server answers errors with (also inside a watch ERROR event)."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@dataclass
class _Watcher:
    rt: ResourceType
    namespace: str | None
    labels: list
    fields: list
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class FakeKube:
    """The store and the HTTP server. Methods that change objects (`create`, `update`, `patch`,
    `delete`) are the same code the HTTP handlers run, so a test may change the cluster directly
    (as `kubectl` would) and the client sees the same watch events."""

    def __init__(self, resources: list[ResourceType] | None = None, *, history: int = 1000,
                 bookmark_interval: float = 1.0, token: str | None = None, ssl_context: Any = None) -> None:
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}  # by ResourceType.storage
        for rt in resources or DEFAULT_RESOURCES:
            self.add_resource(rt)
        self.revision = 1  # etcd's revision: every write bumps it; objects carry it as resourceVersion
        self.history: deque[tuple[int, tuple, str, dict]] = deque(maxlen=history)  # (rv, storage, type, object)
        self.oldest = 1  # watches from before this revision get 410 Gone
        self.bookmark_interval = bookmark_interval
        self.token = token  # the bearer token accepted (None: any); a test may change it (rotation)
        self.ssl_context = ssl_context
        self.tokens_seen: list[str | None] = []  # the Authorization header of each request
        self.watchers: list[_Watcher] = []
        self.requests: list[tuple[str, str]] = []  # (method, path?query), for tests to look at
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- the store -----------------------------------------------------------------------------

    def add_resource(self, rt: ResourceType) -> None:
        self.types[rt.gvr] = rt
        self.objects.setdefault(rt.storage, {})

    def remove_resource(self, rt: ResourceType) -> None:
        """Stop serving one version (a CRD version set to `served: false`): its requests get 404,
        and its open watches end. Objects stay, served by the resource's other versions."""
        del self.types[rt.gvr]
        for w in [w for w in self.watchers if w.rt == rt]:
            w.queue.put_nowait(None)

    def type_of(self, api_version: str, kind: str) -> ResourceType:
        for rt in self.types.values():
            if rt.api_version == api_version and rt.kind == kind:
                return rt
        raise KeyError(f"{api_version} {kind} is not served")

    def _bump(self) -> str:
        self.revision += 1
        return str(self.revision)

    def _record(self, rt: ResourceType, event: str, obj: dict) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self.history.append((rv, rt.storage, event, copy.deepcopy(obj)))
        if len(self.history) == self.history.maxlen:
            self.oldest = self.history[0][0]
        for w in self.watchers:
            if w.rt.storage == rt.storage and _matches(obj, w.namespace, w.labels, w.fields):
                w.queue.put_nowait((event, _as_version(w.rt, obj)))

    def compact(self) -> None:
        """Forget the watch history (as etcd compaction does): every older watch gets 410 Gone."""
        self.history.clear()
        self.oldest = self.revision + 1

    def create(self, obj: dict, rt: ResourceType | None = None) -> dict:
        rt = rt or self.type_of(obj["apiVersion"], obj["kind"])
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if not key[1]:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if key in self.objects[rt.storage]:
            raise ApiError(409, "AlreadyExists", f'{rt.plural}.{rt.group} "{key[1]}" already exists')
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta.update(uid=str(uuid.uuid4()), generation=1, resourceVersion=self._bump(),
                    creationTimestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if rt.status_subresource:
            obj.pop("status", None)  # set through the status subresource only
        self.objects[rt.storage][key] = obj
        self._record(rt, "ADDED", obj)
        return copy.deepcopy(obj)

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict:
        try:
            return self.objects[rt.storage][(namespace if rt.namespaced else "", name)]
        except KeyError:
            raise ApiError(404, "NotFound", f'{rt.plural}.{rt.group} "{name}" not found') from None

    def update(self, obj: dict, rt: ResourceType | None = None, *, subresource: str | None = None,
               check_version: bool = True) -> dict:
        """Replace an object (PUT). Only `status` changes on the status subresource, and the main
        resource never changes `status` when the kind has that subresource."""
        rt = rt or self.type_of(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata", {})
        current = self.get(rt, meta.get("namespace", "default") if rt.namespaced else "", meta.get("name", ""))
        wanted = meta.get("resourceVersion")
        if check_version and wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.plural}.{rt.group} "{meta["name"]}": '
                           "the object has been modified; please apply your changes to the latest version and try again")
        new = copy.deepcopy(current)
        if subresource == "status":
            new["status"] = copy.deepcopy(obj.get("status"))
        else:
            keep = {k: current["metadata"][k] for k in ("uid", "creationTimestamp", "generation", "namespace", "name")
                    if k in current["metadata"]}
            # Kept in the version it was stored in, whichever version the write came through.
            new = {**copy.deepcopy(obj), "apiVersion": current["apiVersion"], "kind": rt.kind}
            new["metadata"] = {**copy.deepcopy(obj.get("metadata", {})), **keep}
            if rt.status_subresource:
                new.pop("status", None)
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
            if _spec_of(new) != _spec_of(current):
                new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        if new == current:
            return copy.deepcopy(current)  # a no-op write changes nothing, not even resourceVersion
        new["metadata"]["resourceVersion"] = self._bump()
        self.objects[rt.storage][(current["metadata"].get("namespace", ""), current["metadata"]["name"])] = new
        self._record(rt, "MODIFIED", new)
        return copy.deepcopy(new)

    def patch(self, rt: ResourceType, namespace: str, name: str, patch: Any, content_type: str,
              subresource: str | None = None) -> dict:
        current = copy.deepcopy(self.get(rt, namespace, name))
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list) or not all(isinstance(op, dict) for op in patch):
                raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            patched = _json_patch(current, patch)
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            patched = _merge_patch(current, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")
        # A patch that names a resourceVersion is a precondition (optimistic concurrency: 409 if
        # the object moved since the client read it), as on a real API server; otherwise none.
        wanted = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
        patched.setdefault("metadata", {})["resourceVersion"] = wanted or current["metadata"]["resourceVersion"]
        return self.update(patched, rt, subresource=subresource, check_version=bool(wanted))

    def delete(self, rt: ResourceType, namespace: str, name: str) -> dict:
        obj = self.get(rt, namespace, name)
        del self.objects[rt.storage][(obj["metadata"].get("namespace", ""), name)]
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._bump()  # a delete is a write too
        self._record(rt, "DELETED", obj)
        return obj

    def apply(self, obj: dict) -> dict:
        """Create or replace (what `kubectl apply` amounts to here)."""
        rt = self.type_of(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata", {})
        key = (meta.get("namespace", "default") if rt.namespaced else "", meta["name"])
        if key in self.objects[rt.storage]:
            return self.update(obj, rt, check_version=False)
        return self.create(obj, rt)

    def remove(self, api_version: str, kind: str, name: str, namespace: str = "default") -> dict:
        rt = self.type_of(api_version, kind)
        return self.delete(rt, namespace if rt.namespaced else "", name)

    def read(self, api_version: str, kind: str, name: str, namespace: str = "default") -> dict:
        rt = self.type_of(api_version, kind)
        return copy.deepcopy(self.get(rt, namespace if rt.namespaced else "", name))

    # -- HTTP ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api", self._api_versions)
        app.router.add_get("/apis", self._api_groups)
        app.router.add_get("/api/{version}", self._resource_list)
        app.router.add_get("/apis/{group}/{version}", self._resource_list)
        for prefix in ("/api/{version}", "/apis/{group}/{version}"):
            # Namespaced paths first: `/apis/G/V/namespaces/NS/PLURAL` must not be read as the
            # cluster-scoped `/apis/G/V/PLURAL/NAME/SUBRESOURCE`.
            for ns in ("/namespaces/{namespace}", ""):
                base = f"{prefix}{ns}/{{plural}}"
                app.router.add_route("*", base, self._collection)
                app.router.add_route("*", base + "/{name}", self._item)
                app.router.add_route("*", base + "/{name}/{subresource}", self._item)
        return app

    async def start(self, port: int = 0) -> FakeKube:
        """Listen on 127.0.0.1 (`port` 0: any free port; a restart passes the old one), over TLS
        when the server was given an `ssl_context` (as a real API server always is)."""
        self._runner = web.AppRunner(self.app(), handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port, reuse_address=True, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        """Stop listening and drop every open connection (watches end mid-stream, as when an API
        server restarts). The objects stay, as they would in etcd."""
        for w in list(self.watchers):
            w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def kubeconfig(self) -> str:
        """A kubeconfig (YAML) whose current context points at this server."""
        user = {"token": self.token} if self.token else {}
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        })

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        self.tokens_seen.append(request.headers.get("Authorization"))
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status_response(401, "Unauthorized", "Unauthorized")
        try:
            return await handler(request)
        except ApiError as exc:
            return _status_response(exc.code, exc.reason, exc.message)

    async def _api_versions(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]})

    async def _api_groups(self, request: web.Request) -> web.Response:
        groups: dict[str, list[str]] = {}
        for rt in self.types.values():
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
             "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]})

    async def _resource_list(self, request: web.Request) -> web.Response:
        group, version = request.match_info.get("group", ""), request.match_info["version"]
        served = [rt for rt in self.types.values() if rt.group == group and rt.version == version]
        if not served:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        resources = []
        for rt in served:
            resources.append({"name": rt.plural, "singularName": rt.kind.lower(), "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": verbs})
            if rt.status_subresource:
                resources.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                                  "kind": rt.kind, "verbs": ["get", "patch", "update"]})
        return web.json_response({"kind": "APIResourceList", "apiVersion": "v1",
                                  "groupVersion": f"{group}/{version}" if group else version, "resources": resources})

    def _type(self, request: web.Request) -> ResourceType:
        m = request.match_info
        rt = self.types.get((m.get("group", ""), m["version"], m["plural"]))
        if rt is None or (not rt.namespaced and "namespace" in m):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return rt

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        rt = self._type(request)
        namespace = request.match_info.get("namespace")
        if request.method == "GET":
            q = request.query
            labels = _parse_label_selector(q.get("labelSelector", ""))
            fields = _parse_field_selector(q.get("fieldSelector", ""))
            if _flag(q.get("watch")):
                return await self._watch(request, rt, namespace, labels, fields)
            return web.json_response(self._list(rt, namespace, labels, fields, q))
        if request.method == "POST":
            body = await request.json()
            if namespace:
                body.setdefault("metadata", {})["namespace"] = namespace
            return web.json_response(self.create(body, rt), status=201)
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def _list(self, rt: ResourceType, namespace: str | None, labels: list, fields: list, q: Any) -> dict:
        revision = self.revision
        start_after = None
        token = q.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token))
                revision, start_after = state["rv"], tuple(state["after"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "continue key is not valid") from None
            if revision < self.oldest:
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a consistent "
                               "list result. You can start a new list without the continue parameter.")
        items = sorted((k, o) for k, o in self.objects[rt.storage].items() if _matches(o, namespace, labels, fields))
        if start_after is not None:
            items = [(k, o) for k, o in items if k > start_after]
        limit = int(q.get("limit", "0") or 0)
        meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if limit and len(items) > limit:
            items = items[:limit]
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"rv": revision, "after": list(items[-1][0])}).encode()).decode()
            meta["remainingItemCount"] = len(self.objects[rt.storage]) - limit
        out = []
        for _, obj in items:
            obj = _as_version(rt, obj)
            if not rt.group or rt.group in ("discovery.k8s.io", "coordination.k8s.io"):
                # Built-in kinds' list items carry no apiVersion/kind (CRDs' do); clients add them.
                obj.pop("apiVersion", None)
                obj.pop("kind", None)
            out.append(obj)
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": out}

    async def _watch(self, request: web.Request, rt: ResourceType, namespace: str | None,
                     labels: list, fields: list) -> web.StreamResponse:
        q = request.query
        bookmarks = _flag(q.get("allowWatchBookmarks"))
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        rv_text = q.get("resourceVersion", "")
        watcher = _Watcher(rt, namespace, labels, fields)
        # Events after `since` are sent; "" or "0": the current objects first (as ADDED), then changes.
        backlog: list[tuple[str, dict]] = []
        if rv_text in ("", "0"):
            since = self.revision
            backlog = [("ADDED", _as_version(rt, o)) for _, o in sorted(self.objects[rt.storage].items())
                       if _matches(o, namespace, labels, fields)]
        else:
            try:
                since = int(rv_text)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resource version {rv_text!r}") from None
            if since < self.oldest - 1:
                backlog = [("ERROR", status_object(410, "Expired", f"too old resource version: {since} ({self.oldest})"))]
            else:
                backlog = [(e, _as_version(rt, o)) for v, storage, e, o in self.history
                           if storage == rt.storage and v > since and _matches(o, namespace, labels, fields)]
        # Registered before the first await, so no event between the backlog and the stream is lost.
        self.watchers.append(watcher)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            await resp.prepare(request)
            for event, obj in backlog:
                await resp.write(_event_line(event, obj))
                if event == "ERROR":
                    return resp
            while True:
                wait = self.bookmark_interval if bookmarks else 3600.0
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        break
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), wait)
                except asyncio.TimeoutError:
                    if bookmarks and (deadline is None or loop.time() < deadline):
                        await resp.write(_event_line("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version,
                                                                 "metadata": {"resourceVersion": str(self.revision)}}))
                    continue
                if item is None:  # the server stops
                    break
                await resp.write(_event_line(*item))
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.remove(watcher)
        return resp

    async def _item(self, request: web.Request) -> web.StreamResponse:
        rt = self._type(request)
        namespace = request.match_info.get("namespace", "") if rt.namespaced else ""
        name = request.match_info["name"]
        subresource = request.match_info.get("subresource")
        if subresource is not None and (subresource != "status" or not rt.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if request.method == "GET":
            return web.json_response(_as_version(rt, self.get(rt, namespace, name)))
        if request.method == "PUT":
            body = await request.json()
            meta = body.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            meta["name"] = name
            if rt.namespaced:
                meta["namespace"] = namespace
            return web.json_response(_as_version(rt, self.update(body, rt, subresource=subresource)))
        if request.method == "PATCH":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            patched = self.patch(rt, namespace, name, await request.json(), content_type, subresource)
            return web.json_response(_as_version(rt, patched))
        if request.method == "DELETE" and subresource is None:
            self.delete(rt, namespace, name)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")


# -- helpers ---------------------------------------------------------------------------------


def _as_version(rt: ResourceType, obj: dict) -> dict:
    """A copy of a stored object as version `rt.version` serves it (only apiVersion differs here:
    the versions meshgate reads have the same schema)."""
    obj = copy.deepcopy(obj)
    obj["apiVersion"] = rt.api_version
    return obj


def _flag(value: str | None) -> bool:
    """A boolean query parameter, parsed as Go's strconv.ParseBool does (clients send `True` too)."""
    return (value or "").lower() in ("1", "t", "true")


def _status_response(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_object(code, reason, message), status=code)


def _event_line(event: str, obj: dict) -> bytes:
    return json.dumps({"type": event, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _spec_of(obj: dict) -> dict:
    """What `metadata.generation` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _merge_patch(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _json_patch(doc: Any, ops: list) -> Any:
    """JSON patch (RFC 6902): add, remove, replace, test (what clients send)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1] if parts else None
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op["value"]:
                raise ApiError(422, "Invalid", f"test operation failed at {op['path']}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"replace operation does not apply: {op['path']} is missing")
                parent[last] = op["value"]
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            elif parent.pop(last, None) is None:
                raise ApiError(422, "Invalid", f"remove operation does not apply: {op['path']} is missing")
        else:
            raise ApiError(422, "Invalid", f"unsupported JSON patch operation {kind!r}")
    return doc


_REQ = re.compile(r"^\s*(!)?\s*([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(text: str) -> list[str]:
    """Requirements are comma-separated, but `in (a,b)` has commas of its own."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def _parse_label_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """Kubernetes label selector: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`."""
    out = []
    for part in _split_selector(text):
        m = _REQ.match(part)
        if m is None:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, op, value, set_op, values = m.groups()
        if neg:
            out.append(("!", key, set()))
        elif op:
            out.append(("!=" if op == "!=" else "=", key, {value}))
        elif set_op:
            out.append((set_op, key, {v.strip() for v in values.split(",") if v.strip()}))
        else:
            out.append(("exists", key, set()))
    return out


def _parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    """Field selector: `path=value`, `path==value`, `path!=value` (e.g. `type=kubernetes.io/tls`)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.match(r"^([A-Za-z0-9.]+)\s*(==|=|!=)\s*(.*)$", part)
        if m is None:
            raise ApiError(400, "BadRequest", f"invalid field selector: {part!r}")
        out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return out


def _field(obj: dict, path: str) -> str:
    value: Any = obj
    for p in path.split("."):
        value = value.get(p) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _matches(obj: dict, namespace: str | None, labels: list, fields: list) -> bool:
    meta = obj.get("metadata", {})
    if namespace and meta.get("namespace") != namespace:
        return False
    have = meta.get("labels") or {}
    for op, key, values in labels:
        if op == "exists" and key not in have:
            return False
        if op == "!" and key in have:
            return False
        if op == "=" and have.get(key) not in values:
            return False
        if op == "!=" and have.get(key) in values:
            return False
        if op == "in" and have.get(key) not in values:
            return False
        if op == "notin" and have.get(key) in values:
            return False
    for path, op, value in fields:
        if (_field(obj, path) == value) != (op == "="):
            return False
    return True
