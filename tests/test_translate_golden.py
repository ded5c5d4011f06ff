"""Golden files for the translation pipeline: config YAML in, Envoy resources YAML out.

Each `tests/golden/translate/NAME.in.yaml` is a config (one feature per file); the matching
`NAME.out.yaml` is what `meshgate translate` must print for it, and `NAME.status.yaml` the status
of every object when some are (partly) invalid: what Gateway API's partial validity programs and
what it reports. Regenerate deliberately with
`pytest tests/test_translate_golden.py --update-golden` and review the diff like code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshgate.api.config import load_config, load_translation
from meshgate.controlplane.pipeline import compile_config
from meshgate.xds.render import resources_to_dict
from meshgate.xds.snapshot import Snapshot
from meshgate.xds.translator import TranslateOptions

GOLDEN = Path(__file__).parent / "golden" / "translate"
CASES = sorted(p.name[: -len(".in.yaml")] for p in GOLDEN.glob("*.in.yaml"))


@pytest.mark.parametrize("name", CASES)
def test_translate_golden(name: str, request: pytest.FixtureRequest) -> None:
    translation, problems = load_translation([str(GOLDEN / f"{name}.in.yaml")], environ={})
    resources = compile_config(translation, TranslateOptions(access_log_path="/dev/stdout"))
    Snapshot.build(resources).check_consistent()  # what we'd push must be internally consistent
    _compare(request, GOLDEN / f"{name}.out.yaml", yaml.safe_dump(resources_to_dict(resources), sort_keys=False, width=120))
    status = GOLDEN / f"{name}.status.yaml"
    if problems or status.exists():
        objects = [s.as_dict() for _, s in sorted(translation.status.objects.items())]
        # File names as in the golden folder, wherever the checkout is: stripped before the dump,
        # so that the line wrapping doesn't depend on the checkout's path either.
        document = _relative({"problems": [str(p) for p in problems], "objects": objects}, f"{GOLDEN}/")
        _compare(request, status, yaml.safe_dump(document, sort_keys=False, width=120))


def _relative(value, prefix: str):
    """`value` with `prefix` removed from every string in it."""
    if isinstance(value, str):
        return value.replace(prefix, "")
    if isinstance(value, dict):
        return {k: _relative(v, prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, prefix) for v in value]
    return value


def _compare(request: pytest.FixtureRequest, golden: Path, actual: str) -> None:
    if request.config.getoption("--update-golden"):
        golden.write_text(actual)
    assert golden.exists(), f"missing {golden.name}: run with --update-golden"
    assert actual == golden.read_text(), f"{golden.name} differs (run with --update-golden and review the diff)"


def test_translation_is_deterministic() -> None:
    """Same input, same bytes: the snapshot version must not change when nothing changed."""
    # Three goldens that are wholly valid (the partly invalid ones have a .status.yaml).
    paths = [str(p) for p in sorted(GOLDEN.glob("*.in.yaml"))
             if not p.with_name(p.name.replace(".in.yaml", ".status.yaml")).exists()][:3]
    versions = set()
    for _ in range(3):
        for p in paths:
            versions.add((p, Snapshot.build(compile_config(load_config([p], environ={}), TranslateOptions())).version))
    assert len(versions) == len(paths)


ERRORS = Path(__file__).parent / "golden" / "errors"
ERROR_CASES = sorted(p.name[: -len(".yaml")] for p in ERRORS.glob("*.yaml"))


@pytest.mark.parametrize("name", ERROR_CASES)
def test_config_errors_golden(name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `errors/NAME.yaml` is a broken config; `NAME.errors` lists the exact messages."""
    from meshgate.errors import ConfigErrors

    monkeypatch.chdir(ERRORS)
    with pytest.raises(ConfigErrors) as info:
        load_config([f"{name}.yaml"], environ={})
    actual = "".join(f"{e}\n" for e in info.value.errors)
    expected = ERRORS / f"{name}.errors"
    if request.config.getoption("--update-golden"):
        expected.write_text(actual)
    assert expected.exists(), f"missing {expected.name}: run with --update-golden"
    assert actual == expected.read_text()


def test_access_log_can_be_turned_off() -> None:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

    from meshgate.xds.snapshot import LISTENER

    config = load_config([str(GOLDEN / "http-basic.in.yaml")], environ={})
    for path, expected in (("/var/log/access.log", 1), (None, 0)):
        listener = compile_config(config, TranslateOptions(access_log_path=path))[LISTENER]["default/edge/8080"]
        hcm = http_connection_manager_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
        assert len(hcm.access_log) == expected
