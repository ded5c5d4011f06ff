"""In-cluster configuration, as in a pod: no kubeconfig, the service account's files (token, CA,
namespace) and $KUBERNETES_SERVICE_HOST/PORT, against the fake API server over TLS with a bearer
token (the production client, kubernetes-asyncio, unmodified). The files live in a test folder,
named by $MESHGATE_SERVICE_ACCOUNT_DIR (unset in production: the standard mount path).

Kubernetes rotates a pod's token by replacing the file; kubernetes-asyncio reads it again before
a request once the last read is `TOKEN_REFRESH_PERIOD` (a minute) old. The tests shorten that
period in-process (no test waits a minute) and check that the new token is what the client sends
after a rotation."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme
from fake_kube import FakeKube
from harness import ROOT, free_port
from kubernetes_asyncio.config import incluster_config
from test_kubernetes_provider import gateway, gateway_class, route, service, wait_for

from meshgate.controlplane.readiness import kubernetes_check
from meshgate.errors import StartupError
from meshgate.providers.kubernetes import KubernetesProvider, api_client
from meshgate.providers.kubernetes.leader import default_namespace

pytestmark = pytest.mark.timeout(60)


def write(path: Path, text: str) -> None:
    """Replace a file at once, as the kubelet does (a new file renamed over the old)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def kube(ca: trustme.CA):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)  # the API server's certificate, for its address
    fake = await FakeKube(bookmark_interval=0.2, token="token-1", ssl_context=context).start()
    for obj in (gateway_class(), gateway(), service(), route()):
        fake.create(obj)
    yield fake
    await fake.stop()


@pytest.fixture
def pod(tmp_path: Path, kube: FakeKube, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What a pod sees: the service account's files and the API server's address in its environment."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("token-1")
    ca.cert_pem.write_to_path(str(account / "ca.crt"))
    (account / "namespace").write_text("meshgate-system")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.port))
    monkeypatch.setenv("MESHGATE_SERVICE_ACCOUNT_DIR", str(account))
    return account


async def test_the_service_account_is_used_and_a_rotated_token_picked_up(
        kube: FakeKube, pod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(incluster_config, "TOKEN_REFRESH_PERIOD", datetime.timedelta(seconds=0.3))
    provider = KubernetesProvider(sync_timeout=10, max_backoff=0.3)
    await provider.start()
    try:
        assert provider.description == f"Kubernetes API https://127.0.0.1:{kube.port}"
        assert kubernetes_check(provider)()["ok"]
        assert {d.data["kind"] for d in provider.load().documents} >= {"Gateway", "HTTPRoute", "Service"}
        assert set(kube.tokens_seen) == {"Bearer token-1"}
        assert default_namespace() == "meshgate-system"  # the Lease's namespace, from the same folder

        # The kubelet rotates the token; this API server takes only the new one from now on (a
        # real one accepts the old one until it expires, so there is no outage). The API server
        # restarts too, so every watch reconnects: new requests, with the token read again.
        write(pod / "token", "token-2")
        kube.token = "token-2"
        await kube.stop()
        seen = len(kube.tokens_seen)
        await kube.start()
        kube.create({**route("after"), "spec": {**route()["spec"], "rules": [{"matches": [{"path": {"value": "/after"}}],
                                                                             "backendRefs": [{"name": "app", "port": 80}]}]}})
        await wait_for(lambda: any(d.data["metadata"]["name"] == "after" for d in provider.load().documents),
                       timeout=15, what="a change seen with the rotated token")
        await wait_for(lambda: kubernetes_check(provider)()["ok"], timeout=15, what="every watch back")
        after = kube.tokens_seen[seen:]
        assert "Bearer token-2" in after
        # Once the client has read the new token it never goes back to the old one.
        first_new = after.index("Bearer token-2")
        assert set(after[first_new:]) == {"Bearer token-2"}, after
    finally:
        await provider.close()


async def test_what_a_pod_can_get_wrong_is_said(kube: FakeKube, pod: Path, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    # Not in a pod at all: the in-cluster config needs the API server's address.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(StartupError, match=r"cannot load the in-cluster config \(no --kubeconfig, no \$KUBECONFIG; "
                       rf"service account in {pod}\): Service host/port is not set"):
        await api_client()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    # No service account mounted (automountServiceAccountToken: false).
    (pod / "token").unlink()
    with pytest.raises(StartupError, match="Service token file does not exist"):
        await api_client()
    # A token the API server refuses: every kind says so, and the provider isn't ready.
    (pod / "token").write_text("stale")
    provider = KubernetesProvider(sync_timeout=1, max_backoff=0.3)
    await provider.start()
    try:
        check = kubernetes_check(provider)()
        assert not check["ok"] and check["failing"]
        assert all(e == "HTTP 401 Unauthorized (credentials refused)" for e in check["failing"].values()), check
    finally:
        await provider.close()
    # A CA that didn't sign the API server's certificate: the TLS handshake fails, nothing is read.
    (pod / "token").write_text("token-1")
    trustme.CA().cert_pem.write_to_path(str(pod / "ca.crt"))
    provider = KubernetesProvider(sync_timeout=1, max_backoff=0.3)
    await provider.start()
    try:
        failing = kubernetes_check(provider)()["failing"]
        assert failing and all("CERTIFICATE_VERIFY_FAILED" in e or "certificate verify failed" in e
                               for e in failing.values()), failing
    finally:
        await provider.close()


async def test_meshgate_xds_runs_in_cluster(kube: FakeKube, pod: Path) -> None:
    """`meshgate xds --kubernetes` with no kubeconfig, as its Deployment runs it."""
    xds, status = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshgate", "xds", "--kubernetes", "--xds-address", f"127.0.0.1:{xds}",
        "--status-address", f"127.0.0.1:{status}", cwd=ROOT, env=dict(os.environ),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as session:
            async def kubernetes() -> dict | None:
                try:
                    async with session.get(f"http://127.0.0.1:{status}/readyz",
                                           timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        return json.loads(await resp.text())["checks"]["dependencies"].get("kubernetes")
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    return None

            deadline = asyncio.get_running_loop().time() + 30
            part = None
            while asyncio.get_running_loop().time() < deadline:
                assert proc.returncode is None, (await proc.stderr.read()).decode()[-2000:]
                part = await kubernetes()
                if part and part["ok"]:
                    break
                await asyncio.sleep(0.1)
            assert part and part["ok"], part
            assert part["api"] == f"Kubernetes API https://127.0.0.1:{kube.port}"
            assert part["leader"]["leader"]  # it took the Lease, in the service account's namespace
        lease = kube.read("coordination.k8s.io/v1", "Lease", "meshgate-controlplane", "meshgate-system")
        assert lease["spec"]["holderIdentity"]
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
