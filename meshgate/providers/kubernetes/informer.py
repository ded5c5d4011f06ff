"""An informer: a local copy of one kind of Kubernetes object, kept current by list + watch.

This is what client-go's reflector does, on top of `kubernetes-asyncio`:

1. **List** every object (in pages of `PAGE_SIZE`) and remember the list's `resourceVersion`, the
   API server's position in its change history at the moment of the list.
2. **Watch** from that resourceVersion: a long HTTP response streaming ADDED / MODIFIED / DELETED
   events, each carrying the object's new resourceVersion, and BOOKMARK events that only move the
   position forward (so a quiet kind doesn't fall behind the server's kept history).
3. The server ends a watch after `timeoutSeconds`; watch again from the last position seen.
4. **410 Gone**: the position is older than the history the server keeps (etcd compaction, or a
   restarted API server). Changes may have been missed: list again, and report what differs.
5. Any other error (connection refused, 5xx, 403 missing RBAC, 404 CRD not installed): wait with
   exponential back-off (jittered, capped at `max_backoff`) and list again. Every request has a
   client-side time limit, so a server that stops answering can't hang the loop.
6. A kind read in two versions (ReferenceGrant `v1` and `v1beta1`: a cluster serves either or
   both, depending on the Gateway API release installed): a 404 for one version while another
   version (`other_versions`) is served is no error. This informer then holds nothing, counts as
   listed, and asks again every `max_backoff` (the version may be installed later).

Each change calls `on_change(key)` on the event loop; `objects` is the current copy.

With `keep` (a predicate on (namespace, name)), the copy is bounded: objects it refuses are not
held (only their keys, in `dropped`), so a kind the cluster has thousands of (ConfigMaps) costs
only the few meshgate uses. Whoever widens `keep` to a key in `dropped` must list again
(`Informer.run` afresh), since the object's content was never kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger("meshgate.providers.kubernetes")

__all__ = ["Informer", "WatchedKind"]

PAGE_SIZE = 500
ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


@dataclass(frozen=True)
class WatchedKind:
    """One kind the provider watches, and how to ask for it."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    label_selector: str | None = None
    field_selector: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def name(self) -> str:
        """How logs name it: `httproutes.gateway.networking.k8s.io/v1`, `services/v1`."""
        selector = f" ({self.field_selector})" if self.field_selector else ""
        return f"{self.plural}{'.' + self.group if self.group else ''}/{self.version}{selector}"


class _Gone(Exception):
    """410: the watch's resourceVersion is too old; list again."""


class Informer:
    """List + watch of one kind (see the module doc). `run` loops until cancelled."""

    def __init__(self, kind: WatchedKind, list_function: Callable[..., Any], on_change: Callable[[ObjectKey], None], *,
                 watch_timeout: int = 300, request_timeout: float = 30.0, min_backoff: float = 0.5,
                 max_backoff: float = 30.0, keep: Callable[[ObjectKey], bool] | None = None) -> None:
        self.kind = kind
        self.keep = keep
        self.dropped: set[ObjectKey] = set()  # keys of objects `keep` refused (their content not held)
        self.list_function = list_function
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.objects: dict[ObjectKey, dict] = {}
        self.synced = asyncio.Event()  # set once the first list is in
        self.resource_version: str | None = None
        self.last_error: str | None = None
        self.lists = 0  # how many lists were made (relists after 410 and errors included)
        # Whether the API server serves this kind's version: None until the first list answers.
        self.served: bool | None = None
        self.answered = asyncio.Event()  # set once a list was answered (served or 404)
        # Informers of the same kind in other versions (step 6 of the module doc), set by the provider.
        self.other_versions: list[Informer] = []

    def _selectors(self) -> dict[str, str]:
        out = {}
        if self.kind.label_selector:
            out["label_selector"] = self.kind.label_selector
        if self.kind.field_selector:
            out["field_selector"] = self.kind.field_selector
        return out

    async def run(self) -> None:
        backoff = self.min_backoff
        while True:
            try:
                await self._list()
                backoff = self.min_backoff
                while True:
                    await self._watch()
            except asyncio.CancelledError:
                raise
            except _Gone:
                log.info("watch expired, listing again", extra={"kind": self.kind.name})
                continue
            except ApiException as exc:
                if exc.status != 404 or not self.other_versions or not await self._served_elsewhere():
                    await self._back_off(exc, backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                self._not_served()
                await asyncio.sleep(self.max_backoff)
            except Exception as exc:  # noqa: BLE001 - anything else: back off and list again
                await self._back_off(exc, backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _back_off(self, exc: BaseException, backoff: float) -> None:
        self.last_error = _describe(exc)
        log.warning("cannot list/watch; retrying", extra={
            "kind": self.kind.name, "error": self.last_error, "retry_in_s": round(backoff, 2)})
        await asyncio.sleep(backoff * random.uniform(0.8, 1.2))

    async def _served_elsewhere(self) -> bool:
        """Whether another version of this kind is served: waits (bounded) for their first answer,
        so a 404 at start isn't reported as an error only because the other list was slower."""
        pending = [i.answered.wait() for i in self.other_versions if not i.answered.is_set()]
        if pending:
            try:
                await asyncio.wait_for(asyncio.gather(*pending), self.request_timeout)
            except asyncio.TimeoutError:
                pass
        return any(i.served for i in self.other_versions)

    def _not_served(self) -> None:
        """This version is not served (404) but another is: hold nothing, and count as listed."""
        if self.objects or self.resource_version is not None or not self.synced.is_set():  # once per outage
            log.info("version not served by the API server; its other version is read", extra={
                "kind": self.kind.name, "read": [i.kind.name for i in self.other_versions if i.served]})
        self.served = False
        self.answered.set()
        self.last_error = None
        previous, self.objects, self.resource_version = self.objects, {}, None
        self.synced.set()
        for key in previous:
            self.on_change(key)

    async def _list(self) -> None:
        objects: dict[ObjectKey, dict] = {}
        dropped_all: set[ObjectKey] = set()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE, **self._selectors()}
            if token:
                kwargs["_continue"] = token
            response = await self.list_function(_preload_content=False, _request_timeout=self.request_timeout, **kwargs)
            try:
                body = await response.read()
                if response.status == 410:  # a `continue` token too old: start the list again
                    raise _Gone()
                if response.status == 404:
                    self.served = False
                    self.answered.set()
                if not 200 <= response.status <= 299:
                    raise ApiException(status=response.status, reason=_status_message(body, response.reason))
                data = json.loads(body)
            finally:
                response.release()
            for item in data.get("items") or ():
                # Lists of built-in kinds leave apiVersion and kind out of their items.
                item["apiVersion"], item["kind"] = self.kind.api_version, self.kind.kind
                objects[_key(item)] = item
            if self.keep is not None:
                dropped = {k for k in objects if not self.keep(k)}
                for k in dropped:
                    del objects[k]
                dropped_all |= dropped
            token = (data.get("metadata") or {}).get("continue")
            if not token:
                break
        self.lists += 1
        self.served = True
        self.answered.set()
        self.resource_version = str(data["metadata"]["resourceVersion"])
        if self.keep is not None:
            self.dropped = dropped_all
        previous, self.objects = self.objects, objects
        self.last_error = None
        self.synced.set()
        for key in previous.keys() | objects.keys():
            if previous.get(key) != objects.get(key):
                self.on_change(key)

    async def _watch(self) -> None:
        """One watch request, until the server ends it; raises `_Gone` on 410."""
        started, events = time.monotonic(), 0
        stream = watch.Watch(return_type="object")  # raw dicts: the provider builds documents
        try:
            async with stream.stream(self.list_function, resource_version=self.resource_version,
                                     allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout,
                                     # the server ends it after timeout_seconds; this bounds a silent one
                                     _request_timeout=self.watch_timeout + self.request_timeout,
                                     **self._selectors()) as events_stream:
                async for event in events_stream:
                    events += 1
                    kind, obj = event["type"], event["raw_object"]
                    self.resource_version = obj["metadata"]["resourceVersion"]
                    if kind == "BOOKMARK":
                        continue
                    obj["apiVersion"], obj["kind"] = self.kind.api_version, self.kind.kind
                    key = _key(obj)
                    if kind == "DELETED":
                        self.dropped.discard(key)
                        if self.objects.pop(key, None) is not None:
                            self.on_change(key)
                    elif self.keep is not None and not self.keep(key):
                        self.dropped.add(key)
                        if self.objects.pop(key, None) is not None:
                            self.on_change(key)
                    elif kind in ("ADDED", "MODIFIED"):
                        self.dropped.discard(key)
                        if self.objects.get(key) != obj:
                            self.objects[key] = obj
                            self.on_change(key)
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone() from None
            raise
        except asyncio.TimeoutError:
            return  # the client-side limit: watch again from where we are
        if events == 0 and time.monotonic() - started < 1.0:
            # A server that ends watches at once would make this a busy loop: treat it as an error.
            raise ConnectionError("the watch ended at once, with no event")


def _key(obj: dict) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _status_message(body: bytes, default: str | None) -> str:
    try:
        return json.loads(body).get("message") or default or ""
    except (ValueError, AttributeError):
        return default or ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        hint = {401: " (credentials refused)", 403: " (RBAC: the service account may not list/watch this)",
                404: " (not served: is the CRD installed?)"}.get(exc.status or 0, "")
        return f"HTTP {exc.status} {exc.reason}{hint}".strip()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
