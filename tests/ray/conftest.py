"""A real local Ray cluster for the tests: a head and more nodes started with ``ray start`` on this
machine, each in its own session and temp dir, stopped by killing exactly those processes.

``ray stop`` is never used: it stops every Ray process of the machine, other people's clusters
included. ``start_local_cluster`` is generic (the distributed jobs' and the sharded serving's tests
share it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.storage.conftest import s3_server  # noqa: F401  (moto's S3 server, for the jobs on an object store)

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


@dataclass
class LocalCluster:
    """``address`` (``127.0.0.1:port`` of the head's GCS), the ``ray start --block`` processes (one per
    node, each leading its own session) and the temp dir their sessions live in."""

    address: str
    temp_dir: Path
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def pids(self) -> list[int]:
        """Every live process of this cluster: those of the nodes' sessions, and any process whose
        command line names this cluster's temp dir (Ray's workers do)."""
        sessions = {p.pid for p in self.nodes}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                pid = int(entry.name)
                cmdline = (entry / "cmdline").read_bytes()
                if os.getsid(pid) in sessions or str(self.temp_dir).encode() in cmdline:
                    found.append(pid)
            except (OSError, ProcessLookupError):
                continue
        return [p for p in found if p != os.getpid()]

    def stop(self) -> None:
        """SIGTERM the nodes (``--block`` stops its own processes), then SIGKILL whatever is left."""
        for p in self.nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.nodes:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _ in range(3):
            left = self.pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        for p in self.nodes:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_local_cluster(tmp_path: Path, nodes: int = 2, cpus: int = 1) -> LocalCluster:
    """Start a head and ``nodes - 1`` more nodes of ``cpus`` logical CPUs each on this machine.

    Workers import the patchseek of this checkout (``PYTHONPATH``). Each node's object store is small
    (200 MB): the machine is shared. ``tmp_path`` holds the nodes' logs; Ray's session dir is a short
    path under /tmp (its socket paths must stay under 107 bytes). Stop it with ``LocalCluster.stop``.
    """
    pytest.importorskip("ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="psray-", dir="/tmp"))
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATCHSEEK_OCR": "false",
    }
    env.pop("RAY_ADDRESS", None)
    cluster = LocalCluster(f"127.0.0.1:{port}", temp_dir, env=env)
    common = [
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        "--object-store-memory=200000000",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        "--block",
    ]
    logs = tmp_path / "ray-logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        head = [
            _ray_bin(),
            "start",
            "--head",
            f"--port={port}",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=false",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
            *common,
        ]
        cluster.nodes.append(_spawn(head, env, logs / "head.log"))
        _wait_for_port(port, cluster)
        for i in range(1, nodes):
            worker = [
                _ray_bin(),
                "start",
                f"--address={cluster.address}",
                f"--dashboard-agent-listen-port={_free_port()}",
                *common,
            ]
            cluster.nodes.append(_spawn(worker, env, logs / f"node{i}.log"))
        _wait_for_nodes(cluster, nodes)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_port(port: int, cluster: LocalCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in cluster.nodes):
            raise RuntimeError("ray start exited early; see the ray-logs folder")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head did not listen on {port} within {timeout} s")


def _wait_for_nodes(cluster: LocalCluster, n: int, timeout: float = 90) -> None:
    """Until the GCS lists ``n`` alive nodes (asked from a subprocess: this one stays unconnected)."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(1 for x in ray.nodes() if x['Alive']))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in cluster.nodes):
            raise RuntimeError("a ray node exited early; see the ray-logs folder")
        out = subprocess.run(
            [sys.executable, "-c", probe, cluster.address],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster did not reach {n} nodes within {timeout} s")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A head and one more node of one CPU each, for the whole test module."""
    cluster = start_local_cluster(tmp_path_factory.mktemp("ray"), nodes=2, cpus=1)
    yield cluster
    cluster.stop()
