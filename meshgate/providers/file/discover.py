"""Which files a set of config paths stands for: the one answer both loading and watching use.

Each path given is a file or a folder. A folder is searched recursively for ``*.yaml`` and
``*.yml`` files, which are read in sorted order; names starting with a dot are skipped (editor
files, ``.git``, and the ``..data`` links of a mounted Kubernetes ConfigMap). ``NAME.ENV.yaml``
beside ``NAME.yaml`` is an overlay, read only for ``--env ENV`` (see `meshgate.providers.file.loader`).
Gateways may also name certificate and key files (`named_files`); those are watched too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshgate.errors import ConfigError

if TYPE_CHECKING:
    from meshgate.providers.file.loader import SourceDocument

__all__ = ["YAML_SUFFIXES", "Discovery", "discover", "discover_files", "named_files"]

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Discovery:
    """The result of `discover`; paths are spelled as the user gave them (relative stays relative)."""

    bases: list[str] = field(default_factory=list)
    """Base files, in the order of the paths given, a folder's files in sorted order."""
    overlays: dict[str, list[str]] = field(default_factory=dict)
    """The overlays that apply for the environment, by base file."""
    errors: list[ConfigError] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    """Every folder searched (recursively), so a watcher sees files appear in any of them."""
    overlay_names: set[str] = field(default_factory=set)
    """Where an overlay for the environment would be, whether it exists or not."""

    @property
    def files(self) -> list[str]:
        """Every file to read: base files, each followed by its overlays."""
        return [f for base in self.bases for f in (base, *self.overlays.get(base, ()))]


def discover_files(
    paths: Sequence[str], env: str | None
) -> tuple[list[str], list[str], list[ConfigError]]:
    """
    The files to read for `paths`: (base files, overlay files that apply for `env`, errors).

    Base files come in the order of `paths`, a folder's files in sorted order; each overlay
    comes after the overlays of earlier base files. A file reached twice is read once.
    """
    found = discover(paths, env)
    return found.bases, [o for base in found.bases for o in found.overlays.get(base, [])], found.errors


def discover(paths: Sequence[str], env: str | None) -> Discovery:
    """The files `paths` stand for with environment `env`, and the problems found on the way."""
    found = Discovery()
    errors = found.errors
    candidates: list[tuple[str, bool]] = []  # (file, named by the user rather than found)
    seen: set[str] = set()

    real_dirs: dict[str, str] = {}

    def realpath(file: str) -> str:
        # os.path.realpath checks every component of every file; a folder's is resolved once,
        # and only a file that is itself a link is resolved in full.
        folder, name = os.path.split(file)
        real_dir = real_dirs.get(folder)
        if real_dir is None:
            real_dir = real_dirs[folder] = os.path.realpath(folder)
        real = os.path.join(real_dir, name)
        return os.path.realpath(file) if not name or os.path.islink(real) else real

    def add(file: str, explicit: bool) -> None:
        real = realpath(file)
        if real not in seen:
            seen.add(real)
            candidates.append((file, explicit))

    for path in paths:
        if os.path.isdir(path):
            for file in _yaml_files_under(path, errors, found.folders):
                add(file, explicit=False)
        elif os.path.exists(path):
            add(path, explicit=True)  # even a FIFO: reading it says what is wrong, by name
        else:
            errors.append(ConfigError(path, 0, "", "no such file or directory"))

    found.bases = bases = [file for file, _ in candidates if _overlay_target(file) is None]
    base_by_real = {realpath(base): base for base in bases}

    # Overlays that were named or found but cannot apply: say so rather than ignore a file the
    # user pointed at, or an overlay for the requested environment.
    for file, explicit in candidates:
        target = _overlay_target(file)
        if target is None or os.path.realpath(target[0]) in base_by_real:
            continue
        base, overlay_env = target
        if _overlay_target(base) is not None:
            if overlay_env == env or explicit:
                message = f"{base} is itself an overlay, and overlays do not apply to overlays"
                errors.append(ConfigError(file, 0, "", message))
        elif explicit:
            message = (
                f"this is the overlay of {base} for environment {overlay_env!r}; "
                f"load {base} (or its folder) to use it"
            )
            errors.append(ConfigError(file, 0, "", message))

    # The overlays of each base file are looked up beside it, so `validate gateway.yaml --env
    # prod` uses gateway.prod.yaml just as loading the whole folder would.
    if env:
        for base in bases:
            stem = os.path.splitext(base)[0]
            for suffix in YAML_SUFFIXES:
                overlay = f"{stem}.{env}{suffix}"
                found.overlay_names.add(overlay)
                target = _overlay_target(overlay) if os.path.isfile(overlay) else None
                if target and os.path.realpath(target[0]) == os.path.realpath(base):
                    found.overlays.setdefault(base, []).append(overlay)
    return found


def named_files(documents: Iterable[SourceDocument]) -> list[str]:
    """Files the documents name by path: the certificate and key files of Gateway listeners and
    Backends (``tls.options``), relative to the document's file, as `meshgate.api.config` resolves them."""
    files: list[str] = []
    for document in documents:
        data: Any = document.data
        if data.get("kind") == "Backend" and isinstance(data.get("spec"), dict):
            # Backend spec.tls options: CA bundle and client certificate files (upstream TLS).
            tls = data["spec"].get("tls")
            options = tls.get("options") if isinstance(tls, dict) else None
            for value in options.values() if isinstance(options, dict) else ():
                if isinstance(value, str) and value:
                    path = os.path.normpath(os.path.join(os.path.dirname(document.file), value))
                    if path not in files:
                        files.append(path)
            continue
        if data.get("kind") != "Gateway" or not isinstance(data.get("spec"), dict):
            continue
        listeners = data["spec"].get("listeners")
        for listener in listeners if isinstance(listeners, list) else ():
            tls = listener.get("tls") if isinstance(listener, dict) else None
            options = tls.get("options") if isinstance(tls, dict) else None
            if not isinstance(options, dict):
                continue
            # Imported here: meshgate.api imports this package (a module-level import would be
            # circular), and only when needed: it costs ~0.5 s of pydantic models at first.
            from meshgate.api.models import CERT_FILE_OPTION, KEY_FILE_OPTION

            for option in (CERT_FILE_OPTION, KEY_FILE_OPTION):
                value = options.get(option)
                if isinstance(value, str) and value:
                    path = os.path.normpath(os.path.join(os.path.dirname(document.file), value))
                    if path not in files:
                        files.append(path)
    return files


def _yaml_files_under(folder: str, errors: list[ConfigError], folders: list[str]) -> list[str]:
    """The YAML files under `folder`, recursively, sorted folder by folder."""

    def unreadable(exc: OSError) -> None:
        name = exc.filename or folder
        errors.append(ConfigError(name, 0, "", f"cannot read: {exc.strerror or exc}"))

    found: list[str] = []
    walked: set[str] = set()  # real paths, so symlinked folders cannot loop
    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in walked:
            dirs[:] = []
            continue
        walked.add(real)
        folders.append(os.path.normpath(root))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.endswith(YAML_SUFFIXES):
                found.append(os.path.normpath(os.path.join(root, name)))
    # Sort by path components so a folder's files stay together: "a/x.yaml" next to "a.yaml".
    return sorted(found, key=lambda p: p.split(os.sep))


def _overlay_target(file: str) -> tuple[str, str] | None:
    """(base file, environment) when `file` is an overlay, else None."""
    folder, name = os.path.split(file)
    stem, suffix = os.path.splitext(name)
    if suffix not in YAML_SUFFIXES:
        return None
    base_name, dot, env = stem.rpartition(".")
    if not dot or not base_name or not env:
        return None
    # The base with the overlay's own suffix wins when both gateway.yaml and gateway.yml exist.
    for base_suffix in (suffix, *(s for s in YAML_SUFFIXES if s != suffix)):
        base = os.path.join(folder, base_name + base_suffix)
        if os.path.isfile(base):
            return base, env
    return None
