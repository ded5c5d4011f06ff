"""The control plane's audit lines (meshgate.controlplane.audit) on their own: a config that could
not be published at all changes nothing (the next change is diffed against what still serves), a
reload that changes nothing writes nothing, and an unwritable audit log is logged, not fatal."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from meshgate.controlplane.audit import ConfigAudit

ROUTE = ("gateway.networking.k8s.io", "HTTPRoute", "default", "app")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_rejected_config_changes_nothing_and_a_quiet_reload_writes_nothing(tmp_path: Path) -> None:
    audit = ConfigAudit(str(tmp_path / "audit.log"), "config/")
    audit.record(outcome="accepted", old_version=None, new_version="v1", objects={ROUTE: (1, "a.yaml", 3)}, problems=[])
    audit.record(outcome="accepted", old_version="v1", new_version="v1", objects={ROUTE: (1, "a.yaml", 3)}, problems=[])
    audit.record(outcome="rejected", old_version="v1", new_version=None, objects={}, problems=["internal error"])
    audit.record(outcome="accepted", old_version="v1", new_version="v2", objects={ROUTE: (2, "a.yaml", 3)}, problems=[])
    loaded, rejected, changed = lines(tmp_path / "audit.log")
    assert loaded["event"] == "config_loaded" and [c["change"] for c in loaded["changes"]] == ["added"]
    assert rejected["outcome"] == "rejected" and rejected["changes"] == [] and rejected["new_problems"] == ["internal error"]
    assert changed["changes"] == [{"object": "HTTPRoute/default/app", "change": "changed", "file": "a.yaml", "line": 3,
                                   "generation": {"old": 1, "new": 2}}], changed


def test_an_unwritable_audit_log_is_reported_and_the_control_plane_goes_on(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    audit = ConfigAudit(str(tmp_path / "missing-dir" / "audit.log"), "config/")
    with caplog.at_level(logging.ERROR, logger="meshgate.controlplane.audit"):
        audit.record(outcome="accepted", old_version=None, new_version="v1", objects={ROUTE: (1, "a.yaml", 3)}, problems=[])
    assert any("audit log not written" in r.getMessage() for r in caplog.records)
