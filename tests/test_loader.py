"""Tests for meshgate.providers.file (loader, discover): files, lines, ${VAR} substitution and environment overlays."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest

from meshgate.errors import ConfigError, ConfigErrors, MeshgateError, format_field_path
from meshgate.providers.file import (
    SourceDocument,
    discover_files,
    fast_yaml,
    load_documents,
    load_files,
    loader,
)

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
spec:
  hostnames: ["shop.example.com"]
  rules:
    - matches:
        - path:
            type: PathPrefix
            value: /cart
        - path:
            value: /checkout
      backendRefs:
        - name: cart
          port: 8080
"""


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def load(*paths: str, env: str | None = None, environ: dict[str, str] | None = None):
    return load_documents(list(paths), env=env, environ=environ or {})


def load_ok(*paths: str, env: str | None = None, environ: dict[str, str] | None = None):
    documents, errors = load(*paths, env=env, environ=environ)
    assert errors == []
    return documents


# --- errors ----------------------------------------------------------------------------------


def test_config_error_formats_as_one_line():
    error = ConfigError("routes/shop.yaml", 14, "spec.rules[0]", "must not be empty")
    assert str(error) == "routes/shop.yaml:14: spec.rules[0]: must not be empty"
    assert str(ConfigError("x.yaml", 0, "", "cannot read: Permission denied")) == (
        "x.yaml:0: cannot read: Permission denied"
    )
    assert (error.file, error.line, error.field, error.message) == (
        "routes/shop.yaml", 14, "spec.rules[0]", "must not be empty",
    )
    assert isinstance(error, MeshgateError)


def test_config_error_compares_hashes_and_pickles_by_value():
    error = ConfigError("a.yaml", 3, "spec", "bad")
    assert error == ConfigError("a.yaml", 3, "spec", "bad")
    assert error != ConfigError("a.yaml", 4, "spec", "bad")
    assert len({error, ConfigError("a.yaml", 3, "spec", "bad")}) == 1
    assert pickle.loads(pickle.dumps(error)) == error


def test_config_errors_sorts_and_joins():
    errors = ConfigErrors([
        ConfigError("b.yaml", 1, "", "late file"),
        ConfigError("a.yaml", 9, "spec", "later line"),
        ConfigError("a.yaml", 2, "spec.z", "z"),
        ConfigError("a.yaml", 2, "spec.a", "a"),
    ])
    assert [str(e) for e in errors.errors] == [
        "a.yaml:2: spec.a: a",
        "a.yaml:2: spec.z: z",
        "a.yaml:9: spec: later line",
        "b.yaml:1: late file",
    ]
    assert str(errors) == "\n".join(str(e) for e in errors.errors)
    assert isinstance(errors, MeshgateError)


@pytest.mark.parametrize(
    ("parts", "text"),
    [
        ((), ""),
        (("spec",), "spec"),
        (("spec", "rules", 0, "matches"), "spec.rules[0].matches"),
        (("spec", "rules", 0, "matches", 1, "path", "value"), "spec.rules[0].matches[1].path.value"),
        ((0, "name"), "[0].name"),
        (("metadata", "annotations", "example.com/owner"), 'metadata.annotations["example.com/owner"]'),
        (("metadata", "labels", "app-name"), "metadata.labels.app-name"),
    ],
)
def test_format_field_path(parts, text):
    assert format_field_path(parts) == text


# --- files and folders -----------------------------------------------------------------------


def test_multi_document_file_with_lines_of_nested_fields(tmp_path):
    path = write(tmp_path, "routes.yaml", "# routes\n---\n" + ROUTE + "---\n---\n" + ROUTE)
    first, second = load_ok(path)

    assert (first.file, first.line) == (path, 3)
    assert first.data["spec"]["rules"][0]["backendRefs"][0] == {"name": "cart", "port": 8080}
    assert first.locate(("kind",)) == (path, 4)
    assert first.locate(("spec", "rules")) == (path, 9)
    assert first.locate(("spec", "rules", 0)) == (path, 10)  # the list item's line
    assert first.locate(("spec", "rules", 0, "matches", 1)) == (path, 14)
    assert first.locate(("spec", "rules", 0, "matches", 1, "path", "value")) == (path, 15)
    assert first.locate(("spec", "rules", 0, "backendRefs", 0, "port")) == (path, 18)
    # The empty document between the two is skipped; the second starts after it.
    assert second.line == 3 + ROUTE.count("\n") + 2
    assert second.locate(("kind",)) == (path, second.line + 1)


def test_locate_falls_back_to_the_nearest_existing_parent(tmp_path):
    path = write(tmp_path, "route.yaml", ROUTE)
    (document,) = load_ok(path)
    # A missing field points at its parent; a missing document-level field at the document.
    assert document.locate(("spec", "rules", 0, "filters", 0, "type")) == (path, 8)
    assert document.locate(("spec", "rules", 5)) == (path, 7)
    assert document.locate(("status",)) == (path, 1)
    assert document.locate(()) == (path, 1)


def test_error_helper_builds_a_located_config_error(tmp_path):
    path = write(tmp_path, "route.yaml", ROUTE)
    (document,) = load_ok(path)
    error = document.error(("spec", "rules", 0, "matches", 1, "path", "value"), 'must start with "/"')
    assert error == ConfigError(path, 13, "spec.rules[0].matches[1].path.value", 'must start with "/"')
    assert str(error) == f'{path}:13: spec.rules[0].matches[1].path.value: must start with "/"'


def test_unknown_key_is_located_at_the_key_itself(tmp_path):
    path = write(tmp_path, "r.yaml", "kind: HTTPRoute\nspec:\n  rules: []\n  hostnamez:\n    - a\n")
    (document,) = load_ok(path)
    assert document.locate(("spec", "hostnamez")) == (path, 4)


def test_folders_are_read_recursively_in_sorted_order(tmp_path):
    write(tmp_path, "b.yaml", "kind: B\n")
    write(tmp_path, "a.yml", "kind: A\n")
    write(tmp_path, "sub/c.yaml", "kind: C\n")
    write(tmp_path, "sub/deeper/d.yaml", "kind: D\n")
    write(tmp_path, "notes.txt", "kind: not yaml\n")
    write(tmp_path, ".hidden.yaml", "kind: Hidden\n")
    write(tmp_path, ".git/config.yaml", "kind: Git\n")
    write(tmp_path, "..data/e.yaml", "kind: ConfigMapInternals\n")

    documents = load_ok(str(tmp_path))
    assert [d.data["kind"] for d in documents] == ["A", "B", "C", "D"]
    assert documents[2].file == os.path.join(str(tmp_path), "sub", "c.yaml")

    bases, overlays, errors = discover_files([str(tmp_path)], None)
    assert [os.path.relpath(b, tmp_path) for b in bases] == ["a.yml", "b.yaml", "sub/c.yaml", "sub/deeper/d.yaml"]
    assert overlays == [] and errors == []


def test_relative_paths_stay_relative(tmp_path, monkeypatch):
    write(tmp_path, "conf/gw.yaml", "kind: Gateway\nspec: {bad: [}\n")
    monkeypatch.chdir(tmp_path)
    _, errors = load("conf")
    assert [e.file for e in errors] == ["conf/gw.yaml"]


def test_a_file_reached_twice_is_read_once(tmp_path):
    path = write(tmp_path, "a.yaml", "kind: A\n")
    documents = load_ok(path, str(tmp_path), path)
    assert [d.file for d in documents] == [path]


def test_missing_path_is_an_error_and_other_paths_still_load(tmp_path):
    good = write(tmp_path, "good.yaml", "kind: Good\n")
    missing = str(tmp_path / "nope.yaml")
    documents, errors = load(missing, good)
    assert [d.data for d in documents] == [{"kind": "Good"}]
    assert errors == [ConfigError(missing, 0, "", "no such file or directory")]
    assert str(errors[0]) == f"{missing}:0: no such file or directory"


def test_file_with_invalid_utf8_cannot_be_read(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"kind: A\nname: caf\xe9\n")
    good = write(tmp_path, "good.yaml", "kind: Good\n")
    documents, errors = load(str(bad), good)
    assert [d.data["kind"] for d in documents] == ["Good"]
    (error,) = errors
    assert (error.file, error.line, error.field) == (str(bad), 0, "")
    assert error.message == "cannot read: not UTF-8 (byte 0xe9 on line 2)"


def test_file_without_permission_cannot_be_read(tmp_path, monkeypatch):
    path = write(tmp_path, "secret.yaml", "kind: A\n")
    real_open = os.open

    def deny(file, *args, **kwargs):
        if str(file) == path:
            raise PermissionError(13, "Permission denied", file)
        return real_open(file, *args, **kwargs)

    # Tests may run as root, which reads any file whatever its mode; fake the refusal instead.
    monkeypatch.setattr("os.open", deny)
    _, errors = load(path)
    assert errors == [ConfigError(path, 0, "", "cannot read: Permission denied")]


def test_yaml_syntax_error_reports_the_problem_line(tmp_path):
    bad = write(tmp_path, "a-bad.yaml", "kind: A\n---\nkind: B\nmetadata:\n  name: x: y\n---\nkind: C\n")
    good = write(tmp_path, "b-good.yaml", "kind: Good\n")
    documents, errors = load(bad, good)
    assert errors == [ConfigError(bad, 5, "", "mapping values are not allowed in this context")]  # libyaml wording
    # Documents before the error and other files still load.
    assert [d.data["kind"] for d in documents] == ["A", "Good"]


def test_unclosed_quote_points_at_the_problem_without_a_traceback(tmp_path):
    bad = write(tmp_path, "a.yaml", "kind: A\nname: 'oops\n")
    _, errors = load(bad)
    (error,) = errors
    assert error.line == 3 and error.message == "found unexpected end of stream"
    assert "Traceback" not in str(error) and "\n" not in str(error)


def test_control_character_is_a_syntax_error(tmp_path):
    bad = write(tmp_path, "a.yaml", "kind: A\nname: a\x07b\n")
    _, errors = load(bad)
    (error,) = errors
    assert (error.line, error.field) == (2, "")
    assert "control characters are not allowed" in error.message


def test_document_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "a.yaml", "kind: A\n---\n- just\n- a list\n---\nplain text\n---\nkind: B\n")
    documents, errors = load(path)
    message = "a document must be a mapping (apiVersion, kind, metadata, spec)"
    assert errors == [ConfigError(path, 3, "", message), ConfigError(path, 6, "", message)]
    assert [d.data["kind"] for d in documents] == ["A", "B"]


def test_empty_files_and_documents_are_skipped(tmp_path):
    write(tmp_path, "empty.yaml", "")
    write(tmp_path, "comments.yaml", "# nothing yet\n")
    write(tmp_path, "dashes.yaml", "---\n---\n# c\n---\n")
    assert load_ok(str(tmp_path)) == []


def test_duplicate_key(tmp_path):
    path = write(
        tmp_path, "a.yaml",
        "kind: A\nspec:\n  rules:\n    - name: one\n      timeout: 1s\n      name: two\n",
    )
    documents, errors = load(path)
    assert errors == [ConfigError(path, 6, "spec.rules[0].name", "duplicate key")]
    assert documents == []  # a document with a problem is left out


def test_keys_are_strings_and_anchors_and_merge_keys_work(tmp_path):
    path = write(
        tmp_path, "a.yaml",
        "defaults: &defaults\n  timeout: 1s\n  retries: 3\n"
        "spec:\n  <<: *defaults\n  retries: 5\n  on: yes\n  80: http\n",
    )
    (document,) = load_ok(path)
    assert document.data["spec"] == {"timeout": "1s", "retries": 5, "on": True, "80": "http"}
    assert document.locate(("spec", "timeout")) == (path, 2)  # where the value was written
    assert document.locate(("spec", "retries")) == (path, 6)


def test_bad_explicit_value_is_an_error_not_a_traceback(tmp_path):
    path = write(tmp_path, "a.yaml", "spec:\n  port: !!int eighty\n  ref: !Ref other\n")
    _, errors = load(path)
    assert [(e.line, e.field) for e in errors] == [(2, "spec.port"), (3, "spec.ref")]
    assert errors[0].message == "'eighty' is not a valid int"
    assert "could not determine a constructor" in errors[1].message


# --- ${VAR} substitution ---------------------------------------------------------------------


def test_substitution_plain_default_multiple_and_escape(tmp_path):
    path = write(
        tmp_path, "a.yaml",
        "spec:\n"
        "  host: ${HOST}\n"
        "  url: http://${HOST}:${PORT:-80}/\n"
        "  region: ${REGION:-eu-west-1}\n"
        "  empty_uses_default: ${EMPTY:-fallback}\n"
        "  empty: ${EMPTY}\n"
        "  literal: $${HOST} costs $5\n"
        "  ${HOST}: keys are not substituted\n",
    )
    (document,) = load_ok(path, environ={"HOST": "api.internal", "EMPTY": ""})
    assert document.data["spec"] == {
        "host": "api.internal",
        "url": "http://api.internal:80/",
        "region": "eu-west-1",
        "empty_uses_default": "fallback",
        "empty": None,  # an unquoted empty value is YAML null
        "literal": "${HOST} costs $5",
        "${HOST}": "keys are not substituted",
    }


def test_substitution_defaults_to_os_environ(tmp_path, monkeypatch):
    monkeypatch.setenv("MESHGATE_TEST_HOST", "from-os")
    path = write(tmp_path, "a.yaml", "host: ${MESHGATE_TEST_HOST}\n")
    documents, errors = load_documents([path])
    assert errors == [] and documents[0].data == {"host": "from-os"}


def test_undefined_variable_is_an_error_at_its_line_and_field(tmp_path):
    path = write(tmp_path, "a.yaml", ROUTE.replace("port: 8080", "port: ${CART_PORT}"))
    documents, errors = load(path)
    assert documents == []
    assert errors == [
        ConfigError(
            path, 16, "spec.rules[0].backendRefs[0].port",
            "environment variable CART_PORT is not set (use ${CART_PORT:-default} for a default)",
        )
    ]


def test_undefined_variable_in_other_document_does_not_stop_the_file(tmp_path):
    path = write(tmp_path, "a.yaml", "kind: A\nx: ${NOPE}\n---\nkind: B\n")
    documents, errors = load(path)
    assert [d.data["kind"] for d in documents] == ["B"]
    assert [(e.line, e.field) for e in errors] == [(2, "x")]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${HOST", "unclosed ${ (write $${ for a literal ${)"),
        ("${1BAD}", "invalid variable reference ${1BAD}: expected ${NAME} or ${NAME:-default}"),
        ("${}", "invalid variable reference ${}: expected ${NAME} or ${NAME:-default}"),
        ("${A-b}", "invalid variable reference ${A-b}: expected ${NAME} or ${NAME:-default}"),
        ("${A:-${B}}", "a default cannot refer to another variable: ${A:-${B}"),
    ],
)
def test_bad_substitution_syntax(tmp_path, value, message):
    path = write(tmp_path, "a.yaml", f"kind: A\nspec:\n  value: '{value}'\n")
    _, errors = load(path, environ={"A": "a", "B": "b", "HOST": "h"})
    assert errors == [ConfigError(path, 3, "spec.value", message)]


def test_plain_values_are_retyped_and_quoted_values_stay_strings(tmp_path):
    path = write(
        tmp_path, "a.yaml",
        "port: ${PORT}\n"
        "quoted_port: \"${PORT}\"\n"
        "single_quoted: '${PORT}'\n"
        "flag: ${FLAG}\n"
        "ratio: ${RATIO}\n"
        "mixed: ${PORT}-${FLAG}\n"
        "forced: !!str ${PORT}\n"
        "block: |\n  ${PORT}\n",
    )
    (document,) = load_ok(path, environ={"PORT": "8080", "FLAG": "true", "RATIO": "0.5"})
    assert document.data == {
        "port": 8080,
        "quoted_port": "8080",
        "single_quoted": "8080",
        "flag": True,
        "ratio": 0.5,
        "mixed": "8080-true",
        "forced": "8080",
        "block": "8080\n",
    }


def test_substituted_value_is_not_substituted_again(tmp_path):
    path = write(tmp_path, "a.yaml", "x: ${A}\n")
    (document,) = load_ok(path, environ={"A": "${B}"})
    assert document.data == {"x": "${B}"}


def test_error_in_an_anchored_value_is_reported_once(tmp_path):
    path = write(tmp_path, "a.yaml", "base: &b ${NOPE}\nx: *b\ny: *b\n")
    _, errors = load(path)
    assert [(e.line, e.field) for e in errors] == [(1, "base")]


# --- overlays --------------------------------------------------------------------------------

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
spec:
  listeners:
    - name: http
      port: 80
  infrastructure:
    labels:
      team: platform
      tier: edge
  debug: true
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
  namespace: shop
spec:
  hostnames: [shop.local]
"""

GATEWAY_PROD = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
spec:
  listeners:
    - name: https
      port: ${HTTPS_PORT:-443}
  infrastructure:
    labels:
      tier: public-edge
      region: eu
  debug: null
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
  namespace: shop
spec:
  hostnames: [shop.example.com]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: prod-only
spec:
  hostnames: [status.example.com]
"""


@pytest.fixture
def overlay_folder(tmp_path):
    base = write(tmp_path, "gateway.yaml", GATEWAY)
    prod = write(tmp_path, "gateway.prod.yaml", GATEWAY_PROD)
    write(tmp_path, "gateway.staging.yaml", "kind: Gateway\napiVersion: x\nmetadata: {name: edge}\n")
    return tmp_path, base, prod


def test_overlays_are_skipped_without_env(overlay_folder):
    folder, base, _ = overlay_folder
    gateway, route = load_ok(str(folder))
    assert gateway.data["spec"]["listeners"] == [{"name": "http", "port": 80}]
    assert route.data["spec"]["hostnames"] == ["shop.local"]
    assert discover_files([str(folder)], None) == ([base], [], [])


def test_env_without_an_overlay_file_is_fine(overlay_folder):
    folder, base, _ = overlay_folder
    documents = load_ok(str(folder), env="dev")
    assert [d.data["metadata"]["name"] for d in documents] == ["edge", "shop"]
    assert discover_files([str(folder)], "dev") == ([base], [], [])


def test_overlay_merge(overlay_folder):
    folder, base, prod = overlay_folder
    assert discover_files([str(folder)], "prod") == ([base], [prod], [])
    gateway, route, prod_only = load_ok(str(folder), env="prod")

    # Lists replace, mappings merge deeply, null deletes.
    assert gateway.data["spec"] == {
        "listeners": [{"name": "https", "port": 443}],
        "infrastructure": {"labels": {"team": "platform", "tier": "public-edge", "region": "eu"}},
    }
    assert route.data["spec"]["hostnames"] == ["shop.example.com"]
    # An overlay document without a base document is a new document, after the base file's.
    assert prod_only.data["metadata"]["name"] == "prod-only"
    assert (prod_only.file, prod_only.line) == (prod, 23)
    assert prod_only.locate(("spec", "hostnames")) == (prod, 28)


def test_locate_points_into_the_overlay_for_overlaid_fields(overlay_folder):
    folder, base, prod = overlay_folder
    gateway, route, _ = load_ok(str(folder), env="prod")
    assert (gateway.file, gateway.line) == (base, 1)
    assert gateway.locate(("spec", "listeners", 0, "port")) == (prod, 8)
    assert gateway.locate(("spec", "listeners", 0)) == (prod, 7)
    assert gateway.locate(("spec", "infrastructure", "labels", "tier")) == (prod, 11)
    assert gateway.locate(("spec", "infrastructure", "labels", "region")) == (prod, 12)
    # Untouched fields and merged mappings keep the base file's lines.
    assert gateway.locate(("spec", "infrastructure", "labels", "team")) == (base, 11)
    assert gateway.locate(("spec", "infrastructure", "labels")) == (base, 10)
    assert gateway.locate(("kind",)) == (base, 2)
    # The replaced list's old items and the deleted key are gone from the index.
    assert gateway.locate(("spec", "listeners", 1)) == (prod, 6)
    assert gateway.locate(("spec", "debug")) == (base, 5)
    assert route.locate(("spec", "hostnames")) == (prod, 21)
    assert route.error(("spec", "hostnames", 0), "bad") == ConfigError(prod, 21, "spec.hostnames[0]", "bad")


def test_overlay_replaces_a_value_with_a_mapping_and_back(tmp_path):
    write(tmp_path, "a.yaml", "kind: K\napiVersion: v\nmetadata: {name: n}\nspec:\n  x: 1\n  y: {a: 1}\n")
    overlay = write(
        tmp_path, "a.test.yaml",
        "kind: K\napiVersion: v\nmetadata: {name: n}\nspec:\n  x:\n    deep: {keep: 1, drop: null}\n  y: 2\n",
    )
    (document,) = load_ok(str(tmp_path), env="test")
    assert document.data["spec"] == {"x": {"deep": {"keep": 1}}, "y": 2}
    assert document.locate(("spec", "x", "deep", "keep")) == (overlay, 6)
    assert document.locate(("spec", "y", "a")) == (overlay, 7)


def test_overlay_matches_on_namespace(tmp_path):
    write(tmp_path, "r.yaml", "apiVersion: v\nkind: R\nmetadata: {name: n, namespace: team-a}\nspec: {x: 1}\n")
    write(tmp_path, "r.ci.yaml", "apiVersion: v\nkind: R\nmetadata: {name: n}\nspec: {x: 2}\n")
    first, second = load_ok(str(tmp_path), env="ci")
    # The overlay means namespace "default", so it does not touch team-a's document.
    assert first.data["spec"] == {"x": 1}
    assert second.data["metadata"] == {"name": "n"}


def test_overlay_uses_substitution_and_reports_its_own_errors(tmp_path):
    write(tmp_path, "a.yaml", "apiVersion: v\nkind: K\nmetadata: {name: n}\nspec: {port: 80}\n")
    overlay = write(tmp_path, "a.prod.yaml", "apiVersion: v\nkind: K\nmetadata: {name: n}\nspec:\n  port: ${PORT}\n")
    documents, errors = load(str(tmp_path), env="prod")
    assert documents == []
    assert [(e.file, e.line, e.field) for e in errors] == [(overlay, 5, "spec.port")]
    (document,) = load_ok(str(tmp_path), env="prod", environ={"PORT": "8443"})
    assert document.data["spec"] == {"port": 8443}


def test_overlay_next_to_an_explicit_base_file_is_used(overlay_folder):
    _, base, prod = overlay_folder
    assert discover_files([base], "prod") == ([base], [prod], [])
    assert len(load_ok(base, env="prod")) == 3


def test_overlay_of_a_yml_base(tmp_path):
    base = write(tmp_path, "gw.yml", "apiVersion: v\nkind: K\nmetadata: {name: n}\nx: 1\n")
    overlay = write(tmp_path, "gw.prod.yaml", "apiVersion: v\nkind: K\nmetadata: {name: n}\nx: 2\n")
    assert discover_files([str(tmp_path)], "prod") == ([base], [overlay], [])
    assert load_ok(str(tmp_path), env="prod")[0].data["x"] == 2


def test_a_dotted_name_without_base_is_a_base_file(tmp_path):
    path = write(tmp_path, "gateway.v2.yaml", "kind: K\n")
    assert discover_files([str(tmp_path)], None) == ([path], [], [])


def test_naming_an_overlay_without_its_base_is_an_error(overlay_folder):
    _, base, prod = overlay_folder
    documents, errors = load(prod, env="prod")
    assert documents == []
    assert errors == [
        ConfigError(
            prod, 0, "",
            f"this is the overlay of {base} for environment 'prod'; load {base} (or its folder) to use it",
        )
    ]


def test_overlay_is_not_applied_when_the_base_file_is_broken(tmp_path):
    base = write(tmp_path, "a.yaml", "apiVersion: v\nkind: K\nmetadata: {name: n}\nspec: [\n")
    write(tmp_path, "a.prod.yaml", "apiVersion: v\nkind: K\nmetadata: {name: n}\nspec: {x: 1}\n")
    documents, errors = load(str(tmp_path), env="prod")
    assert documents == []
    assert [e.file for e in errors] == [base]


def test_source_document_is_a_plain_dataclass():
    document = SourceDocument("a.yaml", 1, {"kind": "K"})
    assert document.locate(("spec", "x")) == ("a.yaml", 1)
    assert document.error(("spec",), "required") == ConfigError("a.yaml", 1, "spec", "required")


def test_recursive_alias_is_an_error(tmp_path):
    path = write(tmp_path, "a.yaml", "kind: A\nloop: &x [1, *x]\n")
    _, errors = load(path)
    assert errors == [ConfigError(path, 2, "loop[1]", "an alias refers to a value that contains it")]


def test_overlays_do_not_chain(tmp_path):
    write(tmp_path, "app.yaml", "kind: A\n")
    write(tmp_path, "app.v2.yaml", "kind: B\n")  # an overlay of app.yaml for environment "v2"
    chained = write(tmp_path, "app.v2.prod.yaml", "kind: C\n")
    documents, errors = load(str(tmp_path), env="prod")
    assert [d.data["kind"] for d in documents] == ["A"]
    assert [(e.file, e.line) for e in errors] == [(chained, 0)]
    assert "overlays do not apply to overlays" in errors[0].message
    assert load(str(tmp_path))[1] == []  # without that environment it is simply not used


# --- the fast path (fast_yaml) against the YAML path -----------------------------------------


def typed(value):
    """`value` with every scalar's type spelled out: 1, 1.0 and True must not compare equal."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, float):
        return ("float", repr(value))  # nan == nan
    return (type(value).__name__, value)


# Paths whose location every document of the corpus is asked for, existing or not.
PROBES = [(), ("kind",), ("spec",), ("spec", "rules", 0), ("spec", "rules", 0, "matches", 0, "path"),
          ("spec", "x", 3, "y"), ("a", "b", "c"), ("missing",)]


def both_paths(folder: Path, text: str, monkeypatch, environ=None, name="a.yaml"):
    """What the fast path and the YAML path make of `text`: documents (with their positions and
    the answers of `locate`) and errors, by path."""
    path = write(folder, name, text)
    seen = {}
    for fast in (True, False):
        monkeypatch.setattr(loader, "FAST_PATH", fast)
        result = load_files([path], environ=environ if environ is not None else {"PORT": "8080"})
        documents = []
        for document in result.documents:
            probes = list(document.positions) + PROBES  # asks for positions last on the fast path
            documents.append((document.file, document.line, typed(document.data), dict(document.positions),
                              [document.locate(p) for p in probes]))
        seen[fast] = (documents, result.errors, result.document_count)
    return seen[True], seen[False]


# Plain YAML the fast path reads itself (checked below), then YAML it leaves to PyYAML.
PLAIN_CORPUS = [
    ROUTE,
    "# routes\n---\n" + ROUTE + "---\n---\n# only a comment\n---\n" + ROUTE + "---\n",
    GATEWAY,
    # indentless and nested sequences, compact mappings, 1-, 3- and 4-space indents
    ("kind: K\nspec:\n rules:\n - name: a\n   matches:\n   - path: /a\n     headers:\n        - {name: x, value: y}\n"
    " - name: b\n   backendRefs: []\nstatus:\n    conditions:\n    -   type: Ready\n        status: 'True'\n"
    "    -\n        type: Other\n"),
    # YAML 1.1 typing of plain values, keys always strings
    ("kind: K\non: yes\noff: No\n80: http\nspec:\n  octal: 010\n  hex: 0x1F\n  bin: 0b101\n  under: 1_000\n"
    "  sexagesimal: 190:20:30\n  float: 1.5\n  exp: 1e3\n  exp2: 1.0e+3\n  inf: -.Inf\n  nan: .NaN\n"
    "  null1: ~\n  null2: null\n  null3:\n  date: 2001-12-14\n  stamp: 2001-12-14t21:59:43.10-05:00\n"
    "  spaced: 2002-12-14 21:59:43\n  t: t\n  y: y\n  n: N\n  neg: -1\n  plus: +.5\n"),
    # quoted values in block and flow context, URLs and other plain values with ":" "," and spaces
    ("kind: K\nspec:\n  a: 'it''s'\n  b: \"double\"\n  c: ['x', \"y\", z]\n  d: {k: 'v', j: \"w\"}\n"
    "  url: http://x:80/a?b=c\n  image: nginx:1.2\n  list: a,b\n  words: a  b c\n  dash: -x\n"
    "  flags: [--flag, -1, a-b]\n  paren: (x)\n  quoted_hash: 'a #b'\n"),
    # flow collections: nested, empty, spacing, trailing comments
    ("kind: K\nspec:\n  a: []\n  b: {}\n  c: [ ]\n  d: [[a, b], [], {x: [1, {y: z}]}]\n  e: {  k: v ,  j: [ 1 , 2 ]  }\n"
    "  f: [a b, c d] # a comment: [x]\n  g: {k: v}   # c\n  h: x # c\n  # a comment line\n     # deeper\n"
    "  i:\n  - 1   # c\n  -    2\n"),
    # several documents of one shape with different values (the shape is compiled on the second)
    "".join(
        f"---\napiVersion: v1\nkind: HTTPRoute\nmetadata: {{name: r-{i}}}\nspec:\n  port: {port}\n"
        f"  rules:\n    - matches: [{{path: {{type: Exact, value: {value}}}}}]\n      enabled: {flag}\n"
        for i, (port, value, flag) in enumerate(
            [(80, "/a", "true"), (443, "/b", "no"), ("http", "/c", "~"), ("0x1F", "1.5", "on"), ("-1", "x y", "f")])
    ),
    "",
    "# nothing\n---\n---\n",
]

YAML_CORPUS = [
    # anchors, aliases, merge keys
    "defaults: &d\n  timeout: 1s\n  retries: 3\nspec:\n  <<: *d\n  retries: 5\n  list: &l [1, 2]\n  again: *l\n",
    "base: &b {a: 1}\nother: &o {b: 2}\nspec:\n  <<: [*b, *o]\n  c: 3\n",
    "kind: A\nloop: &x [1, *x]\n",
    # ${VAR}, defaults, escapes, typed substitution, errors
    "kind: K\nspec:\n  port: ${PORT}\n  quoted: \"${PORT}\"\n  d: ${NOPE:-x}\n  lit: $${PORT}\n  url: http://h:${PORT}/\n",
    "kind: K\nspec:\n  bad: ${NOPE}\n  worse: '${1X}'\n",
    # block scalars, multi-line values, multi-line flows
    "kind: K\nspec:\n  text: |\n    line one\n    line two\n  folded: >\n    a\n    b\n",
    "kind: K\nspec:\n  plain: a\n    continued\n  flow: [a,\n    b]\n",
    # duplicate keys at various depths, among plain documents
    ROUTE + "---\nkind: K\nspec:\n  rules:\n    - name: a\n      m:\n        - {x: 1, x: 2}\n      name: b\n---\n" + ROUTE,
    # syntax errors: the documents before are kept
    ROUTE + "---\nkind: B\nmetadata:\n  name: x: y\n---\nkind: C\n",
    "kind: A\nspec: [1, 2\n",
    "kind: A\n\tbad: tab\n",
    # documents that are not mappings, unsupported tags, a huge number, an impossible date
    "kind: K\nwhen: 2001-13-40\n",
    "kind: A\n---\n- a list\n---\nplain text\n---\n42\n---\nkind: B\n",
    "spec:\n  port: !!int eighty\n  ref: !Ref other\n  big: !!int " + "9" * 5000 + "x\n",
    # keys the fast path leaves alone, non-ASCII, CRLF, document end markers, directives
    "kind: K\n\"quoted key\": 1\n? complex\n: value\n~: tilde\n",
    "kind: K\nname: café\n",
    "kind: K\r\nspec:\r\n  a: 1\r\n",
    "kind: K\n...\n---\nkind: L\n",
    "%YAML 1.1\n---\nkind: K\n",
    "--- kind: K\n",
    "kind: K\nspec:\n  - a\n  b: c\n",
    "kind: K\nspec:\n  a: 1\n   b: 2\n",
]


@pytest.mark.parametrize("text", PLAIN_CORPUS)
def test_fast_path_reads_plain_yaml_as_the_yaml_path_does(tmp_path, monkeypatch, text):
    assert fast_yaml.parse(text) is not None  # the case is one the fast path handles
    fast, slow = both_paths(tmp_path, text, monkeypatch)
    assert fast == slow
    assert fast[1] == []


@pytest.mark.parametrize("text", YAML_CORPUS)
def test_yaml_the_fast_path_leaves_alone_reads_as_before(tmp_path, monkeypatch, text):
    assert fast_yaml.parse(text) is None
    fast, slow = both_paths(tmp_path, text, monkeypatch, environ={"PORT": "8080"})
    assert fast == slow


def test_shapes_are_compiled_once_seen_twice_and_checked_per_document(tmp_path, monkeypatch):
    monkeypatch.setattr(fast_yaml, "_SHAPES", {})
    monkeypatch.setattr(fast_yaml, "_FLOW_SHAPES", {})
    doc = "---\nkind: K\nmetadata: {{name: {name}}}\nspec:\n  port: {port}\n  tags: [{tag}, b]\n"
    values = [("a", 80, "x"), ("b", "yes", "y"), ("c", "http", "1.5"), ("d", "~", "z"), ("e", "'q'", "w"),
              ("f", "[1, 2]", "v"), ("g", "x # c", "t")]
    text = "".join(doc.format(name=n, port=p, tag=t) for n, p, t in values)
    assert fast_yaml.parse(text) is not None
    assert any(type(entry) is tuple for entry in fast_yaml._SHAPES.values())  # a shape was compiled
    fast, slow = both_paths(tmp_path, text, monkeypatch)
    assert fast == slow
    assert [d[2]["spec"]["port"] for d in fast[0]] == [
        ("int", 80), ("bool", True), ("str", "http"), ("NoneType", None), ("str", "q"), [("int", 1), ("int", 2)],
        ("str", "x"),
    ]
    # Where a known shape holds something else than a plain value, the file reads as before.
    for odd in ("a: b", "a:", "*x", "&x", "!x", "!!int x", "|", "'q", "[a", "a]", "{a: 1", "- a", "? a", "a\tb",
                "${A}", "x\n    y", "2001-13-40", "=", "<< "):
        odd_text = text + doc.format(name="z", port=odd, tag="s") + doc.format(name="y", port=1, tag="s")
        fast, slow = both_paths(tmp_path, odd_text, monkeypatch, environ={"A": "1"}, name="b.yaml")
        assert fast == slow, odd


def test_positions_are_composed_on_first_need_once_per_file(tmp_path, monkeypatch):
    composed = []
    real = loader._read_text
    monkeypatch.setattr(loader, "_read_text", lambda file, *args: composed.append(file) or real(file, *args))
    first = write(tmp_path, "a.yaml", ROUTE + "---\n" + ROUTE + "---\n" + ROUTE)
    second = write(tmp_path, "b.yaml", ROUTE)
    with_variable = write(tmp_path, "c.yaml", "kind: K\nport: ${PORT}\n")
    documents = load_ok(str(tmp_path), environ={"PORT": "80"})
    assert composed == [with_variable]  # the ${VAR} file took the YAML path; the others not yet
    assert documents[1].locate(("spec", "rules", 0, "backendRefs", 0, "port")) == (first, 17 + 16)
    assert composed == [with_variable, first]
    assert documents[0].locate(("kind",)) == (first, 2)  # the file's other documents: no new work
    assert documents[2].error(("spec", "hostnames"), "bad") == ConfigError(first, 34 + 6, "spec.hostnames", "bad")
    assert composed == [with_variable, first]
    assert documents[3].locate(("metadata", "name")) == (second, 4)
    assert composed == [with_variable, first, second]


def test_positions_are_those_of_the_text_that_was_read(tmp_path):
    path = write(tmp_path, "a.yaml", ROUTE)
    cache = loader.DocumentCache()
    (document,), _ = load_documents([path], environ={}, cache=cache)
    Path(path).write_text("# moved down\n\n\n" + ROUTE)  # not reloaded: the document is the old text's
    assert document.locate(("kind",)) == (path, 2)


def test_the_old_path_switch_gives_positions_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "FAST_PATH", False)
    path = write(tmp_path, "a.yaml", ROUTE)
    (document,) = load_ok(path)
    assert document.__dict__["_positions"]  # computed while reading
    assert "_source" not in document.__dict__


def test_a_scale_config_takes_the_fast_path_but_for_its_variable_files(tmp_path, monkeypatch):
    """The shape of bench/scale.py's config: ${VAR}s in the Gateway and Backends files only."""
    composed = []
    real = loader._read_text
    monkeypatch.setattr(loader, "_read_text", lambda file, *args: composed.append(file) or real(file, *args))
    write(tmp_path, "gateway.yaml", "apiVersion: v\nkind: Gateway\nmetadata: {name: edge}\nspec:\n  listeners:\n"
          "    - name: http\n      protocol: HTTP\n      port: ${LISTEN}\n")
    write(tmp_path, "backends.yaml", "---\n".join(
        f"apiVersion: v\nkind: Backend\nmetadata: {{name: b-{b}}}\nspec:\n  endpoints:\n"
        f"    - address: 127.0.0.1\n      port: ${{UPSTREAM}}\n" for b in range(3)))
    for f in range(3):
        write(tmp_path, f"routes-{f}.yaml", "---\n".join(
            f"apiVersion: v\nkind: HTTPRoute\nmetadata: {{name: r-{i}}}\nspec:\n  parentRefs: [{{name: edge}}]\n"
            f"  rules:\n    - matches: [{{path: {{type: Exact, value: /r/{i}}}}}]\n"
            f"      backendRefs: [{{group: g, kind: Backend, name: b-{i % 3}}}]\n" for i in range(f * 5, f * 5 + 5)))
    documents = load_ok(str(tmp_path), environ={"LISTEN": "8080", "UPSTREAM": "9000"})
    assert sorted(os.path.basename(f) for f in composed) == ["backends.yaml", "gateway.yaml"]
    (gateway,) = [d for d in documents if d.data["kind"] == "Gateway"]
    assert gateway.data["spec"]["listeners"][0]["port"] == 8080
    assert documents[-1].data["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/r/14"
    assert documents[-1].locate(("spec", "rules", 0, "backendRefs")) == (str(tmp_path / "routes-2.yaml"), 8 + 4 * 9)


# A small random YAML writer: mostly the plain subset, with odd values, odd keys and random
# edits mixed in, so both the fast path and its refusals are exercised.
FUZZ_PLAIN = ["edge", "r-1", "/r/1", "meshgate.io", "a b", "x", "~", "null", "yes", "No", "on", "80", "-1", "0x1F",
              "010", "1.5", "1e3", ".inf", "190:20:30", "2001-12-14", "http://x:80/a", "nginx:1.2", "-x", "a,b",
              "a=b", "(x)", "t", "1_000", "+.5", "a?b", "a!b", "$5", "x:y:z", "2002-12-14 21:59:43", "'q'", '"q"',
              "'x y'", '"80"', "''", '""', "'yes'"]
FUZZ_ODD = ["a: b", "a:", ":a", "-", "- a", "a #b", "a#b", "*x", "&x", "!x", "|x", ">x", "%x", "@x", "`x", "?x",
            "=", "<<", "'it''s'", "'a: b'", "'a #b'", '"a, b"', "'a'b'", "'a", '"a\\"b"', "'''", "'a'' b'", "[a",
            "a]", "{a", "a}", "café", "a\tb", "${A}", "$${A}", "", "x ", "0xG"]
FUZZ_KEYS = ["name", "kind", "on", "yes", "80", "a.b/c", "app-name", "x_y", "port", "value", "type", "k"]
FUZZ_ODD_KEYS = ["~", "a b", '"q"', "<<", "a:b", "[k]", "? k", "-x", "null"]


class FuzzWriter:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def scalar(self, flow: bool = False) -> str:
        rng = self.rng
        if rng.random() < 0.02:
            return rng.choice(FUZZ_ODD)
        return rng.choice([v for v in FUZZ_PLAIN if not flow or (":" not in v and "," not in v)])

    def keys(self, count: int) -> list[str]:
        keys = self.rng.sample(FUZZ_KEYS, count)
        if self.rng.random() < 0.02:
            keys.append(self.rng.choice(FUZZ_ODD_KEYS + keys))  # an odd key, or a duplicate
        return keys

    def flow(self, depth: int = 0) -> str:
        rng = self.rng
        if depth > 2 or rng.random() < 0.4:
            return self.scalar(True)
        space = rng.choice(["", "", " "])
        if rng.random() < 0.5:
            return "[" + space + ", ".join(self.flow(depth + 1) for _ in range(rng.randint(0, 3))) + space + "]"
        keys = self.keys(rng.randint(0, 3))
        return "{" + space + ", ".join(f"{k}: {self.flow(depth + 1)}" for k in keys) + space + "}"

    def comment(self) -> str:
        return self.rng.choice(["", "", "", "", " # c: [x]", "   "])

    def mapping(self, indent: int, depth: int, lines: list[str], step: int) -> None:
        for key in self.keys(self.rng.randint(1, 4)):
            self.value(" " * indent + key + ":", indent, depth, lines, step)

    def value(self, prefix: str, indent: int, depth: int, lines: list[str], step: int) -> None:
        rng = self.rng
        choice = rng.random() * (0.5 if depth > 3 else 1)
        if choice < 0.35:
            lines.append(prefix + rng.choice([" ", "  "]) + self.scalar() + self.comment())
        elif choice < 0.5:
            lines.append(prefix + " " + self.flow() + self.comment())
        elif choice < 0.55:
            lines.append(prefix + self.comment())
        elif choice < 0.75:
            lines.append(prefix + self.comment())
            self.mapping(indent + step, depth + 1, lines, step)
        else:
            lines.append(prefix + self.comment())
            self.sequence(indent if rng.random() < 0.4 else indent + step, depth + 1, lines, step)

    def sequence(self, indent: int, depth: int, lines: list[str], step: int) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 3)):
            dash = " " * indent + "-" + rng.choice([" ", " ", "  "])
            choice = rng.random()
            if choice < 0.3:
                lines.append(dash + self.scalar() + self.comment())
            elif choice < 0.4:
                lines.append(dash + self.flow())
            elif choice < 0.85:  # "- key: value" and the keys lined up under it
                column = len(dash)
                for n, key in enumerate(self.keys(rng.randint(1, 3))):
                    self.value((dash if n == 0 else " " * column) + key + ":", column, depth + 1, lines, step)
            else:
                lines.append(dash.rstrip())
                self.mapping(indent + step, depth + 1, lines, step)

    def document(self) -> str:
        lines: list[str] = []
        self.mapping(0, 0, lines, self.rng.choice([2, 2, 4, 1, 3]))
        return "\n".join(lines)

    def reshaped(self, document: str) -> str:
        """`document` with some values replaced: the same shape, or a near one."""
        parts = fast_yaml._VALUES.split(document)
        for index in range(2, len(parts), 3):
            if self.rng.random() < 0.3:
                parts[index] = self.scalar(flow=True)
        return "".join(parts)

    def text(self) -> str:
        rng = self.rng
        documents = []
        for _ in range(rng.randint(1, 3)):
            document = self.document()
            documents += [document] + [self.reshaped(document) for _ in range(rng.randint(0, 3))]
        text = rng.choice(["", "---\n", "# c\n"]) + "\n---\n".join(documents) + rng.choice(["\n", "", "\n---\n"])
        for _ in range(rng.randint(0, 2) if rng.random() < 0.3 else 0):  # random edits
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice(" -:#[]{},'\"\n*&!|>?\t.x0") + text[i + rng.randint(0, 1):]
        return text


def test_fast_and_yaml_paths_agree_on_random_yaml(tmp_path, monkeypatch):
    monkeypatch.setattr(fast_yaml, "_SHAPES", {})
    monkeypatch.setattr(fast_yaml, "_FLOW_SHAPES", {})
    fast_taken = 0
    for seed in range(400):
        text = FuzzWriter(seed).text()
        fast_taken += fast_yaml.parse(text) is not None
        fast, slow = both_paths(tmp_path, text, monkeypatch, environ={"A": "1"})
        assert fast == slow, f"seed {seed}:\n{text}"
    assert fast_taken > 100  # the corpus does exercise the fast path


def test_flow_shapes_agree_with_the_yaml_path(tmp_path, monkeypatch):
    """Flow collections of one shape in documents of different shapes: the flow's shape is
    compiled on its second sighting and used for the third, whatever values it then holds."""
    monkeypatch.setattr(fast_yaml, "_SHAPES", {})
    monkeypatch.setattr(fast_yaml, "_FLOW_SHAPES", {})
    for seed in range(300):
        writer = FuzzWriter(seed)
        flow = writer.flow()
        while not flow.startswith(("[", "{")):
            flow = writer.flow()
        other = writer.reshaped(flow)
        text = f"a: {flow}\n---\nb: {flow}\n---\nc: {other}\n---\nd:\n  - {other}\n"
        fast, slow = both_paths(tmp_path, text, monkeypatch, environ={"A": "1"})
        assert fast == slow, f"seed {seed}:\n{text}"
    assert any(type(entry) is tuple for entry in fast_yaml._FLOW_SHAPES.values())


def test_a_file_read_again_keeps_its_unchanged_documents(tmp_path):
    """An edit to one document of a file: the others keep their document objects (and so their
    validated objects and translations downstream), unless they moved to other lines."""
    from meshgate.providers.file import FileProvider

    def doc(name: str, port: int, comment: str = "") -> str:
        return (f"apiVersion: meshgate.io/v1alpha1\nkind: Backend\nmetadata: {{name: {name}}}\n{comment}"
                f"spec:\n  endpoints: [{{address: 127.0.0.1, port: {port}}}]\n")

    path = tmp_path / "backends.yaml"

    def write(*docs: str) -> list:
        path.with_suffix(".tmp").write_text("---\n".join(docs))
        os.replace(path.with_suffix(".tmp"), path)  # a new inode: read again whatever the clock
        return provider.load().documents

    provider = FileProvider([str(tmp_path)])
    a, b, c = write(doc("a", 1), doc("b", 2), doc("c", 3))
    a2, b2, c2 = write(doc("a", 1), doc("b", 20), doc("c", 3))
    assert a2 is a and c2 is c and b2 is not b
    assert b2.data["spec"]["endpoints"][0]["port"] == 20
    # One more line in the first document: the others moved, so their lines are read anew.
    a3, b3, c3 = write(doc("a", 1, "# a comment\n"), doc("b", 20), doc("c", 3))
    assert a3 is not a2 and b3 is not b2 and c3 is not c2
    assert [d.line for d in (a3, b3, c3)] == [1, 8, 14]
    assert c3.locate(("spec", "endpoints", 0)) == (str(path), 18)
