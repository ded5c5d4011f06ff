"""Status written back to the cluster: what `kubectl get gateway,httproute -o yaml` shows.

Gateway API makes the controller report its view of every object it owns in the object's
`status`, written through the **status subresource** (`.../NAME/status`: a write there changes
only `status`, and a write to the object itself never changes `status`):

- GatewayClass (ours: `spec.controllerName` is meshgate's): `conditions` `Accepted`;
- Gateway: `conditions` `Accepted`/`Programmed`, `listeners[]` (`attachedRoutes`, `supportedKinds`,
  conditions per listener) and `addresses` (only those configured: meshgate does not create the
  Service in front of its Envoys, so it cannot discover one honestly);
- HTTPRoute/GRPCRoute: `parents[]`, one entry per parentRef to one of *our* Gateways, each with
  `controllerName` and `Accepted`/`ResolvedRefs`; entries written by other controllers (for their
  Gateways) are kept untouched, as several implementations may share a route;
- policies: `ancestors[]` (Gateway API's PolicyAncestorStatus, as Envoy Gateway writes it): the
  Gateway each target leads to (the Gateway itself, or the parents of a targeted route), at most 16;
- meshgate's Backend and GRPCJSONTranscoder: `conditions`.

Every condition carries `observedGeneration`: the `metadata.generation` the API server gave the
object version meshgate judged (generation grows with every spec change, not with status writes),
so a reader can tell a stale status from a current one. `lastTransitionTime` moves only when a
condition's status flips.

Writes are JSON merge patches on the status subresource carrying the `resourceVersion` we read
(optimistic concurrency: the API server answers 409 Conflict if the object moved meanwhile; we
read it again and retry). An object whose status is already what we want is not written, so a
steady state costs no requests. Writes run in their own task, batched after changes and
rate-limited, and never hold up a reload or an xDS push.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from meshgate.gatewayapi.status import Condition, ObjectStatus
from meshgate.providers.kubernetes.informer import Informer, WatchedKind, _describe
from meshgate.providers.kubernetes.provider import CONTROLLER_NAME, GATEWAY_API, MESHGATE

log = logging.getLogger("meshgate.providers.kubernetes.status")

__all__ = ["StatusWriter", "desired_status"]

ROUTES = {(GATEWAY_API, "HTTPRoute"), (GATEWAY_API, "GRPCRoute"), (MESHGATE, "HTTPRoute")}
POLICIES = {(MESHGATE, "ClientTrafficPolicy"), (MESHGATE, "BackendTrafficPolicy"), (MESHGATE, "SecurityPolicy")}
CONDITIONS_ONLY = {(MESHGATE, "Backend"), (MESHGATE, "GRPCJSONTranscoder")}
WRITTEN = ROUTES | POLICIES | CONDITIONS_ONLY | {(GATEWAY_API, "Gateway"), (GATEWAY_API, "GatewayClass")}

MAX_ANCESTORS = 16  # Gateway API's CRD limit on status.ancestors
MAX_PARENTS = 32  # ... and on status.parents
MAX_MESSAGE = 32768  # metav1.Condition message limit
POLICY_REASONS = {"Accepted", "Conflicted", "Invalid", "TargetNotFound", "Pending"}

Key = tuple[str, str, str, str]  # (group, kind, namespace, name), as the translation's


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(c: Condition, generation: int, before: list[dict], now: str) -> dict[str, Any]:
    """A metav1.Condition; keeps the previous lastTransitionTime while the status is the same."""
    previous = next((p for p in before if p.get("type") == c.type), None)
    moved = previous is None or previous.get("status") != c.status or not previous.get("lastTransitionTime")
    return {"type": c.type, "status": c.status, "reason": c.reason or c.type,
            "message": (c.message or "")[:MAX_MESSAGE], "observedGeneration": generation,
            "lastTransitionTime": now if moved else previous["lastTransitionTime"]}


def _conditions(conds: Iterable[Condition], generation: int, before: list[dict] | None, now: str) -> list[dict]:
    return [_condition(c, generation, before or [], now) for c in conds]


def _without_times(value: Any) -> Any:
    """A status to compare: lastTransitionTime alone moving is no change (Envoy Gateway's rule)."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def same_status(a: Any, b: Any) -> bool:
    return _without_times(a or {}) == _without_times(b or {})


def _problem(c: Condition) -> bool:
    return (c.type == "Conflicted") == (c.status == "True") if c.type == "Conflicted" else c.status == "False"


class _Cluster:
    """What the informers hold, by (group, kind, namespace, name), for building statuses."""

    def __init__(self, informers: Iterable[Informer], controller_name: str) -> None:
        self.kinds: dict[tuple[str, str], tuple[WatchedKind, Informer]] = {}
        for informer in informers:
            k = (informer.kind.group, informer.kind.kind)
            if k in WRITTEN:
                self.kinds[k] = (informer.kind, informer)
        classes = self.kinds.get((GATEWAY_API, "GatewayClass"))
        self.our_classes = {name for (_, name), gc in (classes[1].objects.items() if classes else ())
                            if (gc.get("spec") or {}).get("controllerName") == controller_name}

    def get(self, group: str, kind: str, namespace: str, name: str) -> dict | None:
        entry = self.kinds.get((group, kind))
        return entry[1].objects.get((namespace, name)) if entry else None

    def our_gateway(self, namespace: str, name: str) -> bool:
        gw = self.get(GATEWAY_API, "Gateway", namespace, name)
        return gw is not None and (gw.get("spec") or {}).get("gatewayClassName") in self.our_classes

    def our_parents(self, route: dict) -> list[tuple[int, dict, str, str]]:
        """(index, parentRef as written, namespace, name) of the parentRefs to our Gateways."""
        ns = route["metadata"].get("namespace", "")
        out = []
        for i, ref in enumerate((route.get("spec") or {}).get("parentRefs") or ()):
            if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
                continue
            if ref.get("group", GATEWAY_API) != GATEWAY_API or ref.get("kind", "Gateway") != "Gateway":
                continue
            ref_ns = ref.get("namespace") or ns
            if self.our_gateway(ref_ns, ref["name"]):
                out.append((i, ref, ref_ns, ref["name"]))
        return out


def _generation(obj: dict) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 1)


def desired_status(group: str, kind: str, obj: dict, status: ObjectStatus | None, cluster: _Cluster,
                   controller_name: str, addresses: list[dict], now: str) -> dict | None:
    """The `status` meshgate wants `obj` to have (merged with other controllers' entries), or None
    when meshgate has nothing to say about it."""
    gen, current = _generation(obj), obj.get("status") or {}
    if kind == "GatewayClass":
        if obj["metadata"]["name"] not in cluster.our_classes:
            return None
        accepted = Condition("Accepted", "True", "Accepted", f"handled by {controller_name}")
        return {**current, "conditions": _conditions([accepted], gen, current.get("conditions"), now)}
    if status is None:
        return None  # not translated (not ours, or not loaded yet)
    if kind == "Gateway":
        return _gateway_status(obj, status, gen, current, addresses, now)
    if (group, kind) in ROUTES:
        return _route_status(obj, status, gen, current, cluster, controller_name, now)
    if (group, kind) in POLICIES:
        return _policy_status(obj, status, gen, current, cluster, controller_name, now)
    if (group, kind) in CONDITIONS_ONLY:
        return {**current, "conditions": _conditions(_gateway_api_conditions(status.conditions), gen,
                                                      current.get("conditions"), now)}
    return None


def _gateway_api_conditions(conds: list[Condition]) -> list[Condition]:
    """meshgate's object-level conditions with Gateway API reasons: an invalid object whose last
    valid version keeps serving is still `Programmed` (reason `Programmed`, the message says so)."""
    out = []
    for c in conds:
        if c.reason == "LastValidVersion":
            c = Condition(c.type, c.status, "Programmed", c.message)
        out.append(c)
    return out


def _supported_kinds(protocol: str) -> list[dict]:
    kinds = [{"group": GATEWAY_API, "kind": "HTTPRoute"}, {"group": GATEWAY_API, "kind": "GRPCRoute"},
             {"group": MESHGATE, "kind": "HTTPRoute"}]
    return kinds if protocol in ("HTTP", "HTTPS") else []


def _gateway_status(obj: dict, status: ObjectStatus, gen: int, current: dict, addresses: list[dict],
                    now: str) -> dict:
    conds = _gateway_api_conditions(status.conditions)
    if not any(c.type == "Programmed" for c in conds):
        conds.append(Condition("Programmed", "False", "Pending", "not programmed yet"))
    before_listeners = {l.get("name"): l for l in current.get("listeners") or () if isinstance(l, dict)}
    listeners = []
    invalid = any(c.type == "Accepted" and c.status == "False" for c in conds)
    for spec_listener in (obj.get("spec") or {}).get("listeners") or ():
        name = spec_listener.get("name") if isinstance(spec_listener, dict) else None
        if not isinstance(name, str) or (invalid and name not in status.listeners):
            continue
        lconds = list(status.listeners.get(name, []))
        for default in (Condition("Accepted", "True", "Accepted"), Condition("ResolvedRefs", "True", "ResolvedRefs")):
            if not any(c.type == default.type for c in lconds):
                lconds.append(default)
        if not any(c.type == "Programmed" for c in lconds):
            lconds.append(Condition("Programmed", "False", "Pending", "not programmed"))
        before = before_listeners.get(name, {}).get("conditions")
        listeners.append({"name": name, "supportedKinds": _supported_kinds(str(spec_listener.get("protocol", ""))),
                          "attachedRoutes": status.attached_routes.get(name, 0),
                          "conditions": _conditions(lconds, gen, before, now)})
    out = {k: v for k, v in current.items() if k not in ("addresses", "listeners")}
    out["conditions"] = _conditions(conds, gen, current.get("conditions"), now)
    if addresses:
        out["addresses"] = addresses
    if listeners:
        out["listeners"] = listeners
    return out


def _route_status(obj: dict, status: ObjectStatus, gen: int, current: dict, cluster: _Cluster,
                  controller_name: str, now: str) -> dict | None:
    """Per parentRef to one of our Gateways: `Accepted` (where it attached, or why not) and
    `ResolvedRefs` (its backendRefs), with Gateway API route reasons."""
    object_level = {c.type: c for c in status.conditions}
    accepted_override = None
    whole = object_level.get("Accepted")
    if whole is not None and whole.status == "False" and whole.reason != "NotAttached":
        # The route itself is invalid: Gateway API's reason for a value it can't accept.
        reason = "UnsupportedValue" if whole.reason == "Invalid" else whole.reason
        accepted_override = Condition("Accepted", "False", reason, whole.message)
    others = [c for c in current.get("parents") or () if isinstance(c, dict) and c.get("controllerName") != controller_name]
    mine_before = {_ref_id(p.get("parentRef") or {}, obj): p for p in current.get("parents") or ()
                   if isinstance(p, dict) and p.get("controllerName") == controller_name}
    parents = []
    for i, ref, _, _ in cluster.our_parents(obj)[:MAX_PARENTS - len(others)]:
        conds = [accepted_override or next((c for c in status.parents.get(i, []) if c.type == "Accepted"),
                                           Condition("Accepted", "False", "Pending", "not translated yet"))]
        if "ResolvedRefs" in object_level:
            conds.append(object_level["ResolvedRefs"])
        if "Conflicted" in object_level:  # meshgate's own: a match another route already serves
            conds.append(object_level["Conflicted"])
        echo = {k: ref[k] for k in ("group", "kind", "namespace", "name", "sectionName", "port") if k in ref}
        before = mine_before.get(_ref_id(echo, obj), {}).get("conditions")
        parents.append({"parentRef": echo, "controllerName": controller_name,
                        "conditions": _conditions(conds, gen, before, now)})
    if not parents and not mine_before:
        return None  # no parent of ours, now or before: another implementation's route
    return {**current, "parents": others + parents}


def _ref_id(ref: dict, obj: dict) -> tuple:
    ns = (obj.get("metadata") or {}).get("namespace", "")
    return (ref.get("group", GATEWAY_API), ref.get("kind", "Gateway"), ref.get("namespace") or ns, ref.get("name"),
            ref.get("sectionName"), ref.get("port"))


def _policy_status(obj: dict, status: ObjectStatus, gen: int, current: dict, cluster: _Cluster,
                   controller_name: str, now: str) -> dict:
    """`ancestors[]`: for each target, the Gateway it is under (Envoy Gateway's PolicyAncestorStatus)."""
    ns = obj["metadata"].get("namespace", "")
    ancestors: list[dict] = []
    for ref in (obj.get("spec") or {}).get("targetRefs") or ():
        if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
            continue
        group, kind = ref.get("group", ""), ref.get("kind", "")
        found = []
        if kind == "Gateway":
            found = [{"group": GATEWAY_API, "kind": "Gateway", "namespace": ns, "name": ref["name"],
                      **({"sectionName": ref["sectionName"]} if ref.get("sectionName") else {})}]
        elif (group, kind) in ROUTES:
            route = cluster.get(group, kind, ns, ref["name"])
            if route is not None:
                found = [{"group": GATEWAY_API, "kind": "Gateway", "namespace": gw_ns, "name": gw_name}
                         for _, _, gw_ns, gw_name in cluster.our_parents(route)]
        if not found:  # a Backend, or a target that doesn't exist: the target itself
            found = [{"group": group, "kind": kind, "namespace": ns, "name": ref["name"],
                      **({"sectionName": ref["sectionName"]} if ref.get("sectionName") else {})}]
        ancestors.extend(a for a in found if a not in ancestors)
    problem = next((c for c in status.conditions if _problem(c)), None)
    if problem is None:
        accepted = Condition("Accepted", "True", "Accepted", "Policy has been accepted.")
    else:
        reason = problem.reason if problem.reason in POLICY_REASONS else "Invalid"
        accepted = Condition("Accepted", "False", reason, problem.message)
    others = [a for a in current.get("ancestors") or () if isinstance(a, dict) and a.get("controllerName") != controller_name]
    mine_before = {repr(sorted((a.get("ancestorRef") or {}).items())): a for a in current.get("ancestors") or ()
                   if isinstance(a, dict) and a.get("controllerName") == controller_name}
    mine = []
    for ancestor in ancestors[:max(0, MAX_ANCESTORS - len(others))]:
        before = mine_before.get(repr(sorted(ancestor.items())), {}).get("conditions")
        mine.append({"ancestorRef": ancestor, "controllerName": controller_name,
                     "conditions": _conditions([accepted], gen, before, now)})
    return {**current, "ancestors": others + mine}


class StatusWriter:
    """Writes the statuses of the latest translation (see the module doc). `notify` from the
    control plane after each reload; `run` on the event loop until cancelled."""

    def __init__(self, provider: Any, *, controller_name: str = CONTROLLER_NAME, addresses: Iterable[str] = (),
                 batch_seconds: float = 0.2, writes_per_second: float = 20.0, max_conflicts: int = 5,
                 is_leader: Callable[[], bool] = lambda: True) -> None:
        self.provider = provider
        self.controller_name = controller_name
        self.addresses = [{"type": "IPAddress" if _is_ip(a) else "Hostname", "value": a} for a in addresses]
        self.batch_seconds = batch_seconds
        self.min_interval = 1.0 / writes_per_second if writes_per_second > 0 else 0.0
        self.max_conflicts = max_conflicts
        self.is_leader = is_leader
        self.translation: Any = None
        self.writes = 0  # status writes made (PATCH requests that changed an object)
        self.conflicts = 0
        self.last_error: str | None = None
        self._dirty = asyncio.Event()
        self._last_write = 0.0
        # key -> (resourceVersion we wrote against, resourceVersion our write produced, status):
        # until the watch brings our own write back, the informer still shows the old status.
        self._written: dict[tuple, tuple[str, str, dict]] = {}

    def notify(self, translation: Any = None) -> None:
        """A new translation (or a cluster change): write what differs, soon. Never blocks."""
        if translation is not None:
            self.translation = translation
        self._dirty.set()

    def object_changed(self, kind: WatchedKind, key: tuple[str, str]) -> None:
        """An informer saw a change: a user or another controller may have touched a status."""
        if (kind.group, kind.kind) in WRITTEN:
            self._dirty.set()

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.batch_seconds)  # changes arriving meanwhile are one pass
            self._dirty.clear()
            if not self.is_leader() or self.translation is None:
                continue
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug here must not end status writing
                log.exception("status pass failed")
                self.last_error = _describe(exc)

    def _wanted(self, cluster: _Cluster) -> list[tuple[WatchedKind, dict, dict]]:
        """(kind, object as the informer holds it, status wanted) for every object whose status differs."""
        book = self.translation.status.objects
        now = _now()
        out = []
        for (group, kind), (watched, informer) in cluster.kinds.items():
            for (namespace, name), obj in list(informer.objects.items()):
                key = (group, kind, namespace or "default", name)
                want = desired_status(group, kind, obj, book.get(key), cluster, self.controller_name,
                                      self.addresses, now)
                if want is None or same_status(want, obj.get("status")):
                    continue
                written = self._written.get((group, kind, namespace, name))
                rv = obj["metadata"].get("resourceVersion")
                if written is not None and rv in written[:2] and same_status(want, written[2]):
                    continue  # our write is on its way back through the watch
                out.append((watched, obj, want))
        return out

    async def sync(self) -> int:
        """One pass: write every status that differs. Returns how many were written."""
        cluster = _Cluster(self.provider.informers, self.controller_name)
        written = 0
        for watched, obj, want in self._wanted(cluster):
            if not self.is_leader():
                break  # lost the lease mid-pass: the new leader writes the rest
            if await self._write(watched, obj, want, cluster):
                written += 1
        return written

    async def _write(self, kind: WatchedKind, obj: dict, want: dict, cluster: _Cluster) -> bool:
        from kubernetes_asyncio.client import CustomObjectsApi
        from kubernetes_asyncio.client.exceptions import ApiException

        api = CustomObjectsApi(self.provider.api)
        meta = obj["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        for _ in range(self.max_conflicts):
            wait = self._last_write + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # rate limit: a big cluster's first pass is spread out
            self._last_write = time.monotonic()
            rv = obj["metadata"]["resourceVersion"]
            # A merge patch replaces lists whole; keys we no longer want are deleted with null.
            status_patch = {**{k: None for k in (obj.get("status") or {}) if k not in want}, **want}
            body = {"metadata": {"resourceVersion": rv}, "status": status_patch}
            args = (kind.group, kind.version, kind.plural, name, body)
            try:
                if namespace:
                    result = await api.patch_namespaced_custom_object_status(
                        kind.group, kind.version, namespace, kind.plural, name, body,
                        _content_type="application/merge-patch+json", _request_timeout=10)
                else:
                    result = await api.patch_cluster_custom_object_status(
                        *args, _content_type="application/merge-patch+json", _request_timeout=10)
            except ApiException as exc:
                if exc.status == 404:
                    return False  # deleted meanwhile
                if exc.status != 409:
                    self.last_error = f"cannot write status of {kind.kind} {namespace}/{name}: {_describe(exc)}"
                    log.warning("cannot write status", extra={"object": f"{kind.kind} {namespace}/{name}",
                                                               "error": _describe(exc)})
                    return False
                # 409 Conflict: the object changed since we read it. Read it again, rebuild.
                self.conflicts += 1
                try:
                    if namespace:
                        obj = await api.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural,
                                                                      name, _request_timeout=10)
                    else:
                        obj = await api.get_cluster_custom_object(kind.group, kind.version, kind.plural, name,
                                                                  _request_timeout=10)
                except ApiException as read_exc:
                    if read_exc.status == 404:
                        return False
                    raise
                book = self.translation.status.objects
                key = (kind.group, kind.kind, namespace or "default", name)
                fresh = desired_status(kind.group, kind.kind, obj, book.get(key), cluster, self.controller_name,
                                       self.addresses, _now())
                if fresh is None or same_status(fresh, obj.get("status")):
                    return False
                want = fresh
                continue
            except (OSError, asyncio.TimeoutError) as exc:
                self.last_error = f"cannot write status of {kind.kind} {namespace}/{name}: {_describe(exc)}"
                self._dirty.set()  # try again next pass
                return False
            self.writes += 1
            self.last_error = None
            self._written[(kind.group, kind.kind, namespace, name)] = (
                rv, result["metadata"]["resourceVersion"], copy.deepcopy(want))
            return True
        self.last_error = f"status of {kind.kind} {namespace}/{name}: still conflicting after {self.max_conflicts} tries"
        self._dirty.set()
        return False


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
