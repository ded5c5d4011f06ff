"""`/readyz` with a JSON detail of each part, and Kubernetes probe semantics.

- **Liveness** (`/healthz`) is the process answering HTTP: it never depends on a config, an Envoy
  or a dependency, so a broken Kubernetes API or a crashed companion never gets the control plane
  restarted (a restart would only lose its state).
- **Readiness** (`/readyz`) is 200 when every *gating* part is ok, else 503, with the same JSON
  body either way:

  - `config`: a valid config (whole or partly) has been published. Gating.
  - `envoys`: at least one Envoy has ACKed config. Gating, as before. Per Envoy: `live` (its ADS
    stream is open; for the Envoy `meshgate run` supervises, also its process), `in_sync` (it runs
    the published snapshot) and what it NACKed. One Envoy out of sync does *not* make the control
    plane unready: taking it out of service would keep every Envoy from getting the fix; NACKs are
    alerted instead (`MeshgateEnvoyRejectedConfig`).
  - `dependencies`: what this process uses, registered in `ControlPlaneStatus.dependencies`
    (the Kubernetes API's watches, the edge companion of `meshgate run`...). Each gates readiness
    unless it says `gating: false`: the Kubernetes API once a snapshot is served (every replica
    loses it together; unready replicas would leave the Envoys with no control plane).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshgate.controlplane.status import ControlPlaneStatus

Check = Callable[[], "dict[str, Any] | None"]  # at least {"ok": bool}; None: not in use now


def readiness(status: ControlPlaneStatus) -> dict[str, Any]:
    """{"ready": bool, "checks": {"config": ..., "envoys": ..., "dependencies": {...}}}."""
    config = _config(status)
    envoys = _envoys(status)
    dependencies = {}
    for name, check in sorted(getattr(status, "dependencies", {}).items()):
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - a broken check is a failed check, not a 500
            result = {"ok": False, "error": f"check failed: {exc}"}
        if result is None:  # registered but not in use by this config
            continue
        dependencies[name] = {**result, "ok": bool(result.get("ok")), "gating": bool(result.get("gating", True))}
    # A non-gating dependency that fails makes the control plane degraded (said here), not unready.
    ready = config["ok"] and envoys["ok"] and all(d["ok"] or not d["gating"] for d in dependencies.values())
    return {"ready": ready, "checks": {"config": config, "envoys": envoys, "dependencies": dependencies}}


def _config(status: ControlPlaneStatus) -> dict[str, Any]:
    problems = len(status._config_errors)  # noqa: SLF001 - config errors only, not NACK lines
    if status.version is None:
        state, message = "none", "no valid config yet"
    elif problems:
        state, message = "partial", f"{problems} problem(s): the valid objects are served, see /status"
    else:
        state, message = "valid", "config published"
    return {"ok": status.version is not None, "state": state, "version": status.version, "problems": problems,
            "last_reload": status.last_reload, "publish": status.publish.get("state"), "message": message}


def _envoys(status: ControlPlaneStatus) -> dict[str, Any]:
    nodes = []
    for n in sorted(status.nodes.values(), key=lambda n: n.instance):
        nodes.append({"node": status.label(n), "node_id": n.node_id, "group": n.group, "live": True,
                      "in_sync": status.in_sync(n), "acked": dict(n.acked),
                      "nacked": {t: nack["version"] for t, nack in n.nacked.items()}})
    out: dict[str, Any] = {"ok": status.ever_acked, "connected": len(nodes), "in_sync": sum(n["in_sync"] for n in nodes),
                           "nodes": nodes}
    local = status.extra.get("envoy")
    if local is not None:  # `meshgate run`: the Envoy process it supervises
        info = local() if callable(local) else local
        out["local"] = {"pid": info.get("pid"), "live": info.get("pid") is not None, "restarts": info.get("restarts", 0)}
    if not status.ever_acked:
        out["message"] = "no Envoy has ACKed the config yet"
    elif not nodes:
        out["message"] = "no Envoy connected now (one ACKed before)"
    else:
        out["message"] = f"{out['in_sync']} of {len(nodes)} connected Envoy(s) run the published config"
    return out


def reason(detail: dict[str, Any]) -> str:
    """One line saying why not ready (for logs and humans), '' when ready."""
    checks = detail["checks"]
    parts = [checks[k]["message"] for k in ("config", "envoys") if not checks[k]["ok"]]
    parts += [f"{name}: {d.get('message') or d.get('error') or 'not ok'}"
              for name, d in checks["dependencies"].items() if not d["ok"]]
    return "; ".join(parts)


def kubernetes_check(provider: Any) -> Check:
    """The Kubernetes API as a dependency: ok while every watched kind has listed and no watch is
    failing now (a failing one keeps its last list, and retries)."""

    def check() -> dict[str, Any]:
        informers = list(getattr(provider, "informers", ()))
        unsynced = sorted(i.kind.name for i in informers if not i.synced.is_set())
        failing = {i.kind.name: i.last_error for i in informers if i.last_error}
        ok = bool(informers) and not unsynced and not failing
        message = "watching" if ok else "; ".join(
            ([f"not listed yet: {', '.join(unsynced)}"] if unsynced else [])
            + [f"{kind}: {error}" for kind, error in sorted(failing.items())]) or "not started"
        return {"ok": ok, "api": getattr(provider, "description", ""), "kinds": len(informers),
                "unsynced": unsynced, "failing": failing, "message": message}

    return check


def process_check(process: Any, what: str, in_use: Callable[[], bool] = lambda: True) -> Check:
    """A supervised child process (the edge companion) as a dependency: ok while it runs; left
    out of /readyz while the config doesn't use it."""

    def check() -> dict[str, Any] | None:
        if not in_use():
            return None
        pid = getattr(process(), "pid", None) if callable(process) else getattr(process, "pid", None)
        return {"ok": pid is not None, "pid": pid, "message": f"{what} running" if pid else f"{what} not running"}

    return check
