"""The object store between providers and the Gateway API translator.

Providers hand over documents (each with its origin, file and line); the store validates each one
against its kind's schema and keeps, per object (API group, kind, namespace, name):

- the current valid version and a *generation* that grows when its content changes;
- its last valid version, so that an object that was valid and becomes invalid keeps serving that
  version (stale, said in its status) until it is fixed, while a new invalid object is simply
  not programmed. A file that fails to parse as a whole (a YAML syntax error, an unreadable
  file) keeps the last valid versions of the objects it held.

One invalid object never blocks another: the result always lists every valid object.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshgate.providers.file.loader import SourceDocument
from meshgate.api.models import Resource
from meshgate.errors import ConfigError

ObjectKey = tuple[str, str, str, str]  # (API group, kind, namespace, name)


def document_key(data: Any) -> ObjectKey | None:
    """The identity a document claims, read from its raw data (even when it is invalid)."""
    if not isinstance(data, dict):
        return None
    api_version, kind, meta = data.get("apiVersion"), data.get("kind"), data.get("metadata")
    if not isinstance(api_version, str) or not isinstance(kind, str) or not isinstance(meta, dict):
        return None
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    group = api_version.split("/")[0] if "/" in api_version else ""
    return (group, kind, namespace, name)


@dataclass
class StoredObject:
    resource: Resource
    doc: SourceDocument
    generation: int


@dataclass
class StoreView:
    """What the translator gets from one update of the store."""

    objects: list[tuple[Resource, SourceDocument]]  # valid now, or stale (last valid version)
    invalid: set[ObjectKey]  # objects whose current version is invalid (stale or not programmed)
    stale: dict[ObjectKey, int]  # invalid now, last valid version serving: key -> its generation
    problems: list[ConfigError]  # every problem found (file-level and per-object schema errors)
    errors_by_key: dict[ObjectKey, list[ConfigError]] = field(default_factory=dict)
    documents: int = 0  # how many documents the providers gave (0: the paths hold no objects)
    serving: dict[ObjectKey, StoredObject] = field(default_factory=dict)  # by key: current or last valid version
    # Keys whose stored object (or validity) may differ from the previous update's: the objects of
    # the files validated again, and of files gone. None: unknown (the first update).
    changed: frozenset[ObjectKey] | None = None

    @property
    def versions(self) -> dict[ObjectKey, tuple[int, str, int]]:
        """key -> (generation, file, line) of each object serving: what the audit log diffs
        (meshgate.controlplane.audit); built only when asked for."""
        return {k: (o.generation, o.doc.file, o.doc.line) for k, o in self.serving.items()}


@dataclass
class _FileEntry:
    """What one file's documents validated to (reused while the provider reuses the documents)."""

    docs: list[SourceDocument]
    objects: list[tuple[ObjectKey, StoredObject]]
    invalid: list[ObjectKey]
    errors: list[ConfigError]
    errors_by_key: dict[ObjectKey, list[ConfigError]]


@dataclass
class _Merged:
    """The last update's merge of every file, patched by the next update when only objects of
    some files changed (same keys, in the same order, all valid): no pass over every object."""

    files: list[str]
    load_errors: list[ConfigError]
    objects: dict[ObjectKey, StoredObject]
    pairs: list[tuple[Resource, SourceDocument]]  # StoreView.objects
    index: dict[ObjectKey, int]  # key -> its place in `pairs`
    invalid: set[ObjectKey]
    stale: dict[ObjectKey, int]
    problems: list[ConfigError]
    errors_by_key: dict[ObjectKey, list[ConfigError]]


class ObjectStore:
    """Validated objects by key, with generations and last valid versions (see module doc).

    Work is per file: a file whose documents the provider reused (it didn't change) costs a
    dictionary merge, so an edit to one file of many validates that file only.
    """

    def __init__(self) -> None:
        self._last_good: dict[ObjectKey, StoredObject] = {}
        self._files: dict[str, _FileEntry] = {}
        self._updated = False  # an update happened: the next one can say what changed
        self._merged: _Merged | None = None

    def _validate_file(self, docs: list[SourceDocument]) -> _FileEntry:
        from meshgate.api.config import parse_document

        entry = _FileEntry(docs, [], [], [], {})
        for doc in docs:
            key = document_key(doc.data)
            resource, errors = parse_document(doc)
            entry.errors.extend(errors)
            if resource is None:
                if key is not None:
                    entry.invalid.append(key)
                    entry.errors_by_key.setdefault(key, []).extend(errors)
                continue
            previous = self._last_good.get(key)
            if previous is None:
                generation = 1
            elif previous.doc is doc:  # the provider reused the document: its file didn't change
                generation = previous.generation
            else:
                generation = previous.generation + (previous.doc.data != doc.data)
            entry.objects.append((key, StoredObject(resource, doc, generation)))
        return entry

    def update(self, docs: Iterable[SourceDocument], load_errors: Iterable[ConfigError]) -> StoreView:
        load_errors = list(load_errors)
        failed_files = {e.file for e in load_errors}
        by_file: dict[str, list[SourceDocument]] = {}
        count = 0
        for doc in docs:
            count += 1
            by_file.setdefault(doc.file, []).append(doc)

        files: dict[str, _FileEntry] = {}
        for file, file_docs in by_file.items():
            previous = self._files.get(file)
            if previous is not None and len(previous.docs) == len(file_docs) and all(
                    a is b for a, b in zip(previous.docs, file_docs)):
                files[file] = previous
            else:
                files[file] = self._validate_file(file_docs)
        # A file that failed as a whole (syntax error, unreadable): its objects are as invalid as
        # an invalid document, so they keep their last valid versions.
        for file in failed_files - set(by_file):
            previous = self._files.get(file)
            if previous is not None:
                keys = [k for k, _ in previous.objects] + previous.invalid
                files[file] = _FileEntry([], [], keys, [], {})

        patched = self._patch(files, load_errors, count)
        if patched is not None:
            return patched
        objects: dict[ObjectKey, StoredObject] = {}
        duplicates: list[StoredObject] = []
        invalid: set[ObjectKey] = set()
        problems: list[ConfigError] = list(load_errors)
        errors_by_key: dict[ObjectKey, list[ConfigError]] = {}
        for entry in files.values():
            for key, stored in entry.objects:
                if key in objects:
                    duplicates.append(stored)  # the translator reports it
                else:
                    objects[key] = stored
            invalid.update(entry.invalid)
            problems.extend(entry.errors)
            for key, errors in entry.errors_by_key.items():
                errors_by_key.setdefault(key, []).extend(errors)
        invalid -= objects.keys()  # valid in one place wins over an invalid copy elsewhere

        stale: dict[ObjectKey, int] = {}
        for key in invalid:
            last = self._last_good.get(key)
            if last is not None:
                objects[key] = last
                stale[key] = last.generation
        for file, entry in files.items():
            if self._files.get(file) is not entry:
                for key, stored in entry.objects:
                    if objects.get(key) is stored:
                        self._last_good[key] = stored
        # Objects gone from every file are deleted: forget their last valid version too.
        if len(self._last_good) > len(objects) or set(self._files) != set(files):
            for key in [k for k in self._last_good if k not in objects]:
                del self._last_good[key]
        changed = self._changed(files)
        self._files = files
        known, self._updated = self._updated, True
        pairs = [(o.resource, o.doc) for o in [*objects.values(), *duplicates]]
        self._merged = None if duplicates else _Merged(
            list(files), load_errors, objects, pairs, {k: i for i, k in enumerate(objects)}, invalid, stale,
            problems, errors_by_key)
        return StoreView(
            objects=pairs, invalid=set(invalid), stale=dict(stale), problems=list(problems),
            errors_by_key=dict(errors_by_key), documents=count, serving=objects,
            changed=frozenset(changed) if known else None,
        )

    def _changed(self, files: dict[str, _FileEntry]) -> set[ObjectKey]:
        """The keys of the objects of files validated again (or gone), but those that are the
        very same validated object (a document the loader kept: its text didn't change)."""
        changed: set[ObjectKey] = set()
        for file in self._files.keys() | files.keys():
            before, after = self._files.get(file), files.get(file)
            if before is not after:
                same = ({k for (k, a), (_, b) in zip(before.objects, after.objects) if a.resource is b.resource}
                        if before is not None and after is not None else set())
                for entry in (before, after):
                    if entry is not None:
                        changed.update(k for k, _ in entry.objects if k not in same)
                        changed.update(entry.invalid)
        return changed

    def _patch(self, files: dict[str, _FileEntry], load_errors: list[ConfigError], count: int) -> StoreView | None:
        """The view, from the last merge, when the files validated again hold the same keys in
        the same order, all valid before and after; else None (merge every file)."""
        merged = self._merged
        if merged is None or list(files) != merged.files or load_errors != merged.load_errors:
            return None
        edited = [(self._files[f], entry) for f, entry in files.items() if self._files[f] is not entry]
        for before, after in edited:
            if (before.invalid or after.invalid or before.errors or after.errors
                    or [k for k, _ in before.objects] != [k for k, _ in after.objects]):
                return None
        changed = self._changed(files)
        objects, pairs = dict(merged.objects), list(merged.pairs)
        for _, after in edited:
            for key, stored in after.objects:
                objects[key] = stored
                pairs[merged.index[key]] = (stored.resource, stored.doc)
                self._last_good[key] = stored
        self._files = files
        merged.objects, merged.pairs = objects, pairs
        return StoreView(
            objects=pairs, invalid=set(merged.invalid), stale=dict(merged.stale), problems=list(merged.problems),
            errors_by_key=dict(merged.errors_by_key), documents=count, serving=objects,
            changed=frozenset(changed),
        )
