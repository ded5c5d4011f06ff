"""Read configuration files into documents that remember the file and line of every field.

Which files are read
--------------------
Each path given is a file or a folder; `meshgate.providers.file.discover` says which files that
means (the watcher uses the same answer). Only regular files (or links to one) of at most
`DEFAULT_MAX_FILE_BYTES` are read. A file may hold several documents separated by ``---``;
empty documents are ignored (an empty file is valid and holds none), and every other document
must be a mapping (``apiVersion``, ``kind``, ``metadata``, ``spec``).

Environment variables
---------------------
Values (never keys) may refer to environment variables:

- ``${NAME}`` is replaced by the value of NAME; it is an error if NAME is not set.
- ``${NAME:-default}`` is replaced by ``default`` when NAME is not set or is empty.
- ``$${`` is a literal ``${``.

A value may hold several references: ``url: http://${HOST}:${PORT:-80}/``. A variable's value is
used as it is; it is not searched for further references.

An unquoted value is typed after substitution, the way YAML would have typed the text written
there: with ``PORT=8080``, ``port: ${PORT}`` is the number 8080, and with ``TLS=true``,
``enabled: ${TLS}`` is the boolean true. A quoted value (``port: "${PORT}"``) or a block
value (``|``, ``>``) stays a string.

Environment overlays
--------------------
A file ``NAME.ENV.yaml`` next to ``NAME.yaml`` (or ``NAME.yml``) is an *overlay* of that file
for the environment ENV, for example ``gateway.yaml`` with ``gateway.prod.yaml`` and
``gateway.staging.yaml``. Overlays are never read on their own. When loading for environment
ENV (``--env ENV``), the documents of ``NAME.ENV.yaml`` are merged over those of ``NAME.yaml``:

- an overlay document applies to the base document with the same ``apiVersion``, ``kind``,
  ``metadata.namespace`` (``default`` when absent) and ``metadata.name``;
- mappings merge key by key, at any depth;
- a list or a single value replaces the base value entirely (to change one rule of a route,
  repeat the route's whole ``rules`` list);
- a key whose value is null (``key: null``, ``key: ~`` or just ``key:``) removes that key;
- an overlay document that matches no base document is added as a new document.

This is JSON Merge Patch (RFC 7386) applied per document. Overlays get the same variable
substitution, and a problem in a field set by an overlay is reported at the overlay's line.

YAML anchors, aliases and merge keys (``<<: *defaults``) work as in YAML 1.1. Mapping keys are
always taken as strings (``on:`` is the key "on", not a boolean).

Errors
------
Loading does not stop at the first problem: every file is read and every problem is returned as
a `ConfigError` with its file and line. A document with a problem is left out of the result,
so callers must treat any error as failure. User values quoted in messages are clipped to ~80
characters.

Speed
-----
A file in the plain subset of YAML most configs are written in (see `fast_yaml`) is read
straight to data, without PyYAML's nodes, and the positions of its documents are worked out
the first time one is needed (an error to report): 10,000 routes load ~5x faster, and a
document holds no positions dict until then. Any other file (``${VAR}``, anchors, block
scalars, errors...) is read through PyYAML's nodes, as are the files an overlay applies to when
the overlay is merged. Both give the same documents, positions and errors.
"""

from __future__ import annotations

import copy
import gc
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshgate.errors import ConfigError, format_field_path
from meshgate.providers.file import fast_yaml
from meshgate.providers.file.discover import Discovery, discover, named_files
from meshgate.providers.file.safe_read import (
    DEFAULT_MAX_FILE_BYTES,
    FileReadError,
    clip_value,
    read_regular_file,
)

__all__ = ["DocumentCache", "LoadResult", "SourceDocument", "load_documents", "load_files"]

FieldPath = tuple[str | int, ...]
Position = tuple[str, int]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"

_NOT_A_MAPPING = "a document must be a mapping (apiVersion, kind, metadata, spec)"

# Aliases can make a small file expand into a huge tree ("billion laughs"); stop well before that.
_MAX_NODES_PER_DOCUMENT = 1_000_000


class _Positions:
    """`SourceDocument.positions`: a dict, or for a document read by the fast path (see
    `fast_yaml`), worked out the first time it is read (an error to report), for every
    document of the file at once."""

    def __get__(self, document: SourceDocument | None, owner: type | None = None) -> Any:
        if document is None:
            return None  # the dataclass default: no positions given
        positions = document.__dict__["_positions"]
        if positions is None:
            source = document.__dict__.get("_source")
            positions = source[0].positions(source[1]) if source is not None else {}
            document.__dict__["_positions"] = positions
        return positions

    def __set__(self, document: SourceDocument, value: Any) -> None:
        document.__dict__["_positions"] = None if value is self else value


@dataclass
class SourceDocument:
    """One YAML document, with the file and line of each of its fields."""

    file: str
    """File the document comes from (the base file when an overlay was merged into it)."""
    line: int
    """1-based line where the document's content starts."""
    data: dict[str, Any]
    """The parsed mapping, after ``${VAR}`` substitution and overlay merge."""
    positions: dict[FieldPath, Position] = field(default=_Positions(), repr=False)  # type: ignore[assignment]
    """(file, line) of every key and list item, by field path; read it through `locate`."""
    parsed: Any = field(default=None, repr=False, compare=False)
    """Validation result cached by `meshgate.api.config` (documents are reused while their file is unchanged)."""

    def locate(self, path: FieldPath) -> Position:
        """
        (file, line) of the deepest node on `path` that exists: the line of the key for a
        mapping entry, of the item for a list item. A path that does not exist (a missing
        required field) falls back to its nearest existing parent. Fields set by an overlay
        point into the overlay file.
        """
        positions = self.positions
        for end in range(len(path), 0, -1):
            position = positions.get(path[:end])
            if position is not None:
                return position
        return (self.file, self.line)

    def error(self, path: FieldPath, message: str) -> ConfigError:
        """A `ConfigError` about the field at `path`, located with `locate`."""
        file, line = self.locate(path)
        return ConfigError(file, line, format_field_path(path), message)


class _FilePositions:
    """The positions of the documents of one file read by the fast path: composed with PyYAML
    (the slow path) the first time one is needed, then kept. Only the file's text is held until
    then, much less than a positions dict per document."""

    _lock = threading.Lock()  # a worker thread and the event loop may both ask

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text: str | None = text
        self.by_document: list[dict[FieldPath, Position]] | None = None

    def positions(self, index: int) -> dict[FieldPath, Position]:
        with self._lock:
            if self.by_document is None:
                assert self.text is not None
                gc_was_enabled = gc.isenabled()
                gc.disable()  # the nodes are garbage at once: no reason to walk everything alive
                try:
                    # Positions do not depend on ${VAR} values (and the fast path read no ${VAR}).
                    result = _read_text(self.file, self.text, {})
                finally:
                    if gc_was_enabled:
                        gc.enable()
                self.by_document = [document.positions for document, _ in result.documents]
                self.text = None
            return self.by_document[index] if index < len(self.by_document) else {}


class DocumentCache:
    """Remembers each file's documents by (mtime, size, inode), so that a reload re-reads only the
    files that changed: at 10,000 routes, editing one file costs one file's parse, not all of them.

    `${VAR}` values are read when a file is (re)read; the environment of a running process is
    not expected to change.
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple[int, int, int], _FileResult]] = {}

    def read(self, file: str, environ: Mapping[str, str], max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> _FileResult:
        # Stamped before reading: a write during the read changes the stamp, so it is re-read.
        stamp = file_stamp(file)
        if stamp is None:
            self._files.pop(file, None)
            return _read_file(file, environ, max_bytes)  # reports the problem
        cached = self._files.get(file)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        result = _read_file(file, environ, max_bytes)
        if cached is not None:
            _keep_unchanged(cached[1], result)
        self._files[file] = (stamp, result)
        return result

    def retain(self, files: Iterable[str]) -> None:
        """Forget every file but `files` (those deleted or no longer found)."""
        keep = set(files)
        for file in [f for f in self._files if f not in keep]:
            del self._files[file]


def _keep_unchanged(before: _FileResult, after: _FileResult) -> None:
    """In a file read again, keep the document objects of its documents whose text and line are
    unchanged (with their validated object, `parsed`): an edit to one document of a file then
    costs the rest of the file nothing downstream (the store and the translators reuse what they
    built for those objects). Only documents read by the fast path know their text."""
    for i, ((new, ok), (previous, _)) in enumerate(zip(after.documents, before.documents)):
        region = new.__dict__.get("_region")
        if (region is not None and region == previous.__dict__.get("_region") and new.line == previous.line
                and new.file == previous.file and new.data == previous.data):
            after.documents[i] = (previous, ok)


def file_stamp(file: str) -> tuple[int, int, int] | None:
    """(mtime, size, inode) of `file` (following links), None when it cannot be stat'ed. A new
    inode catches an editor's rename-over-save and a ConfigMap's link swap."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class LoadResult:
    """Everything one load found; `load_documents` returns only (documents, errors)."""

    documents: list[SourceDocument]
    """The documents that loaded cleanly, in order of files then position in the file."""
    errors: list[ConfigError]
    """Every problem, sorted by file, line and field."""
    document_count: int
    """Documents found in all files (after overlays), including those left out for errors."""
    files: list[str]
    """The files read: base files, each followed by its overlays."""
    named_files: list[str]
    """Certificate and key files the documents name (see `discover.named_files`)."""

    @property
    def empty(self) -> bool:
        """True when the paths hold no document at all and nothing went wrong: for `run` a
        warning, for `validate` an error ("no objects found in PATHS")."""
        return self.document_count == 0 and not self.errors


def load_documents(
    paths: Sequence[str],
    env: str | None = None,
    environ: Mapping[str, str] | None = None,
    cache: DocumentCache | None = None,
) -> tuple[list[SourceDocument], list[ConfigError]]:
    """
    Read every document under `paths`, with the overlays for `env` merged in and ``${VAR}``
    taken from `environ` (default: ``os.environ``).

    Never raises for a problem in the files: returns the documents that loaded cleanly, in
    order of files then position in the file, and every problem found, sorted by file, line
    and field. `load_files` says more (how many documents there were, which files were read).
    """
    result = load_files(paths, env, environ, cache)
    return result.documents, result.errors


def load_files(
    paths: Sequence[str],
    env: str | None = None,
    environ: Mapping[str, str] | None = None,
    cache: DocumentCache | None = None,
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    discovery: Discovery | None = None,
) -> LoadResult:
    """`load_documents`, with the whole `LoadResult`. `discovery` is `discover(paths, env)`
    when the caller has it already."""
    if environ is None:
        environ = os.environ
    if cache is not None:
        read = lambda file: cache.read(file, environ, max_file_bytes)
    else:
        read = lambda file: _read_file(file, environ, max_file_bytes)
    found = discovery if discovery is not None else discover(paths, env)
    gc_was_enabled = gc.isenabled()
    # Reading allocates a few dozen objects per document, all kept: the cyclic GC would rescan
    # them many times over (10,000 routes: ~0.45 s -> ~0.25 s). The pipeline pauses it too.
    gc.disable()
    try:
        return _load(found, read)
    finally:
        if gc_was_enabled:
            gc.enable()


def _load(found: Discovery, read: Any) -> LoadResult:
    bases, overlays, errors = found.bases, found.overlays, list(found.errors)
    documents: list[SourceDocument] = []
    every: list[SourceDocument] = []  # with the documents left out for errors
    for base in bases:
        base_file = read(base)
        errors.extend(base_file.errors)
        loaded = base_file.documents
        if overlays.get(base):
            # Merging writes into the base documents: work on copies, the cache keeps the originals.
            loaded = [(SourceDocument(d.file, d.line, copy.deepcopy(d.data), dict(d.positions)), ok) for d, ok in loaded]
        for overlay in overlays.get(base, []):
            overlay_file = read(overlay)
            errors.extend(overlay_file.errors)
            # When the base file could not be read to its end, an unmatched overlay document
            # may belong to a base document we never saw: adding it would only add noise.
            loaded = _apply_overlay(loaded, overlay_file.documents, add_new=base_file.complete)
        documents.extend(document for document, ok in loaded if ok)
        every.extend(document for document, _ in loaded)
    errors.sort(key=lambda e: (e.file, e.line, e.field))
    # Files named by documents that failed to load are still worth watching.
    return LoadResult(documents, errors, len(every), found.files, named_files(every))


# --- reading one file ------------------------------------------------------------------------


@dataclass
class _FileResult:
    documents: list[tuple[SourceDocument, bool]]  # (document, loaded without errors)
    errors: list[ConfigError]
    complete: bool  # False when reading stopped early (unreadable file, YAML syntax error)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser (C) is ~12x faster than PyYAML's pure-Python one: 10,000 routes load in
    about a second and a half instead of ten (the fast path: a fifth of that). Both produce the
    same nodes and marks.

    The composer still calls back into Python for every node; these overrides make those
    calls cheap. They are exact as long as no *path* resolvers are registered (none are:
    only YAML 1.1's implicit scalar resolvers, which `resolve` still applies).
    """

    def descend_resolver(self, current_node, current_index):
        pass

    def ascend_resolver(self):
        pass

    def resolve(self, kind, value, implicit):
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in self.yaml_implicit_resolvers.get(value[:1] if value else "", ()):
                    if regexp.match(value):
                        return tag
            return self.DEFAULT_SCALAR_TAG
        return self.DEFAULT_SEQUENCE_TAG if kind is SequenceNode else self.DEFAULT_MAPPING_TAG


# With no wildcard implicit resolvers registered, resolving by first character is complete.
assert not _Loader.yaml_implicit_resolvers.get(None) and not _Loader.yaml_path_resolvers


def _explicitly_tagged(node: ScalarNode, text: str) -> bool:
    """Whether the scalar was written with a tag (`!!str ${PORT}`), read off the source text:
    a node's start mark is at its anchor or tag when it has one."""
    rest = text[node.start_mark.index : node.start_mark.index + 512]
    if rest.startswith("&"):  # `&anchor !!str value`: skip the anchor
        rest = rest.split(None, 1)[1] if len(rest.split(None, 1)) > 1 else ""
    return rest.startswith("!")


FAST_PATH = True
"""Read plain files with `fast_yaml` (positions on first need). False: every file through
PyYAML's nodes, positions up front (bench/load.py compares the two)."""


def _read_file(file: str, environ: Mapping[str, str], max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> _FileResult:
    try:
        raw = read_regular_file(file, max_bytes)
    except FileReadError as exc:
        error = ConfigError(file, 0, "", f"cannot read: {exc.reason}")
        return _FileResult([], [error], False)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        message = f"cannot read: not UTF-8 (byte 0x{raw[exc.start]:02x} on line {bad_line})"
        return _FileResult([], [ConfigError(file, 0, "", message)], False)
    if FAST_PATH:
        found = fast_yaml.parse(text)
        if found is not None:
            source = _FilePositions(file, text)
            lines = text.split("\n")
            documents = []
            for index, (line, data) in enumerate(found):
                document = SourceDocument(file, line, data)
                document.__dict__["_source"] = (source, index)
                # Its text (up to the next document's first line): equal text at the same line
                # gives equal data and positions, so a re-read can keep the document (_keep_unchanged).
                end = found[index + 1][0] - 1 if index + 1 < len(found) else len(lines)
                document.__dict__["_region"] = "\n".join(lines[line - 1:end])
                documents.append((document, True))
            return _FileResult(documents, [], True)
    return _read_text(file, text, environ)


def _read_text(file: str, text: str, environ: Mapping[str, str]) -> _FileResult:
    """Read `text` through PyYAML's nodes: every YAML feature, every error, positions up front."""
    result = _FileResult([], [], True)
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:  # the reader rejects control characters up front
        result.errors.append(_syntax_error(file, text, exc))
        result.complete = False
        return result
    try:
        while True:
            try:
                if not loader.check_node():
                    break
                root = loader.get_node()
            except yaml.YAMLError as exc:
                # The rest of the file cannot be parsed; documents before the error are kept.
                result.errors.append(_syntax_error(file, text, exc))
                result.complete = False
                break
            if isinstance(root, ScalarNode) and root.tag == _NULL_TAG:
                continue  # an empty document, such as a trailing "---"
            builder = _DocumentBuilder(file, loader, environ, text)
            document = builder.build(root)
            result.errors.extend(builder.errors)
            if document is not None:
                result.documents.append((document, not builder.errors))
    finally:
        loader.dispose()
    return result


def _syntax_error(file: str, text: str, exc: yaml.YAMLError) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        # libyaml and PyYAML word problems differently, and may quote the text (an alias name)
        # that is wrong: keep their words, clip what they quote.
        message = _QUOTED.sub(lambda m: m[1] + clip_value(m[2]) + m[1], exc.problem or exc.context or "invalid YAML")
        lines = text.splitlines()
        source = lines[line - 1] if 0 < line <= len(lines) else ""
        if "${" in source and "{" in source.split("${")[0]:
            # `{port: ${PORT}}`: inside a flow mapping `{` is YAML syntax, so the value needs quotes.
            message += ' (inside {...} or [...], quote values that use ${VAR}: "${VAR}")'
        elif "cannot start any token" in message and "\t" in source[: mark.column + 1 if mark else 0]:
            message += " (YAML is indented with spaces, not tabs)"
        return ConfigError(file, line, "", message)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        message = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        return ConfigError(file, line, "", message)
    return ConfigError(file, 0, "", str(exc))


_QUOTED = re.compile(r"""(['"])(.*?)\1""")


class _TooManyNodes(Exception):
    pass


class _DocumentBuilder:
    """
    Turns one composed YAML document into plain Python data, recording the line of every key
    and list item, substituting ``${VAR}`` in values, and collecting errors instead of raising.
    """

    def __init__(self, file: str, loader: yaml.SafeLoader, environ: Mapping[str, str], text: str) -> None:
        self.file = file
        self.text = text
        self.loader = loader
        self.environ = environ
        self.errors: list[ConfigError] = []
        self.positions: dict[FieldPath, Position] = {}
        self._nodes = 0
        self._active: set[int] = set()  # collections being built, to catch recursive aliases
        self._reported: set[int] = set()  # an aliased node is reported once, not per use

    def build(self, root: Node) -> SourceDocument | None:
        line = root.start_mark.line + 1
        if not isinstance(root, MappingNode):
            self.errors.append(ConfigError(self.file, line, "", _NOT_A_MAPPING))
            return None
        try:
            data = self._value(root, ())
        except _TooManyNodes:
            message = (
                f"document too large: more than {_MAX_NODES_PER_DOCUMENT} values "
                "once aliases are expanded"
            )
            self.errors.append(ConfigError(self.file, line, "", message))
            return None
        if not isinstance(data, dict):  # a mapping with an unsupported tag
            return None
        return SourceDocument(self.file, line, data, self.positions)

    def _error(self, node: Node, path: FieldPath, message: str) -> None:
        if id(node) in self._reported:
            return
        self._reported.add(id(node))
        line = node.start_mark.line + 1
        self.errors.append(ConfigError(self.file, line, format_field_path(path), message))

    def _value(
        self, node: Node, path: FieldPath, positions: dict[FieldPath, Position] | None = None
    ) -> Any:
        self._nodes += 1
        if self._nodes > _MAX_NODES_PER_DOCUMENT:
            raise _TooManyNodes
        if positions is None:
            positions = self.positions
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            self._error(node, path, "an alias refers to a value that contains it")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ_TAG:
                    self._error(node, path, f"unsupported tag {clip_value(node.tag, quote=True)} on a list")
                    return None
                items = []
                for index, item in enumerate(node.value):
                    item_path = (*path, index)
                    positions[item_path] = (self.file, item.start_mark.line + 1)
                    items.append(self._value(item, item_path, positions))
                return items
            if node.tag != _MAP_TAG:
                self._error(node, path, f"unsupported tag {clip_value(node.tag, quote=True)} on a mapping")
                return None
            return self._mapping(node, path, positions)
        finally:
            self._active.discard(id(node))

    def _mapping(
        self, node: MappingNode, path: FieldPath, positions: dict[FieldPath, Position]
    ) -> dict[str, Any]:
        own: list[tuple[str, ScalarNode, Node]] = []
        own_lines: dict[str, int] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                message = "a mapping key must be a plain value, not a list or mapping"
                self._error(key_node, path, message)
                continue
            key = key_node.value
            if key in own_lines:
                self._error(key_node, (*path, key), "duplicate key")
                continue
            own_lines[key] = key_node.start_mark.line + 1
            own.append((key, key_node, value_node))

        result: dict[str, Any] = {}
        # YAML merge keys: the mapping's own keys win, then earlier merged mappings win over
        # later ones. Merged values keep the lines where they were written (the anchor).
        for merge in merges:
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, MappingNode):
                    message = "a merge key (<<) takes a mapping or a list of mappings"
                    self._error(source, path, message)
                    continue
                merged_positions: dict[FieldPath, Position] = {}
                merged = self._value(source, path, merged_positions)
                for key, value in (merged or {}).items():
                    if key in own_lines or key in result:
                        continue
                    result[key] = value
                    _copy_positions(positions, merged_positions, (*path, key))

        for key, key_node, value_node in own:
            key_path = (*path, key)
            positions[key_path] = (self.file, own_lines[key])
            result[key] = self._value(value_node, key_path, positions)
        return result

    def _scalar(self, node: ScalarNode, path: FieldPath) -> Any:
        if "$" in node.value:
            try:
                text = _substitute(node.value, self.environ)
            except _SubstitutionError as exc:
                self._error(node, path, str(exc))
                return node.value
            if text != node.value:
                tag = node.tag
                # Only scalars typed implicitly are re-typed after substitution; `!!str ${PORT}`
                # stays a string, as its author asked. (Plain style is None or "" by parser.)
                if not node.style and not _explicitly_tagged(node, self.text):
                    tag = self.loader.resolve(ScalarNode, text, (True, False))
                node = ScalarNode(tag, text, node.start_mark, node.end_mark, style=node.style)
        if node.tag == _STR_TAG:
            return node.value  # the common case, without PyYAML's generic constructor
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self._error(node, path, clip_value(exc.problem or str(exc), 200))
        except Exception:  # noqa: BLE001 - PyYAML's constructors raise ValueError and others
            kind = clip_value(node.tag.rsplit(":", 1)[-1])
            self._error(node, path, f"{clip_value(node.value, quote=True)} is not a valid {kind}")
        finally:
            # A failed construction leaves the node marked "in progress"; clear it so an alias
            # to the same node reports the real problem instead of a recursion error.
            self.loader.recursive_objects.clear()
        return node.value


# --- ${VAR} substitution ---------------------------------------------------------------------


class _SubstitutionError(Exception):
    pass


_REFERENCE = re.compile(r"\$?\$\{")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _substitute(text: str, environ: Mapping[str, str]) -> str:
    """`text` with ``${NAME}``, ``${NAME:-default}`` and ``$${`` replaced (see module docstring)."""
    out: list[str] = []
    pos = 0
    while (match := _REFERENCE.search(text, pos)) is not None:
        out.append(text[pos : match.start()])
        if match.group() == "$${":
            out.append("${")
            pos = match.end()
            continue
        end = text.find("}", match.end())
        if end < 0:
            raise _SubstitutionError("unclosed ${ (write $${ for a literal ${)")
        expression = text[match.end() : end]
        name, has_default, default = expression.partition(":-")
        shown = clip_value(f"${{{expression}}}")  # a pasted blob must not flood the log
        if not _VARIABLE_NAME.fullmatch(name):
            raise _SubstitutionError(
                f"invalid variable reference {shown}: expected ${{NAME}} or ${{NAME:-default}}"
            )
        if "${" in default:
            raise _SubstitutionError(f"a default cannot refer to another variable: {shown}")
        value = environ.get(name)
        if has_default and not value:
            value = default
        elif value is None:
            if clip_value(name) != name:  # too long to repeat in a hint
                raise _SubstitutionError(f"environment variable {clip_value(name)} is not set")
            raise _SubstitutionError(
                f"environment variable {name} is not set (use ${{{name}:-default}} for a default)"
            )
        out.append(value)
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


# --- overlays --------------------------------------------------------------------------------


def _identity(data: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """(apiVersion, kind, namespace, name) of a document, or None when incomplete."""
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        return None
    api_version, kind, name = data.get("apiVersion"), data.get("kind"), metadata.get("name")
    namespace = metadata.get("namespace") or "default"
    if not all(isinstance(v, str) for v in (api_version, kind, name, namespace)):
        return None
    return api_version, kind, namespace, name


def _apply_overlay(
    base: list[tuple[SourceDocument, bool]],
    overlay: list[tuple[SourceDocument, bool]],
    add_new: bool,
) -> list[tuple[SourceDocument, bool]]:
    documents = list(base)
    by_identity: dict[tuple[str, str, str, str], list[int]] = {}
    for index, (document, _) in enumerate(documents):
        identity = _identity(document.data)
        if identity is not None:
            by_identity.setdefault(identity, []).append(index)

    for patch, patch_ok in overlay:
        identity = _identity(patch.data)
        targets = by_identity.get(identity, []) if identity is not None else []
        # Two base documents with one identity are a problem validation reports; patch both
        # so that report is about the merged documents.
        for index in targets:
            target, target_ok = documents[index]
            data = _merge_patch(
                target.data, copy.deepcopy(patch.data), (), target.positions, patch.positions
            )
            merged = SourceDocument(target.file, target.line, data, target.positions)
            documents[index] = (merged, target_ok and patch_ok)
        if not targets and add_new:
            if identity is not None:
                by_identity.setdefault(identity, []).append(len(documents))
            documents.append((patch, patch_ok))
    return documents


_ABSENT = object()


def _merge_patch(
    target: Any,
    patch: Any,
    path: FieldPath,
    positions: dict[FieldPath, Position],
    patch_positions: dict[FieldPath, Position],
) -> Any:
    """
    RFC 7386 JSON Merge Patch of `patch` onto `target` at `path`, moving the recorded
    positions along: a value taken from the patch takes the patch's lines.
    """
    if not isinstance(patch, dict):
        # A value the overlay merely repeats (apiVersion, kind, metadata.name always are) keeps
        # the base file's line: that is where a user would change it.
        if type(patch) is type(target) and patch == target and not isinstance(patch, list):
            return target
        _drop_positions(positions, path)
        _copy_positions(positions, patch_positions, path)
        return patch
    if not isinstance(target, dict):
        # A mapping replaces a list or a value: it starts empty and takes the patch's line.
        _drop_positions(positions, path)
        if path in patch_positions:
            positions[path] = patch_positions[path]
        target = {}
    for key, value in patch.items():
        key_path = (*path, key)
        if value is None:
            target.pop(key, None)
            _drop_positions(positions, key_path)
        else:
            target[key] = _merge_patch(
                target.get(key, _ABSENT), value, key_path, positions, patch_positions
            )
    return target


def _drop_positions(positions: dict[FieldPath, Position], path: FieldPath) -> None:
    """Forget `path` and everything under it."""
    size = len(path)
    for key in [k for k in positions if k[:size] == path]:
        del positions[key]


def _copy_positions(
    into: dict[FieldPath, Position], source: dict[FieldPath, Position], path: FieldPath
) -> None:
    """Copy the positions of `path` and everything under it."""
    size = len(path)
    into.update((k, v) for k, v in source.items() if k[:size] == path)
