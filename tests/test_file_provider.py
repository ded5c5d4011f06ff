"""Tests for meshgate.providers.file: safe reads, empty input, clipped messages, and
FileProvider's watching (real inotify through watchfiles; every wait is bounded)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest

from meshgate.errors import ConfigError
from meshgate.providers.file import (
    FileProvider,
    FileReadError,
    clip_value,
    load_files,
    read_regular_file,
)

WAIT = 10.0  # upper bound for any one change batch to arrive; never a measured duration

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
spec:
  gatewayClassName: meshgate
  listeners:
    - name: http
      port: {port}
      protocol: HTTP
"""


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def ports(provider: FileProvider) -> list[int]:
    result = provider.load()
    assert result.errors == []
    return [d.data["spec"]["listeners"][0]["port"] for d in result.documents]


# --- read_regular_file -----------------------------------------------------------------------


def test_reads_a_regular_file_and_a_link_to_one(tmp_path):
    target = write(tmp_path / "real.yaml", "kind: A\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)  # Kubernetes ConfigMap mounts are links
    assert read_regular_file(target) == read_regular_file(str(link)) == b"kind: A\n"


def test_directory_is_refused_with_a_clear_reason(tmp_path):
    with pytest.raises(FileReadError) as caught:
        read_regular_file(str(tmp_path))
    assert caught.value.reason == "is a directory"
    assert str(caught.value) == f"cannot read {tmp_path}: is a directory"


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes] = []

    def attempt() -> None:
        try:
            outcome.append(read_regular_file(str(fifo)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    # In a thread so that a regression (blocking open) fails the test instead of hanging it.
    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(WAIT)
    assert not reader.is_alive(), "reading a FIFO blocked"
    (error,) = outcome
    assert isinstance(error, FileReadError) and error.reason == "is not a regular file (FIFO)"


def test_endless_device_is_refused():
    with pytest.raises(FileReadError) as caught:
        read_regular_file("/dev/zero")
    assert caught.value.reason == "is not a regular file (character device)"


def test_socket_is_refused(tmp_path):
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(FileReadError) as caught:
            read_regular_file(str(path))
        assert caught.value.reason == "is not a regular file (socket)"
    finally:
        server.close()


def test_size_cap(tmp_path):
    path = write(tmp_path / "a.yaml", "x" * 1024)
    assert len(read_regular_file(path, max_bytes=1024)) == 1024
    with pytest.raises(FileReadError) as caught:
        read_regular_file(path, max_bytes=1023)
    assert caught.value.reason == "is larger than 1023 bytes"
    with pytest.raises(FileReadError) as caught:
        read_regular_file(path, max_bytes=512)
    assert caught.value.reason == "is larger than 512 bytes"
    sparse = tmp_path / "sparse.yaml"
    with open(sparse, "wb") as stream:
        stream.truncate(16 * 2**20 + 1)  # sparse: no 16 MiB written to disk
    with pytest.raises(FileReadError) as caught:
        read_regular_file(str(sparse))  # the default cap
    assert caught.value.reason == "is larger than 16 MiB"


def test_missing_file_reason_is_the_os_words(tmp_path):
    with pytest.raises(FileReadError) as caught:
        read_regular_file(str(tmp_path / "nope.yaml"))
    assert caught.value.reason == "No such file or directory"


def test_loader_reports_special_files_by_name_and_loads_the_rest(tmp_path):
    folder = tmp_path / "conf"
    good = write(folder / "a.yaml", "kind: Good\n")
    fifo = folder / "b.yaml"
    os.mkfifo(fifo)
    (folder / "c.yaml").symlink_to("/dev/zero")
    big = write(folder / "d.yaml", "kind: Big\n" + "#" * 2000 + "\n")
    result = load_files([str(folder)], max_file_bytes=1024)
    assert [d.data["kind"] for d in result.documents] == ["Good"]
    assert [d.file for d in result.documents] == [good]
    assert result.errors == [
        ConfigError(str(fifo), 0, "", "cannot read: is not a regular file (FIFO)"),
        ConfigError(str(folder / "c.yaml"), 0, "", "cannot read: is not a regular file (character device)"),
        ConfigError(big, 0, "", "cannot read: is larger than 1 KiB"),
    ]


# --- empty input -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "---\n", "---\n---\n", "# only a comment\n", "\n\n"])
def test_empty_files_are_valid_and_hold_no_documents(tmp_path, text):
    path = write(tmp_path / "a.yaml", text)
    result = load_files([path])
    assert (result.documents, result.errors, result.document_count) == ([], [], 0)
    assert result.empty and result.files == [path]


def test_an_empty_folder_is_empty(tmp_path):
    write(tmp_path / "README.md", "not config")
    result = load_files([str(tmp_path)])
    assert result.empty and result.files == []


def test_a_deleted_path_is_an_error_naming_it_not_an_empty_config(tmp_path):
    path = write(tmp_path / "a.yaml", "")
    os.remove(path)
    result = load_files([path])
    assert result.errors == [ConfigError(path, 0, "", "no such file or directory")]
    assert str(result.errors[0]).startswith(f"{path}:")
    assert not result.empty


def test_documents_with_errors_still_count_as_found(tmp_path):
    path = write(tmp_path / "a.yaml", "kind: A\nx: ${NOPE}\n")
    result = load_files([path], environ={})
    assert result.documents == [] and result.document_count == 1 and not result.empty


# --- clipped values, syntax errors ------------------------------------------------------------


def test_clip_value():
    assert clip_value("short") == "short"
    assert clip_value("a" * 80) == "a" * 80
    assert clip_value("a" * 5000) == "a" * 80 + "… (5000 characters)"
    assert clip_value("b" * 100, quote=True) == repr("b" * 80) + "… (100 characters)"


def test_a_5000_digit_value_is_clipped_in_the_message(tmp_path):
    path = write(tmp_path / "a.yaml", "kind: A\nport: " + "1" * 5000 + "\n")
    (error,) = load_files([path]).errors
    assert error.message == repr("1" * 80) + "… (5000 characters) is not a valid int"


def test_long_variable_references_are_clipped(tmp_path):
    name = "B" * 3000
    path = write(tmp_path / "a.yaml", f"kind: A\nx: ${{{name}}}\ny: '${{{'C-' * 100}}}'\n")
    x, y = load_files([path], environ={}).errors
    assert x.message == f"environment variable {'B' * 80}… (3000 characters) is not set"
    assert y.message == (
        f"invalid variable reference {('${' + 'C-' * 100)[:80]}… (203 characters): "
        "expected ${NAME} or ${NAME:-default}"
    )
    assert max(len(e.message) for e in (x, y)) < 200


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "gw.yaml", "kind: A\nmetadata:\n  name: x: y\n")
    (error,) = load_files([path]).errors
    assert str(error).startswith(f"{path}:3: mapping values are not allowed")


def test_tab_indentation_gets_a_hint(tmp_path):
    path = write(tmp_path / "gw.yaml", "kind: A\nspec:\n\tname: x\n")
    (error,) = load_files([path]).errors
    assert (error.file, error.line) == (path, 3)
    assert error.message.endswith("(YAML is indented with spaces, not tabs)")


# --- reloads of plain files (the loader's fast path) -----------------------------------------


def test_a_reload_reuses_unchanged_documents_and_locates_edited_ones_in_the_new_text(tmp_path):
    route = "apiVersion: v1\nkind: HTTPRoute\nmetadata: {{name: r-{i}}}\nspec:\n  rules:\n    - port: {port}\n"
    a = write(tmp_path / "a.yaml", "---\n".join(route.format(i=i, port=80) for i in range(3)))
    b = write(tmp_path / "b.yaml", route.format(i=9, port=80))
    provider = FileProvider([str(tmp_path)])
    first = provider.load().documents
    assert [d.data["spec"]["rules"][0]["port"] for d in first] == [80, 80, 80, 80]

    # Two lines more at the top, and a port that is now a string: only a.yaml is read again.
    os.replace(write(tmp_path / "new.tmp", "# moved\n# down\n" + "---\n".join(
        route.format(i=i, port="eighty" if i == 1 else 80) for i in range(3))), a)
    second = provider.load().documents
    assert second[3] is first[3]  # b.yaml: the same document object, positions included
    assert second[1].data["spec"]["rules"][0]["port"] == "eighty"
    assert second[1].locate(("spec", "rules", 0, "port")) == (a, 2 + 7 + 6)
    assert first[1].locate(("spec", "rules", 0, "port")) == (a, 7 + 6)  # the text it was read from
    assert second[3].locate(("kind",)) == (b, 2)


# --- watching --------------------------------------------------------------------------------


class Watching:
    """Consumes `provider.changes()` one batch at a time, each wait bounded by WAIT."""

    def __init__(self, provider: FileProvider) -> None:
        self.provider = provider
        self.changes = provider.changes()

    async def next(self) -> set[str]:
        return await asyncio.wait_for(self.changes.__anext__(), WAIT)

    async def start(self, quiet: bool = True) -> None:
        """Run the generator until its watch is live, so what the test does next is seen through
        inotify events (writes before are found too, by the first look; tested separately)."""
        self._pending = asyncio.ensure_future(self.changes.__anext__())

        async def live() -> None:
            while not self.provider.watching and not self._pending.done():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(live(), WAIT)
        if quiet:
            assert not self._pending.done(), "a change reported before the test made one"

    async def next_after_start(self) -> set[str]:
        return await asyncio.wait_for(self._pending, WAIT)

    async def close(self) -> None:
        pending = getattr(self, "_pending", None)
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await self.changes.aclose()


@pytest.fixture
async def watch():
    watchers: list[Watching] = []

    def start(provider: FileProvider) -> Watching:
        watching = Watching(provider)
        watchers.append(watching)
        return watching

    yield start
    for watching in watchers:
        await watching.close()


async def test_edit_of_the_env_overlay_triggers_a_change(tmp_path, watch):
    base = write(tmp_path / "gateway.yaml", GATEWAY.format(port=8080))
    overlay = write(tmp_path / "gateway.prod.yaml", GATEWAY.format(port=8443))
    write(tmp_path / "gateway.staging.yaml", GATEWAY.format(port=9000))
    provider = FileProvider([base], env="prod")
    assert ports(provider) == [8443]
    changes = watch(provider)
    Path(overlay).write_text(GATEWAY.format(port=9443))
    assert await changes.next() == {overlay}
    assert ports(provider) == [9443]


async def test_a_new_overlay_for_the_env_triggers_a_change_and_others_do_not(tmp_path, watch):
    base = write(tmp_path / "gateway.yaml", GATEWAY.format(port=8080))
    provider = FileProvider([str(tmp_path)], env="prod")
    assert ports(provider) == [8080]
    changes = watch(provider)
    await changes.start()
    write(tmp_path / "gateway.staging.yaml", GATEWAY.format(port=9000))  # another env: not read
    overlay = write(tmp_path / "gateway.prod.yaml", GATEWAY.format(port=8443))
    assert await changes.next_after_start() == {overlay}
    assert ports(provider) == [8443]
    assert base in provider.load().files


async def test_rotated_certificate_named_by_a_gateway_triggers_a_change(tmp_path, watch):
    cert = write(tmp_path / "certs" / "tls.crt", "old cert")
    key = write(tmp_path / "certs" / "tls.key", "old key")
    gateway = GATEWAY.format(port=8443).replace(
        "protocol: HTTP\n",
        "protocol: HTTPS\n      tls:\n        options:\n"
        "          meshgate.io/certificate-file: ../certs/tls.crt\n"
        "          meshgate.io/private-key-file: ../certs/tls.key\n",
    )
    path = write(tmp_path / "conf" / "gateway.yaml", gateway)
    provider = FileProvider([str(tmp_path / "conf")])
    result = provider.load()
    assert result.named_files == [cert, key]
    changes = watch(provider)
    await changes.start()
    # Rotation the way cert-manager or an operator does it: write aside, rename over.
    write(tmp_path / "certs" / "tls.crt.new", "new cert")
    os.replace(tmp_path / "certs" / "tls.crt.new", cert)
    assert await changes.next_after_start() == {cert}
    Path(key).write_text("new key")
    assert await changes.next() == {key}
    assert path in provider.load().files


async def test_watch_also_replaces_the_extra_files(tmp_path, watch):
    config = write(tmp_path / "conf" / "a.yaml", GATEWAY.format(port=1))
    first = write(tmp_path / "extra" / "first.pem", "1")
    second = write(tmp_path / "extra" / "second.pem", "2")
    provider = FileProvider([config])
    provider.load()
    provider.watch_also([first])
    changes = watch(provider)
    await changes.start()
    Path(first).write_text("1 changed")
    assert await changes.next_after_start() == {first}
    provider.watch_also([second])
    Path(first).write_text("1 changed again")  # no longer watched
    Path(second).write_text("2 changed")
    assert await changes.next() == {second}


async def test_deleted_and_renamed_files_are_changes_and_their_objects_go(tmp_path, watch):
    a = write(tmp_path / "a.yaml", GATEWAY.format(port=1).replace("edge", "a"))
    b = write(tmp_path / "b.yaml", GATEWAY.format(port=2).replace("edge", "b"))
    c = write(tmp_path / "c.yaml", GATEWAY.format(port=3).replace("edge", "c"))
    provider = FileProvider([str(tmp_path)])
    assert ports(provider) == [1, 2, 3]
    changes = watch(provider)
    await changes.start()
    os.remove(a)
    assert await changes.next_after_start() == {a}
    assert ports(provider) == [2, 3]
    os.rename(b, str(tmp_path / "b.yaml.disabled"))
    assert await changes.next() == {b}
    assert ports(provider) == [3]
    os.rename(c, str(tmp_path / "d.yml"))  # renamed to another config file
    assert await changes.next() == {c, str(tmp_path / "d.yml")}
    assert ports(provider) == [3]


async def test_deleted_explicit_file_is_a_change_then_an_error(tmp_path, watch):
    path = write(tmp_path / "a.yaml", GATEWAY.format(port=1))
    provider = FileProvider([path])
    assert ports(provider) == [1]
    changes = watch(provider)
    await changes.start()
    os.remove(path)
    assert await changes.next_after_start() == {path}
    assert provider.load().errors == [ConfigError(path, 0, "", "no such file or directory")]
    write(tmp_path / "a.yaml", GATEWAY.format(port=2))  # and back
    assert await changes.next() == {path}
    assert ports(provider) == [2]


async def test_editor_atomic_save_and_a_new_subfolder_are_seen(tmp_path, watch):
    path = write(tmp_path / "a.yaml", GATEWAY.format(port=1))
    provider = FileProvider([str(tmp_path)])
    assert ports(provider) == [1]
    changes = watch(provider)
    await changes.start()
    # Editor files beside the config (swap file, backup, temp name) are not config changes.
    write(tmp_path / ".a.yaml.swp", "swap")
    write(tmp_path / "notes.txt", "notes")
    write(tmp_path / "a.yaml.tmp", GATEWAY.format(port=2))
    os.replace(tmp_path / "a.yaml.tmp", path)
    assert await changes.next_after_start() == {path}
    assert ports(provider) == [2]
    new = write(tmp_path / "sub" / "deeper" / "b.yaml", GATEWAY.format(port=3).replace("edge", "b"))
    assert await changes.next() == {new}
    assert sorted(ports(provider)) == [2, 3]
    # The new folder is watched from then on.
    Path(new).write_text(GATEWAY.format(port=4).replace("edge", "b"))
    assert await changes.next() == {new}
    assert sorted(ports(provider)) == [2, 4]


async def test_configmap_style_link_swap_is_a_change(tmp_path, watch):
    # The layout kubelet gives a mounted ConfigMap: gateway.yaml -> ..data/gateway.yaml,
    # ..data -> ..v1; an update writes ..v2 and swaps the ..data link atomically.
    mount = tmp_path / "mount"
    write(mount / "..v1" / "gateway.yaml", GATEWAY.format(port=1))
    (mount / "..data").symlink_to("..v1")
    (mount / "gateway.yaml").symlink_to("..data/gateway.yaml")
    provider = FileProvider([str(mount)])
    assert ports(provider) == [1]
    changes = watch(provider)
    await changes.start()
    write(mount / "..v2" / "gateway.yaml", GATEWAY.format(port=2))
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")
    assert await changes.next_after_start() == {str(mount / "gateway.yaml")}
    assert ports(provider) == [2]


@pytest.mark.parametrize("watching", [True, False], ids=["watching", "catching-up"])
async def test_a_file_written_in_two_halves_is_one_batch(tmp_path, watch, watching):
    path = tmp_path / "a.yaml"
    write(path, GATEWAY.format(port=1))
    # A generous settle time, so the pause below is surely shorter even on a loaded machine.
    provider = FileProvider([str(tmp_path)], settle=0.3, stable_check=0.02, max_settle=10)
    assert ports(provider) == [1]
    changes = watch(provider)
    text = GATEWAY.format(port=2).replace("edge", "half")
    half = threading.Event()

    def write_in_two_halves() -> None:
        with open(path, "w") as stream:
            stream.write(text[: len(text) // 2])  # a half that is not valid config on its own
            stream.flush()
            half.set()
            threading.Event().wait(0.1)
            stream.write(text[len(text) // 2 :])

    writer = threading.Thread(target=write_in_two_halves, daemon=True)
    if watching:
        await changes.start()
        writer.start()
    else:
        # The half is found by the watch's first look, where no event quiet period applies:
        # only the stamps tell that the file is still being written.
        writer.start()
        await asyncio.to_thread(half.wait, WAIT)
        await changes.start(quiet=False)
    try:
        batch = await changes.next_after_start()
        on_delivery = path.read_text()  # what a reload triggered by this batch would read
    finally:
        writer.join(WAIT)
    assert batch == {str(path)}
    assert on_delivery == text
    result = provider.load()
    assert result.errors == [] and result.documents[0].data["metadata"]["name"] == "half"
    # Had the half been delivered as a batch of its own, the completion would come next.
    sentinel = write(tmp_path / "z.yaml", GATEWAY.format(port=3).replace("edge", "z"))
    assert await changes.next() == {sentinel}


async def test_a_file_replaced_whole_settles_without_the_full_quiet_period(tmp_path, watch):
    # An atomic save (written elsewhere, renamed into place) can't be half-written: it is reported
    # after `replaced_settle`, not `settle` (here far longer than any wait of this test).
    path = tmp_path / "a.yaml"
    write(path, GATEWAY.format(port=1))
    provider = FileProvider([str(tmp_path)], settle=3 * WAIT, max_settle=4 * WAIT, replaced_settle=0.01)
    assert ports(provider) == [1]
    changes = watch(provider)
    await changes.start()
    staging = tmp_path.parent / f"{tmp_path.name}-staging.yaml"
    staging.write_text(GATEWAY.format(port=2))
    os.replace(staging, path)
    assert await changes.next_after_start() == {str(path)}
    assert ports(provider) == [2]


@pytest.mark.parametrize("pause_before_first_write", [False, True], ids=["written-at-once", "created-empty"])
async def test_a_file_created_in_place_is_not_taken_for_replaced_whole(tmp_path, watch, pause_before_first_write):
    # A new file written where it lives appears empty, and each write is an event: it gets the
    # full quiet period, so a pause between its halves never publishes the first half.
    path = tmp_path / "new.yaml"
    write(tmp_path / "a.yaml", GATEWAY.format(port=1))
    provider = FileProvider([str(tmp_path)], settle=0.3, stable_check=0.02, max_settle=10, replaced_settle=0.01)
    provider.load()
    changes = watch(provider)
    await changes.start()
    text = GATEWAY.format(port=2).replace("edge", "new")

    def write_in_two_halves() -> None:
        with open(path, "x") as stream:
            if pause_before_first_write:
                threading.Event().wait(0.1)  # the watch's batch closes on "added" alone
            stream.write(text[: len(text) // 2])
            stream.flush()
            threading.Event().wait(0.1)
            stream.write(text[len(text) // 2 :])

    writer = threading.Thread(target=write_in_two_halves, daemon=True)
    writer.start()
    try:
        batch = await changes.next_after_start()
        on_delivery = path.read_text()
    finally:
        writer.join(WAIT)
    assert batch == {str(path)}
    assert on_delivery == text


async def test_a_delete_then_recreate_save_is_one_change(tmp_path, watch):
    # Some tools save by deleting the file and writing a new one: the moment between the two must
    # not be published as "the file's objects are gone" (every route 404 until the new file).
    path = tmp_path / "a.yaml"
    write(path, GATEWAY.format(port=1))
    # A generous settle time, so the pause below is surely shorter even on a loaded machine.
    provider = FileProvider([str(tmp_path)], settle=0.3, stable_check=0.02, max_settle=10)
    assert ports(provider) == [1]
    changes = watch(provider)
    await changes.start()
    os.remove(path)
    await asyncio.sleep(0.1)
    path.write_text(GATEWAY.format(port=2))
    batch = await changes.next_after_start()
    assert batch == {str(path)}
    assert ports(provider) == [2]  # the first batch already sees the new file
    sentinel = write(tmp_path / "z.yaml", GATEWAY.format(port=3).replace("edge", "z"))
    assert await changes.next() == {sentinel}


async def test_a_file_written_without_end_still_reloads(tmp_path, watch):
    path = write(tmp_path / "a.yaml", GATEWAY.format(port=1))
    log = tmp_path / "grows.yaml"
    provider = FileProvider([str(tmp_path)], settle=0.05, stable_check=0.02, max_settle=0.5)
    provider.load()
    changes = watch(provider)
    await changes.start()
    stop = threading.Event()

    def scribble() -> None:
        with open(log, "w") as stream:
            while not stop.wait(0.01):
                stream.write("# more\n")
                stream.flush()

    writer = threading.Thread(target=scribble, daemon=True)
    writer.start()
    try:
        batch = await changes.next_after_start()
    finally:
        stop.set()
        writer.join(WAIT)
    assert batch == {str(log)}
    assert path in provider.load().files


async def test_changes_before_the_watch_started_are_not_lost(tmp_path, watch):
    path = write(tmp_path / "a.yaml", GATEWAY.format(port=1))
    provider = FileProvider([str(tmp_path)])
    assert ports(provider) == [1]
    Path(path).write_text(GATEWAY.format(port=22))  # after load, before any watch
    changes = watch(provider)
    assert await changes.next() == {path}
    assert ports(provider) == [22]


async def test_closing_the_stream_ends_the_watch(tmp_path):
    write(tmp_path / "a.yaml", GATEWAY.format(port=1))
    provider = FileProvider([str(tmp_path)])
    provider.load()
    before = {t.name for t in threading.enumerate()}
    stream = provider.changes()
    pending = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.2)
    assert any(t.name.startswith("meshgate-watch") for t in threading.enumerate())
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await stream.aclose()
    for thread in [t for t in threading.enumerate() if t.name.startswith("meshgate-watch") and t.name not in before]:
        thread.join(WAIT)
        assert not thread.is_alive()
