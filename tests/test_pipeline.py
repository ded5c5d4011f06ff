"""The control plane's reload pipeline in-process (no Envoy): what each reload publishes, what it
reports, and that a long run of reloads leaves nothing behind."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import pytest

import meshgate.controlplane.pipeline as pipeline
from meshgate.controlplane.pipeline import ControlPlane
from meshgate.xds.snapshot import ROUTE, SnapshotCache

GOLDEN = Path(__file__).parent / "golden" / "translate"
BASE = (GOLDEN / "http-basic.in.yaml").read_text()


def edit(path: Path, text: str, stamp: int) -> None:
    path.write_text(text)
    os.utime(path, (stamp, stamp))  # distinct mtimes even within one clock tick


def route_names(plane: ControlPlane) -> list[str]:
    return sorted(r.name for rc in plane.snapshot.resources[ROUTE].values() for vh in rc.virtual_hosts for r in vh.routes)


def test_problems_are_logged_once_and_recovery_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "a.yaml"
    edit(config, BASE, 1)
    plane = ControlPlane([str(tmp_path)], SnapshotCache())
    plane.reload()
    assert plane.status.last_error == []
    broken = BASE.replace("backendRefs:", "backendRef:")
    caplog.set_level(logging.INFO, logger="meshgate.controlplane.pipeline")
    for stamp in (2, 3, 4):  # the same problem three reloads in a row
        edit(config, broken + f"\n# {stamp}\n", stamp)
        plane.reload()
    reported = [r for r in caplog.records if r.getMessage().startswith("config has problems")]
    assert len(reported) == 1, "a lasting problem is logged once, not at every reload"
    assert any("backendRef" in line and "a.yaml" in line for line in plane.status.last_error)
    assert route_names(plane) == ["httproute/default/app/rule/0/match/0"]  # the last valid version serves
    edit(config, BASE, 5)
    plane.reload()
    assert plane.status.last_error == []
    assert [r.getMessage() for r in caplog.records].count("config is valid again") == 1


def test_objects_status_lists_every_object(tmp_path: Path) -> None:
    edit(tmp_path / "a.yaml", BASE, 1)
    plane = ControlPlane([str(tmp_path)], SnapshotCache())
    plane.reload()
    kinds = sorted((o["kind"], o["name"]) for o in plane.objects_status())
    assert kinds == [("Backend", "app"), ("Gateway", "edge"), ("HTTPRoute", "app")]
    assert plane.status.as_json()["objects"] == []  # /status lists only objects with a problem
    edit(tmp_path / "a.yaml", BASE.replace("name: app}\nspec:\n  parentRefs: [{name: edge}]",
                                           "name: app}\nspec:\n  parentRefs: [{name: nowhere}]"), 2)
    plane.reload()
    assert [(o["kind"], o["name"]) for o in plane.status.as_json()["objects"]] == [("HTTPRoute", "app")]


def test_emptied_config_publishes_nothing_and_says_so(tmp_path: Path) -> None:
    config = tmp_path / "a.yaml"
    edit(config, BASE, 1)
    plane = ControlPlane([str(tmp_path)], SnapshotCache())
    plane.reload()
    edit(config, "---\n", 2)
    plane.reload()  # must not raise (it used to: KeyError in the staged publish)
    assert plane.snapshot.resources.get(ROUTE, {}) == {}
    assert plane.status.last_error and "no objects found" in plane.status.last_error[0]


def test_an_unchanged_route_is_not_translated_again(tmp_path: Path) -> None:
    """The memo: an edit to one file re-translates its routes only; the other file's route keeps
    its translation (same objects) and its Envoy route bytes."""
    other = BASE.split("---\n")[-1].replace("{name: app}\nspec:", "{name: other}\nspec:\n  hostnames: [b.example.com]")
    edit(tmp_path / "a.yaml", BASE, 1)
    edit(tmp_path / "b.yaml", other, 1)
    plane = ControlPlane([str(tmp_path)], SnapshotCache())
    plane.reload()
    assert plane.status.last_error == []
    before = dict(plane.memo.routes)
    edit(tmp_path / "b.yaml", other.replace("b.example.com", "c.example.com"), 2)
    plane.reload()
    key_a = ("gateway.networking.k8s.io", "HTTPRoute", "default", "app")
    key_b = ("gateway.networking.k8s.io", "HTTPRoute", "default", "other")
    assert plane.memo.routes[key_a] is before[key_a]
    assert plane.memo.routes[key_b] is not before[key_b]
    vhosts = sorted(vh.name for rc in plane.snapshot.resources[ROUTE].values() for vh in rc.virtual_hosts)
    assert vhosts == ["default/edge/8080/*", "default/edge/8080/c_example_com"]  # no dots: they root stats


async def test_a_thousand_reloads_leave_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Reloads freeze what lives out of the GC's sight; what they leave in reference cycles must
    still be collected (`collect_garbage`, run when reloads pause). Counted in objects the GC
    tracks, which is exact, rather than in RSS, which the allocator blurs."""
    monkeypatch.setattr(pipeline, "GC_IDLE_SECONDS", 3600.0)  # collected below, when we say
    # pytest keeps every log record of the test (three objects each, one per broken reload
    # below): not the control plane's, so none are made.
    caplog.set_level(logging.CRITICAL, logger="meshgate.controlplane.pipeline")
    config = tmp_path / "a.yaml"
    edit(config, BASE, 1)
    plane = ControlPlane([str(tmp_path)], SnapshotCache())
    broken = BASE + "bad: [\n"

    async def reloads(start: int, count: int) -> int:
        for i in range(start, start + count):
            edit(config, broken if i % 3 == 0 else BASE.replace("8080}", f"{8000 + i % 5}}}"), i)
            await plane.reload_in_thread()
        plane.collect_garbage()  # what the idle timer runs
        return len(gc.get_objects()) + gc.get_freeze_count()

    first = await reloads(10, 100)
    later = await reloads(110, 900)
    assert later <= first + 500, f"{later - first} more objects after 900 more reloads"
