"""Incremental Gateway API translation: an edit to a few routes patches the last translation
instead of passing over every route again.

A full translation (`_Translator.run`) folds the routes, oldest first, into per-(port, hostname)
virtual hosts, deciding on the way which route owns a hostname (tenancy) and which of two
identical matches wins. `FoldBuilder` records, per route, what it added to that fold: the
hostnames it touched, the listeners it counted as attached to, the (port, host, match) triples it
claimed and the IR routes it put in virtual hosts. `patch` then redoes an edit by taking the
changed routes' old contributions out and putting their new ones in, and returns None (the
caller runs the full translation) whenever the result could differ from a full one:

- an object other than a route changed what routes depend on (the translator's `context`);
- a changed route, old or new, shares a (port, host, match) with another route, or a hostname
  with a route of another namespace (conflicts are decided by order, over all routes), or had a
  conflict;
- the config has BackendTrafficPolicies or SecurityPolicies (their statuses and effects are
  decided over all routes), a route sends to a Kubernetes Service or has failover (their clusters
  are built from all routes), or an object is defined twice.

`tests/test_incremental_translation.py` checks, over series of random edits, that a patched
translation equals a full one (IR, every status, every problem).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshgate import ir

if TYPE_CHECKING:
    from meshgate.gatewayapi.translator import Translation, TranslationMemo, _Translator

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
# Above this share of the routes changed, a full translation is as cheap as patching.
_MAX_CHANGED_SHARE = 8


class Contribution:
    """What one route added to the fold."""

    __slots__ = ("route", "hosts", "attached", "claims", "served")

    def __init__(self, route: Any) -> None:
        self.route = route
        self.hosts: list[tuple[int, str]] = []  # (port, hostname) it asked for, on Gateways with tenancy
        self.attached: list[tuple[tuple, str]] = []  # (Gateway key, listener name) per attachment served
        self.claims: list[tuple] = []  # (port, host, match identity) per match and host
        self.served: list[tuple[int, str, tuple]] = []  # (port, host, (precedence key, IR route)) in vhosts


class _Entries:
    """One virtual host's routes in precedence order, with their keys (for bisect)."""

    __slots__ = ("keys", "routes")

    def __init__(self, items: list[tuple[tuple, ir.Route]]) -> None:
        self.keys = [k for k, _ in items]
        self.routes = [r for _, r in items]

    def remove(self, k: tuple, route: ir.Route) -> bool:
        i = bisect_left(self.keys, k)
        if i < len(self.keys) and self.keys[i] == k and self.routes[i] is route:
            del self.keys[i], self.routes[i]
            return True
        return False

    def insert(self, k: tuple, route: ir.Route) -> bool:
        i = bisect_left(self.keys, k)
        if i < len(self.keys) and self.keys[i] == k:
            return False  # a tie: the full translation orders it by route order
        self.keys.insert(i, k)
        self.routes.insert(i, route)
        return True


class Fold:
    """The last full pass over the routes, kept up to date by `patch`."""

    def __init__(self) -> None:
        self.context: tuple = ()
        self.non_route: dict[tuple, tuple] = {}  # key -> (resource, doc), in the store's order
        self.routes: list = []  # precedence order (oldest, then namespace/name)
        self.order: list[tuple] = []  # their order keys
        self.contributions: dict[tuple, Contribution] = {}
        self.claims: dict[tuple, int] = {}  # (port, host, identity) -> matches claiming it
        self.host_ns: dict[tuple[int, str], dict[str, int]] = {}  # (port, host) -> namespace -> routes
        self.entries: dict[int, dict[str, _Entries]] = {}  # port -> host -> routes
        self.vhosts: dict[tuple[int, str], ir.VirtualHost] = {}  # the IR objects, reused while unchanged
        self.attached: dict[tuple[tuple, str], int] = {}
        self.route_status: dict[tuple, Any] = {}  # route key -> its ObjectStatus (conflicts applied)
        self.route_problems: dict[tuple, tuple] = {}  # route key -> its problems, for routes with any
        self.tangled: set[tuple] = set()  # routes whose change needs a full translation


class FoldBuilder:
    """Collects the contributions during a full translation (`_Translator.run`)."""

    def __init__(self) -> None:
        self.contributions: dict[tuple, Contribution] = {}
        self.conflicts: dict[tuple, list] = {}  # route key -> problems its conflicts reported

    def route(self, key: tuple, route: Any) -> Contribution:
        c = self.contributions[key] = Contribution(route)
        return c

    def conflict(self, key: tuple, problems: list) -> None:
        self.conflicts.setdefault(key, []).extend(problems)

    def build(self, t: _Translator, sorted_hosts: Mapping[tuple[int, str], list], vhosts: Mapping[tuple[int, str], ir.VirtualHost],
              attached: Mapping[tuple[tuple, str], int]) -> Fold:
        fold = Fold()
        fold.context = t.context
        fold.non_route = {t.key_of[id(r)]: (r, d) for r, d in t.non_route}
        fold.routes = list(t.routes)
        keys = t.memo.keys
        fold.order = [keys[id(r)][2] for r in t.routes]
        fold.contributions = self.contributions
        claims = fold.claims
        for key, c in self.contributions.items():
            for triple in c.claims:
                claims[triple] = claims.get(triple, 0) + 1
            ns = key[2]
            for host in c.hosts:
                counts = fold.host_ns.setdefault(host, {})
                counts[ns] = counts.get(ns, 0) + 1
            if len(set(c.claims)) != len(c.claims) or len(set(c.hosts)) != len(c.hosts):
                fold.tangled.add(key)  # claims a match (or a hostname) twice itself
            own = t.memo.routes[key].problems
            conflicts = self.conflicts.get(key, ())
            if own or conflicts:
                fold.route_problems[key] = (*own, *conflicts)
            fold.route_status[key] = t.status.objects[key]
        fold.tangled.update(self.conflicts)
        fold.tangled.update(k for k in self.contributions if _twin(k) in self.contributions)
        for (port, host), items in sorted_hosts.items():
            fold.entries.setdefault(port, {})[host] = _Entries(items)
        fold.vhosts = dict(vhosts)
        fold.attached = dict(attached)
        return fold


class _Abandon(Exception):
    """The edit can't be patched exactly: translate in full."""


def patch(memo: TranslationMemo, serving: Mapping[tuple, Any], changed: frozenset, invalid: set,
          read_file: Any) -> Translation | None:
    """The translation after `changed` (keys whose stored object changed since the last
    translation), from the memo's fold; None when a full translation is needed."""
    fold, memo.fold = memo.fold, None  # put back only once patched: an abandoned fold is stale
    if fold is None:
        return None
    route_keys = sorted((k for k in changed if k[1] in ROUTE_KINDS), key=lambda k: k[2:])
    if len(route_keys) > max(64, len(fold.routes) // _MAX_CHANGED_SHARE):
        return None
    try:
        return _patch(memo, fold, serving, changed, route_keys, invalid, read_file)
    except _Abandon:
        return None


def _patch(memo: TranslationMemo, fold: Fold, serving: Mapping[tuple, Any], changed: frozenset,
           route_keys: list[tuple], invalid: set, read_file: Any) -> Translation:
    from meshgate.gatewayapi.translator import _host_order, _Translator

    for key in changed:
        if key[1] not in ROUTE_KINDS:
            stored = serving.get(key)
            if stored is None:
                fold.non_route.pop(key, None)
            else:
                fold.non_route[key] = (stored.resource, stored.doc)
    t = _Translator(list(fold.non_route.values()), invalid, read_file, memo, patching=True)
    programmed, cert_of, secrets, settings, traffic, security = t._prepare()
    if t.context is not fold.context or t.duplicates or traffic.winners or security.winners:
        raise _Abandon
    # Take the changed routes' old contributions out.
    touched: set[tuple[int, str]] = set()
    for key in route_keys:
        old = fold.contributions.pop(key, None)
        if old is None:
            continue
        if key in fold.tangled:
            raise _Abandon
        for triple in old.claims:
            left = fold.claims[triple] - 1
            if left:
                raise _Abandon  # another route claims this match too: who wins depends on order
            del fold.claims[triple]
        for host in old.hosts:
            counts = fold.host_ns[host]
            counts[key[2]] -= 1
            if not counts[key[2]]:
                del counts[key[2]]
            if any(ns != key[2] for ns in counts):
                raise _Abandon  # another namespace asks for this hostname: tenancy decides by order
            if not counts:
                del fold.host_ns[host]
        for attachment in old.attached:
            fold.attached[attachment] -= 1
        for port, host, (k, route) in old.served:
            if not fold.entries[port][host].remove(k, route):
                raise _Abandon
            touched.add((port, host))
        _remove_route(fold, memo, old.route)
        del fold.route_status[key]
        fold.route_problems.pop(key, None)
    # Put the new versions in.
    new_routes = []
    for key in route_keys:
        stored = serving.get(key)
        if stored is not None:
            t._add(stored.resource, stored.doc)
            new_routes.append((key, stored.resource))
        else:
            memo.routes.pop(key, None)  # gone (or never valid)
    for key, route in new_routes:
        if _twin(key) in fold.contributions:
            raise _Abandon  # a meshgate.io HTTPRoute and a Gateway API one of one name: same IR names
        result = t._route(route, programmed)
        t.services.use(result.built)
        if t.services.used or any(d.failover for _, r in result.built for d in r.destinations):
            raise _Abandon
        contribution = Contribution(route)
        built = traffic.apply(route, result.matches, result.built, result.attachments)
        ns = key[2]
        for gateway_key, listener_name, port, hostnames in result.attachments:
            if not t._shares_hostnames(gateway_key) and hostnames != ("*",):
                for host in hostnames:
                    if host == "*":
                        continue
                    counts = fold.host_ns.setdefault((port, host), {})
                    if any(other != ns for other in counts) or (port, host) in contribution.hosts:
                        raise _Abandon
                    counts[ns] = counts.get(ns, 0) + 1
                    contribution.hosts.append((port, host))
            fold.attached[(gateway_key, listener_name)] = fold.attached.get((gateway_key, listener_name), 0) + 1
            contribution.attached.append((gateway_key, listener_name))
            served = security.apply(route, result.matches, built, gateway_key, listener_name)
            for host in hostnames:
                entries = fold.entries.setdefault(port, {}).setdefault(host, _Entries([]))
                for (where, identity), (k, ir_route) in zip(result.matches, served):
                    triple = (port, host, identity)
                    if triple in fold.claims:
                        raise _Abandon  # an identical match: a conflict, decided by order
                    fold.claims[triple] = 1
                    contribution.claims.append(triple)
                    if not entries.insert(k, ir_route):
                        raise _Abandon
                    contribution.served.append((port, host, (k, ir_route)))
                    touched.add((port, host))
        fold.contributions[key] = contribution
        _insert_route(fold, memo, route)
        fold.route_status[key] = t.status.objects[key]
        if result.problems:
            fold.route_problems[key] = result.problems

    listeners = []
    for port, (name, tls, port_settings) in sorted(t._ports(programmed, cert_of, settings).items()):
        hosts = fold.entries.get(port, {})
        vhosts = []
        for host in sorted(hosts, key=_host_order):
            entries = hosts[host]
            vhost = fold.vhosts.get((port, host))
            if not entries.routes:
                del hosts[host]
                fold.vhosts.pop((port, host), None)
                continue
            if vhost is None or (port, host) in touched or vhost.name != f"{name}/{host}":
                vhost = fold.vhosts[(port, host)] = ir.VirtualHost(
                    name=f"{name}/{host}", domains=(host,), routes=tuple(entries.routes))
            vhosts.append(vhost)
        listeners.append(ir.Listener(name=name, port=port, tls=tls, virtual_hosts=tuple(vhosts), settings=port_settings))
    for attachment, count in list(fold.attached.items()):
        if count:
            t.status.objects[attachment[0]].attached_routes[attachment[1]] = count
        else:
            del fold.attached[attachment]
    new_keys = {key for key, _ in new_routes}
    t.status.objects.update(fold.route_status)
    for key, problems in fold.route_problems.items():
        if key not in new_keys:
            t.status.problems.extend(problems)
    if len(memo.keys) > 2 * (len(fold.routes) + len(fold.non_route)) + 64:  # replaced objects
        alive = {id(r) for r in fold.routes} | {id(r) for r, _ in fold.non_route.values()}
        memo.keys = {k: v for k, v in memo.keys.items() if k in alive}
    t.routes = fold.routes
    # No BackendTrafficPolicy (checked above): no route has a global rate limit to add a cluster for.
    translation = t._finish(listeners, secrets, [], traffic, security, global_limits=False)
    memo.fold = fold
    return translation


def _remove_route(fold: Fold, memo: TranslationMemo, route: Any) -> None:
    known = memo.keys.get(id(route))
    order = known[2] if known is not None and known[0] is route else None
    i = bisect_left(fold.order, order) if order is not None else len(fold.order)
    while i < len(fold.order) and fold.order[i] == order and fold.routes[i] is not route:
        i += 1
    if i >= len(fold.routes) or fold.routes[i] is not route:
        raise _Abandon
    del fold.order[i], fold.routes[i]
    memo.keys.pop(id(route), None)  # added again by _add if this very object comes back


def _twin(key: tuple) -> tuple | None:
    """The key of the other HTTPRoute kind with this namespace and name (both give one IR name)."""
    if key[1] != "HTTPRoute":
        return None
    return ("meshgate.io" if key[0] != "meshgate.io" else "gateway.networking.k8s.io", *key[1:])


def _insert_route(fold: Fold, memo: TranslationMemo, route: Any) -> None:
    order = memo.keys[id(route)][2]
    i = bisect_left(fold.order, order)
    if i < len(fold.order) and fold.order[i] == order:
        raise _Abandon  # a tie (an HTTPRoute and a GRPCRoute of one name): kept in store order
    fold.order.insert(i, order)
    fold.routes.insert(i, route)
