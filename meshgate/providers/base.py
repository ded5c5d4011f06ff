"""What the control plane needs from a provider: the seam between where objects come from
(files, a Kubernetes API server, later Consul) and the pipeline that translates them.

A `Provider` hands over documents, each with its origin (`SourceDocument.file` and `.line`: a
file and line, or an origin like `kubernetes:HTTPRoute NAMESPACE/NAME` with `NO_LINE`), and says
when they changed. The `ControlPlane` puts them through the same `ObjectStore` and translation
whatever their source; nothing downstream knows where an object came from except for messages.

A provider that also tracks endpoints which change far more often than config (pods behind a
Kubernetes Service) implements `EndpointSource` too: those reach Envoy as EDS alone, with no
translation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol, runtime_checkable

from meshgate import ir
from meshgate.providers.file.loader import LoadResult

__all__ = ["EndpointSource", "Provider"]


@runtime_checkable
class Provider(Protocol):
    def load(self) -> LoadResult:
        """Every document now, with the problems found reading them. May run on a worker thread."""
        ...

    def changes(self) -> AsyncIterator[set[str]]:
        """Yield what changed (file paths, object origins), each batch once; runs until cancelled."""
        ...


@runtime_checkable
class EndpointSource(Protocol):
    def endpoints(self) -> Mapping[str, tuple[ir.Endpoint, ...]]:
        """Cluster name -> its endpoints, now (a mapping never changed after it is returned)."""
        ...

    def endpoint_changes(self) -> AsyncIterator[set[str]]:
        """Yield the names of clusters whose endpoints changed; runs until cancelled."""
        ...
