"""Tests for meshgate.providers.file (loader, discover): files, lines, ${VAR} substitution and environment overlays."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from meshgate.errors import ConfigError, ConfigErrors, MeshgateError, format_field_path
from meshgate.providers.file import SourceDocument, discover_files, load_documents

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
