"""Series computed at scrape time from what the control plane knows (`ControlPlaneStatus`), for
the dashboards and alert rules (charts/meshgate/): objects by status, outstanding NACKs.

A collector, not gauges kept up to date: the numbers are read from the same views `/status`
serves, so they can never disagree with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from meshgate.controlplane.status import ControlPlaneStatus


def object_ok(entry: dict) -> bool:
    """An object of /status/objects without a problem condition (a False one, or Conflicted True)."""
    return not any(c["status"] == ("True" if c["type"] == "Conflicted" else "False") for c in entry.get("conditions", ()))


class StatusCollector(Collector):
    def __init__(self, status: ControlPlaneStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        objects = GaugeMetricFamily("meshgate_objects", "Config objects by kind and status (ok: every condition "
                                    "fine; problem: rejected or partly rejected, see /status)", labels=["kind", "status"])
        counts = Counter((o["kind"], "ok" if object_ok(o) else "problem") for o in self.status.objects(False))
        for kind in sorted({k for k, _ in counts}):
            for state in ("ok", "problem"):  # both, so a ratio or `> 0` always has a series
                objects.add_metric([kind, state], counts.get((kind, state), 0))
        yield objects
        yield GaugeMetricFamily("meshgate_xds_nacks_outstanding", "Latest NACK per Envoy and type not yet followed "
                                "by an ACK of a later version (config an Envoy rejects now)",
                                value=len(self.status.nacks()))
