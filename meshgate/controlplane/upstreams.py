"""Upstream health in `/readyz`, aggregated from Envoy's view of its clusters (`meshgate run`).

Every few seconds (MESHGATE_DEPENDENCY_CHECK_INTERVAL, default 10 s) the control plane reads the
admin `/clusters` of the Envoy it supervises and counts, per Backend cluster (a Backend's own,
`backend/NS/NAME`, and each variant a policy makes of it, `backend/NS/NAME/...`: each is a way
routes reach it, with its own health checks), the endpoints Envoy holds and how many it considers
healthy (active and passive health checks, EDS health). `dependencies.upstreams` is ok when every
such cluster has a healthy endpoint; one with none (all failing, or none at all, e.g. a Consul
service with no instance) is named in the message. Not gating: an unhealthy upstream is no reason to take the
gateway out of service (its other routes still work; alerted by `MeshgateBackendUnhealthy`).

`meshgate xds` has no Envoy of its own to ask: there, read each Envoy's stats
(`envoy_cluster_membership_healthy`), as the dashboards do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshgate.controlplane.health_checks import ProbeCheck
from meshgate.controlplane.status_page import endpoint_health

INTERVAL_S = 5.0


class UpstreamHealth(ProbeCheck):
    def __init__(self, admin_url: Callable[[], str | None], interval: float = INTERVAL_S) -> None:
        super().__init__("Envoy's clusters", self._read, gating=False, interval=interval,
                         where="the supervised Envoy (admin /clusters)")
        self.admin_url = admin_url
        self.clusters: dict[str, dict[str, int]] = {}  # Backend cluster -> {healthy, total}

    async def _read(self) -> str:
        import aiohttp

        admin = self.admin_url()
        if not admin:
            raise RuntimeError("Envoy is not running")
        async with aiohttp.ClientSession() as session, \
                session.get(f"{admin}/clusters", params={"format": "json"}) as resp:
            clusters = (await resp.json(content_type=None)).get("cluster_statuses", [])
        counts: dict[str, dict[str, int]] = {}
        for cluster in clusters:
            name = cluster.get("name", "")
            if not name.startswith("backend/"):  # meshgate's own (OTLP, the edge companion...) are not upstreams
                continue
            hosts = [endpoint_health(h) for h in cluster.get("host_statuses", [])]
            counts[name] = {"healthy": sum(h["healthy"] for h in hosts), "total": len(hosts)}
        self.clusters = counts
        down = sorted(c for c, n in counts.items() if not n["healthy"])
        if down:
            raise RuntimeError(f"{len(down)} of {len(counts)} backend cluster(s) without a healthy endpoint: "
                               + ", ".join(f"{c} ({counts[c]['total']} endpoint(s))" for c in down))
        return f"ok, {len(counts)} backend cluster(s), each with a healthy endpoint"

    def __call__(self) -> dict[str, Any]:
        return {**super().__call__(), "clusters": dict(self.clusters)}
