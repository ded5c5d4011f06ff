"""The Kubernetes provider: Gateway API objects, meshgate's CRDs, Secrets, Services and
EndpointSlices from a Kubernetes API server, through `kubernetes-asyncio` (list + watch)."""

from meshgate.providers.kubernetes.informer import Informer, WatchedKind
from meshgate.providers.kubernetes.provider import CONTROLLER_NAME, WATCHED, KubernetesProvider, api_client

__all__ = ["CONTROLLER_NAME", "WATCHED", "Informer", "KubernetesProvider", "WatchedKind", "api_client"]
