"""SDS over ADS with the real Envoy: a TLS listener whose certificate is a Secret resource.

Envoy must fetch the Secret over the same ADS stream (both variants), ACK it (per resource, as
/status and the staged publish read it), serve the certificate, and serve a rotated one without
the listener changing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from pathlib import Path

import pytest
from ads_client import (
    make_cla,
    make_cluster,
    make_route,
    make_secret,
    make_tls_listener,
)
from cryptography import x509
from harness import write_tls_files

from meshgate.controlplane.publish import StagedPublisher
from meshgate.controlplane.status import ControlPlaneStatus
from meshgate.envoy.bootstrap import BootstrapOptions, render_bootstrap
from meshgate.envoy.process import EnvoyProcess
from meshgate.xds.server import start_xds_server
from meshgate.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Snapshot,
    SnapshotCache,
)

pytestmark = pytest.mark.timeout(60)

HOST = "secure.example.com"


def snapshot(tls_dir: Path) -> Snapshot:
    listener = make_tls_listener("https", "main", "edge-cert", port=0)  # Envoy picks the port
    listener.address.socket_address.address = "127.0.0.1"
    return Snapshot.build({
        SECRET: {"edge-cert": make_secret("edge-cert", (tls_dir / "tls.crt").read_bytes(),
                                          (tls_dir / "tls.key").read_bytes())},
        CLUSTER: {"a": make_cluster("a")}, ENDPOINT: {"a": make_cla("a", [9])},
        LISTENER: {"https": listener}, ROUTE: {"main": make_route("main", "a")},
    })


def served_serial(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def serial_of(tls_dir: Path) -> int:
    return x509.load_pem_x509_certificate((tls_dir / "tls.crt").read_bytes()).serial_number


async def until(predicate, what: str):  # noqa: ANN001
    for _ in range(400):
        try:
            value = await predicate()
        except (OSError, ssl.SSLError):
            value = None
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_certificate_from_sds_served_and_rotated(tmp_path: Path, delta: bool):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    ca1, ca2 = write_tls_files(first, [HOST]), write_tls_files(second, [HOST])
    cache, status = SnapshotCache(), ControlPlaneStatus()
    publisher = StagedPublisher(cache, "edge", status)
    snap1 = snapshot(first)
    publisher.publish(snap1)
    server, port = await start_xds_server(cache, status, "127.0.0.1:0")
    envoy = EnvoyProcess(render_bootstrap(BootstrapOptions(xds_port=port, node_id="sds", admin_port=0, delta=delta)),
                         tmp_path / "envoy", log_level="warning", restart=False)
    try:
        await envoy.start(wait_ready=True)

        async def acked_secret(expected: Snapshot):
            nodes = list(status.nodes.values())
            want = {"edge-cert": expected.resource_version(SECRET, "edge-cert")}
            return len(nodes) == 1 and nodes[0].has_acked(SECRET, want) and status.in_sync(nodes[0])
        await until(lambda: acked_secret(snap1), "Envoy to ACK the Secret")

        code, body = await envoy.admin_get("/listeners?format=json")
        assert code == 200, body
        (entry,) = json.loads(body)["listener_statuses"]
        tls_port = entry["local_address"]["socket_address"]["port_value"]
        served = await asyncio.to_thread(served_serial, tls_port, ca1)
        assert served == serial_of(first)

        # Rotation: only the Secret changes; Envoy swaps the certificate in the same listener.
        snap2 = snapshot(second)
        publisher.publish(snap2)
        assert snap2.type_version(LISTENER) == snap1.type_version(LISTENER)
        await until(lambda: acked_secret(snap2), "Envoy to ACK the rotated Secret")

        async def serves_second():
            return await asyncio.to_thread(served_serial, tls_port, ca2) == serial_of(second)
        await until(serves_second, "the rotated certificate to be served")
        assert status.nacks() == [] and status.last_error == []
    finally:
        await publisher.aclose()
        await envoy.stop()
        await server.stop(None)
