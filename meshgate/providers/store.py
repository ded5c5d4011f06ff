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


class ObjectStore:
    """Validated objects by key, with generations and last valid versions (see module doc)."""

    def __init__(self) -> None:
        self._last_good: dict[ObjectKey, StoredObject] = {}
        self._keys_of_file: dict[str, set[ObjectKey]] = {}

    def update(self, docs: Iterable[SourceDocument], load_errors: Iterable[ConfigError]) -> StoreView:
        from meshgate.api.config import parse_document

        load_errors = list(load_errors)
        failed_files = {e.file for e in load_errors}
        problems: list[ConfigError] = list(load_errors)
        objects: dict[ObjectKey, StoredObject] = {}
        invalid: set[ObjectKey] = set()
        errors_by_key: dict[ObjectKey, list[ConfigError]] = {}
        keys_of_file: dict[str, set[ObjectKey]] = {}
        duplicates: list[StoredObject] = []
        count = 0
        for doc in docs:
            count += 1
            key = document_key(doc.data)
            if key is not None:
                keys_of_file.setdefault(doc.file, set()).add(key)
            resource, errors = parse_document(doc)
            problems.extend(errors)
            if resource is None:
                if key is not None:
                    invalid.add(key)
                    errors_by_key.setdefault(key, []).extend(errors)
                continue
            if key in objects:
                duplicates.append(StoredObject(resource, doc, 0))  # the translator reports it
                continue
            previous = self._last_good.get(key)
            if previous is None:
                generation = 1
            elif previous.doc is doc:  # the provider reused the document: its file didn't change
                generation = previous.generation
            else:
                generation = previous.generation + (previous.doc.data != doc.data)
            objects[key] = StoredObject(resource, doc, generation)

        # Files that failed as a whole: their objects are as invalid as an invalid document.
        for file in failed_files:
            for key in self._keys_of_file.get(file, ()):
                if key not in objects:
                    invalid.add(key)
                    keys_of_file.setdefault(file, set()).add(key)

        stale: dict[ObjectKey, int] = {}
        for key in invalid:
            last = self._last_good.get(key)
            if last is not None and key not in objects:
                objects[key] = last
                stale[key] = last.generation
        for key, stored in objects.items():
            if key not in stale:
                self._last_good[key] = stored
        # Objects gone from every file are deleted: forget their last valid version too.
        present = {k for keys in keys_of_file.values() for k in keys}
        for key in [k for k in self._last_good if k not in present]:
            del self._last_good[key]
        self._keys_of_file = keys_of_file
        return StoreView(
            objects=[(o.resource, o.doc) for o in [*objects.values(), *duplicates]],
            invalid=invalid, stale=stale, problems=problems, errors_by_key=errors_by_key, documents=count,
        )
