"""`FileProvider`: load config files, and say when they changed, once the change has settled.

Watching uses inotify through `watchfiles` (its documented low-level `RustNotify`), not polling.
The directories watched (non-recursively) are those discovery walked, the folders of the files
it found (and of their link targets), the parents of the configured paths and of every extra
file (TLS certificates and keys). Whether something changed is decided by comparing (mtime,
size, inode) of the files `discover` finds now with those the last `load` read: an event only
says *when* to look. So a new file, a deleted or renamed file, an editor's rename-over-save,
a ConfigMap's ``..data`` link swap and a new overlay for the environment all count, and an
event on an unrelated file beside a config file costs a filter call and nothing else.

Settling: a change is reported once the files involved have not been touched for `settle`
seconds, measured by the kernel's own clock of each file: its change time (`st_ctime`, which
every write, truncate, rename or chmod moves forward and no program can set back). So a file
replaced atomically (editor, ConfigMap, `os.replace`) is reported `settle` after the rename, not
after a fixed series of looks, and a file still being written (two halves with a pause shorter
than `settle`) is read only once complete. A deleted file is measured by its folder's change
time (an unlink or rename moves it), so a delete-then-recreate save is one change. All within
`max_settle`, so a file written without end still reloads (at most every `max_settle` seconds).
With the defaults a change is reported ~50-60 ms after the last write (~15-20 ms for a file replaced whole, below).

A file *replaced whole* settles sooner (`replaced_settle`, 10 ms): one that got its name by a
rename (an editor's or a tool's atomic save, `os.replace`) and was not
written under that name since. Its content was complete before it got its name, so there is no
half to wait for. watchfiles reports a rename and a new file alike ("added", with the writes that
follow merged in), so `RenameLog` asks inotify itself, for the same folders: `IN_MOVED_TO` is a
rename into the folder, `IN_CREATE`, `IN_MODIFY` and `IN_ATTRIB` a file created or changed where
it is. The kernel queues these as each call happens, so reading them when deciding misses none.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import os
import stat
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

from watchfiles._rust_notify import RustNotify

from meshgate.providers.file.discover import YAML_SUFFIXES, Discovery, discover
from meshgate.providers.file.loader import (
    DocumentCache,
    LoadResult,
    file_stamp,
    load_files,
)
from meshgate.providers.file.safe_read import DEFAULT_MAX_FILE_BYTES

__all__ = ["FileProvider"]

log = logging.getLogger("meshgate.providers.file")

Stamp = tuple[int, int, int] | None  # None: the file does not exist (or cannot be stat'ed)


class FileProvider:
    """Config documents from files and folders, and a stream of settled changes to them.

    `load` may run on a worker thread while `changes` runs on the event loop.
    """

    def __init__(
        self,
        paths: Sequence[str],
        env: str | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        settle: float = 0.05,
        stable_check: float = 0.005,
        max_settle: float = 2.0,
        replaced_settle: float = 0.01,
    ) -> None:
        self.paths = list(paths)
        self.env = env
        self.environ = environ
        self.max_file_bytes = max_file_bytes
        self.settle = settle
        self.stable_check = stable_check
        self.max_settle = max_settle
        self.replaced_settle = min(replaced_settle, settle)
        self.cache = DocumentCache()
        self._lock = threading.Lock()
        # Absolute path -> stamp, as the last load (or the last change batch) saw it. None until
        # the first load: a watcher started before any load takes its first look as the base.
        self._known: dict[str, Stamp] | None = None
        self._named: set[str] = set()  # files the last load's documents name (certificates, keys)
        self._extra: set[str] = set()  # files given to watch_also
        self._folders: set[str] = set()  # folders the last discovery walked
        self._overlay_names: set[str] = set()  # where overlays for `env` would be
        self._wake: threading.Event | None = None  # stops the current watch to change roots
        self._roots: frozenset[str] = frozenset()  # directories the current watch covers
        self._targets: frozenset[str] = frozenset()  # where linked config files point
        self.watching: frozenset[str] = frozenset()
        """The directories watched once `changes` is live (its first look done); else empty."""

    # -- loading ---------------------------------------------------------------------------------

    def load(self) -> LoadResult:
        """Read every document (files unchanged since the last load are not re-read). `changes`
        reports what changes after this call's look at the files."""
        found = discover(self.paths, self.env)
        # Stamped before reading: a write during the read shows up as a change afterwards.
        stamps = {os.path.abspath(f): file_stamp(f) for f in found.files}
        result = load_files(
            self.paths, self.env, self.environ, self.cache,
            max_file_bytes=self.max_file_bytes, discovery=found,
        )
        self.cache.retain(found.files)
        named = {os.path.abspath(f) for f in result.named_files}
        with self._lock:
            self._named = named
            for file in named | self._extra:
                stamps.setdefault(file, file_stamp(file))
            self._known = stamps
            self._remember(found)
        self._rewatch_if_needed()
        return result

    def watch_also(self, files: Iterable[str]) -> None:
        """Watch these files too (replacing the previous set), e.g. certificates the caller reads.
        Their state at this call is the base a change is measured from."""
        extra = {os.path.abspath(f) for f in files}
        with self._lock:
            dropped, self._extra = self._extra - extra - self._named, extra
            if self._known is not None:
                for file in dropped:  # no longer watched: not a change
                    self._known.pop(file, None)
                for file in extra:
                    self._known.setdefault(file, file_stamp(file))
        self._rewatch_if_needed()

    # -- watching --------------------------------------------------------------------------------

    async def changes(self) -> AsyncIterator[set[str]]:
        """Yield the absolute paths that changed (appeared, disappeared, were modified) since the
        last `load` or the last batch, once settled. Runs until closed or cancelled."""
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="meshgate-watch")
        loop = asyncio.get_running_loop()
        try:
            while True:
                roots, targets = await loop.run_in_executor(executor, self._watch_roots)
                wake = threading.Event()
                try:
                    watcher = RustNotify(sorted(roots), False, False, 300, False, True)
                except FileNotFoundError:  # a root vanished since it was listed: list again
                    await asyncio.sleep(self.stable_check)
                    continue
                renames = RenameLog(roots) if self.replaced_settle < self.settle else None
                with self._lock:
                    self._roots, self._targets, self._wake = roots, targets, wake
                try:
                    # Anything that changed before the watch started is found by this first look.
                    batch = await self._settled(set(), loop, executor)
                    self.watching = roots
                    if batch:
                        yield batch
                        if await self._roots_changed(roots, loop, executor):
                            continue
                    while not wake.is_set():
                        raw = await loop.run_in_executor(
                            executor, watcher.watch, int(self.max_settle * 500), max(1, int(self.stable_check * 1000)), 0, wake
                        )
                        if not isinstance(raw, set):
                            continue  # "stop" (the loop ends) or a spurious "timeout"/"signal"
                        events = {path for _, path in raw if self._relevant(path)}
                        if not events:
                            continue  # e.g. a log file written beside a config file
                        batch = await self._settled(events, loop, executor, renames)
                        if batch:
                            yield batch
                        if await self._roots_changed(roots, loop, executor):
                            break
                finally:
                    self.watching = frozenset()
                    wake.set()
                    # The executor's one thread closes the watcher after `watch` has returned.
                    executor.submit(watcher.close)
                    if renames is not None:
                        executor.submit(renames.close)
        finally:
            executor.shutdown(wait=False)

    async def _roots_changed(
        self, roots: frozenset[str], loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor
    ) -> bool:
        """New folders to watch, or watched ones gone: the watch must start over."""
        return (await loop.run_in_executor(executor, self._watch_roots))[0] != roots

    async def _settled(
        self, events: set[str], loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor,
        renames: RenameLog | None = None,
    ) -> set[str]:
        """What changed, once the files involved have stopped changing; commits it as seen.

        Quiet is measured from the files' change times (see the module doc), not from when we
        happened to look: watchfiles' own quiet period only notices events on *new* paths (a
        second write to the same file does not extend it), and the first look after a (re)start
        has no quiet period at all. When every file involved was replaced whole (`renames`, see
        the module doc), `replaced_settle` is enough."""
        deadline = time.monotonic() + self.max_settle
        involved = set(events)
        while True:
            involved |= await loop.run_in_executor(executor, self._scan, False)
            if not involved:
                break
            quiet = await loop.run_in_executor(executor, _quiet_for, involved)
            # Asked after the stat above: a write before it is an event already queued.
            whole = renames is not None and await loop.run_in_executor(
                executor, lambda: renames.replaced_whole(involved) and _non_empty(involved))
            needed = self.replaced_settle if whole else self.settle
            if quiet >= needed:
                break
            if time.monotonic() >= deadline:
                log.warning("config files still changing after %.1f s; reloading anyway", self.max_settle)
                break
            await asyncio.sleep(max(needed - quiet, self.stable_check))
        # Only stamps decide: an event already covered by an earlier look is not reported twice.
        if renames is not None:
            await loop.run_in_executor(executor, renames.take)
        return await loop.run_in_executor(executor, self._scan, True)

    def _scan(self, commit: bool) -> set[str]:
        """The files whose stamp differs from the known one; with `commit`, make the new stamps
        the known ones (each change is reported once)."""
        found = discover(self.paths, self.env)
        with self._lock:
            watched = {os.path.abspath(f) for f in found.files} | self._named | self._extra
            now = {file: file_stamp(file) for file in watched}
            if self._known is None:  # never loaded: this look is the base
                changed: set[str] = set()
            else:
                changed = {f for f in now.keys() | self._known.keys() if now.get(f) != self._known.get(f)}
            if commit or self._known is None:
                self._known = now
                self._remember(found)
        return changed

    def _remember(self, found: Discovery) -> None:  # called with the lock held
        self._folders = {os.path.abspath(f) for f in found.folders}
        self._overlay_names = {os.path.abspath(f) for f in found.overlay_names}

    def _watch_roots(self) -> tuple[frozenset[str], frozenset[str]]:
        """The directories to watch for the current state (all exist right now), and the
        targets of linked files."""
        if self._known is None:
            self._scan(commit=True)
        with self._lock:
            files = set(self._known or ()) | self._named | self._extra
            roots = set(self._folders)
        for path in self.paths:
            path = os.path.abspath(path)
            # The parent sees the path itself deleted, renamed or created.
            roots.add(_existing(os.path.dirname(path)))
            if os.path.isdir(path):
                roots.add(path)
        for folder in {os.path.dirname(f) for f in files}:
            roots.add(_existing(folder))
            roots.add(_existing(os.path.realpath(folder)))
        targets = set()
        for file in files:
            if os.path.islink(file):  # a link elsewhere: watch where it points too
                targets.add(os.path.realpath(file))
                roots.add(_existing(os.path.dirname(os.path.realpath(file))))
        return frozenset(roots), frozenset(targets)

    def _rewatch_if_needed(self) -> None:
        """Restart a running watch when the files to watch moved to other directories."""
        with self._lock:
            wake, roots = self._wake, self._roots
        if wake is not None and not wake.is_set() and self._watch_roots()[0] != roots:
            wake.set()

    def _relevant(self, path: str) -> bool:
        """Whether an event on `path` may change what a load reads (a cheap first filter; the
        stamps decide)."""
        with self._lock:
            known = self._known or {}
            if path in known or path in self._named or path in self._extra or path in self._overlay_names:
                return True
            folders, roots, targets = self._folders, self._roots, self._targets
        name = os.path.basename(path)
        parent = os.path.dirname(path)
        if path in roots or path in folders or path in targets:
            return True  # a watched folder deleted or renamed
        if any(path == os.path.abspath(p) for p in self.paths):
            return True
        if name.startswith(".."):
            # A mounted ConfigMap swaps its ``..data`` link to publish new files atomically.
            return True
        if name.startswith("."):
            return False  # editor swap files, .git: discovery never reads them
        # A new YAML file or subfolder in a config folder; anything else beside a config file
        # (or a link target) is not read.
        return parent in folders and (name.endswith(YAML_SUFFIXES) or os.path.isdir(path))


class RenameLog:
    """Which files got their name by a rename and were not written since, from inotify events on
    the watched folders (Linux; elsewhere, or if inotify can't be set up, none: every change gets
    the full quiet period)."""

    _IN_MODIFY, _IN_ATTRIB, _IN_MOVED_TO, _IN_CREATE, _IN_Q_OVERFLOW = 0x2, 0x4, 0x80, 0x100, 0x4000
    _IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, 0o2000000
    _HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)

    def __init__(self, folders: Iterable[str]) -> None:
        self._fd = -1
        self._folders: dict[int, str] = {}  # watch descriptor -> folder
        self._renamed: set[str] = set()  # renamed into place, not written since
        self._written: set[str] = set()  # created or written where it is since the last `take`
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._fd = libc.inotify_init1(self._IN_NONBLOCK | self._IN_CLOEXEC)
            if self._fd < 0:
                return
            mask = self._IN_MODIFY | self._IN_ATTRIB | self._IN_MOVED_TO | self._IN_CREATE
            for folder in folders:
                wd = libc.inotify_add_watch(self._fd, os.fsencode(folder), mask)
                if wd >= 0:
                    self._folders[wd] = folder
        except (OSError, AttributeError):  # no inotify (not Linux): no fast path
            self.close()

    def _read(self) -> None:
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            offset = 0
            while offset + self._HEADER.size <= len(data):
                wd, mask, _, length = self._HEADER.unpack_from(data, offset)
                name = data[offset + self._HEADER.size:offset + self._HEADER.size + length].rstrip(b"\0")
                offset += self._HEADER.size + length
                if mask & self._IN_Q_OVERFLOW:
                    self._renamed.clear()  # events lost: trust none
                    self._written.add("")
                    continue
                folder = self._folders.get(wd)
                if folder is None or not name:
                    continue
                path = os.path.join(folder, os.fsdecode(name))
                if mask & self._IN_MOVED_TO:
                    self._renamed.add(path)
                    self._written.discard(path)
                elif mask & (self._IN_CREATE | self._IN_MODIFY | self._IN_ATTRIB):
                    self._renamed.discard(path)
                    self._written.add(path)

    def replaced_whole(self, files: Iterable[str]) -> bool:
        """Whether every one of `files` got its name by a rename and was not written since."""
        self._read()
        return self._fd >= 0 and "" not in self._written and all(
            f in self._renamed or os.path.realpath(f) in self._renamed for f in files)

    def take(self) -> None:
        """Forget what was seen (the change it belonged to is reported)."""
        self._read()
        self._renamed.clear()
        self._written.clear()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1


def _non_empty(files: Iterable[str]) -> bool:
    """Every file exists as a regular file with content (a file created in place is empty until
    its first write, which is an event of its own)."""
    for file in files:
        try:
            st = os.stat(file)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return False
    return True


def _quiet_for(files: Iterable[str]) -> float:
    """Seconds since any of `files` last changed, by the kernel's change times (`st_ctime`): of
    the file (following links, and of the link itself), or of its folder when it is gone. A change
    time in the future (a skewed network file system) counts as "just now"."""
    newest = 0.0
    for file in files:
        for stat in (os.stat, os.lstat):
            try:
                newest = max(newest, stat(file).st_ctime_ns / 1e9)
            except OSError:
                try:
                    newest = max(newest, os.stat(os.path.dirname(file)).st_ctime_ns / 1e9)
                except OSError:
                    pass
    # The kernel stamps change times from a coarse clock (one scheduler tick behind at most).
    return max(0.0, time.time() - newest - 0.005)


def _existing(folder: str) -> str:
    """`folder`, or its nearest ancestor that exists (a missing folder is seen when created)."""
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder
