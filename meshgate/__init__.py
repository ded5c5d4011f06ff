"""meshgate: an API gateway for Kubernetes, a Python control plane around real Envoy."""

__version__ = "0.1.0"
