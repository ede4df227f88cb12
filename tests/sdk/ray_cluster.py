"""A real two-node Ray cluster on loopback for tests: `ray start --head`, then `ray start --address`.

Why it looks like this:
- Each node is its own `ray start --block` in a new session (``start_new_session``), with its own
  temp dir, ports and token file, so it never meets another Ray on this machine (no ``ray stop``,
  no ``/tmp/ray``, no shared ``~/.ray/auth_token``), and it is torn down by the PIDs of its own
  session: Ray's worker processes get process groups of their own, but stay in the session.
- The node address is 127.0.0.2, a loopback address: Ray rewrites 127.0.0.1 (and ``localhost``)
  to the machine's network address when it starts a node, which would take the cluster off
  loopback; another 127/8 address is used as given.
- Small nodes (1 CPU, a 200-300 MB object store): the machine has 2 cores shared with other jobs.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.2"
START_TIMEOUT_S = 90.0
#: ports one node needs besides the worker range (GCS only on the head)
_NODE_PORTS = ("node-manager-port", "object-manager-port", "runtime-env-agent-port", "metrics-export-port",
               "dashboard-agent-listen-port", "dashboard-agent-grpc-port")
_WORKER_PORTS = 64


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))  # Ray binds its servers to every interface for a non-127.0.0.1 node
            return True
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _free_range(n: int) -> int:
    """The first port of n consecutive free ones, between Ray's Ray Client server ports (23000-24000,
    one per `ray://` driver) and the kernel's ephemeral range (bounded tries)."""
    for _ in range(200):
        base = random.randrange(24100, 32000 - n)
        if all(_free(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports found for Ray workers")


def _session_pids(sid: int) -> list[int]:
    """Every live process in session ``sid`` (the node's `ray start` and all it started); zombies
    are dead already, they only wait for their parent to reap them."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if os.getsid(int(entry)) == sid and stat[stat.rindex(")") + 2] != "Z":
                    pids.append(int(entry))
            except (OSError, ValueError):  # gone meanwhile
                pass
    return pids


@dataclass
class Node:
    """One `ray start --block` and its session."""

    proc: subprocess.Popen[bytes]
    temp_dir: Path
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, timeout_s: float = 30.0) -> None:
        """SIGKILL every process of this node's session: the node dies as a crashed machine would."""
        sid = self.proc.pid
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = _session_pids(sid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.proc.wait(timeout=10)
        left = _session_pids(sid)
        assert not left, f"processes of the killed node still alive: {left}"


@dataclass
class RayCluster:
    """A head and its worker nodes on 127.0.0.2; ``env`` is what a driver needs to attach."""

    root: Path
    gcs_port: int
    client_port: int
    env: dict[str, str]
    head: Node | None = None
    workers: list[Node] = field(default_factory=list)

    @property
    def host(self) -> str:
        return HOST

    @property
    def address(self) -> str:
        return f"{HOST}:{self.gcs_port}"

    def _start(self, name: str, args: list[str]) -> Node:
        temp_dir = self.root / name
        log = self.root / f"{name}.log"
        ports = [arg for key in _NODE_PORTS for arg in (f"--{key}", str(_free_port()))]
        base = _free_range(_WORKER_PORTS)
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--node-ip-address", HOST, "--temp-dir", str(temp_dir),
               "--disable-usage-stats", "--min-worker-port", str(base), "--max-worker-port", str(base + _WORKER_PORTS - 1), *ports, *args]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        node = Node(proc, temp_dir, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                node.kill()
                raise RuntimeError(f"ray node {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        return node

    def start_head(self, *, num_cpus: int = 1, object_store_bytes: int = 250_000_000) -> None:
        self.head = self._start("head", ["--head", "--port", str(self.gcs_port), "--ray-client-server-port", str(self.client_port),
                                         "--include-dashboard", "false", "--dashboard-port", str(_free_port()),
                                         "--num-cpus", str(num_cpus), "--object-store-memory", str(object_store_bytes)])

    def add_worker(self, *, num_cpus: int = 1, object_store_bytes: int = 200_000_000) -> Node:
        node = self._start(f"worker{len(self.workers)}", ["--address", self.address, "--num-cpus", str(num_cpus),
                                                          "--object-store-memory", str(object_store_bytes)])
        self.workers.append(node)
        return node

    def python(self, code: str, timeout_s: float = 60.0) -> str:
        """Run ``code`` in a Python attached to nothing but this cluster's token and env; its stdout.
        (Ray reads its auth settings once per process: the test process itself never loads Ray.)"""
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, env=self.env)
        if res.returncode != 0:
            raise RuntimeError(f"cluster helper failed ({res.returncode}): {res.stderr[-3000:]}")
        return res.stdout

    def alive_nodes(self) -> int:
        return int(self.python(f"""
from ray._raylet import GcsClient
nodes = GcsClient(address={self.address!r}).get_all_node_info().values()
print(sum(1 for n in nodes if n.state == 0))  # GcsNodeInfo.ALIVE
""").strip())

    def wait_for_nodes(self, n: int, timeout_s: float = 60.0) -> None:
        """Until the GCS lists ``n`` live nodes (a fresh worker registers a moment after it printed)."""
        deadline = time.monotonic() + timeout_s
        while (alive := self.alive_nodes()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{alive} of {n} Ray nodes alive after {timeout_s}s")
            time.sleep(0.5)

    def log_tails(self, chars: int = 1500) -> str:
        """The end of every non-empty error log of the head (for a failing test's message)."""
        logs = sorted([*(self.root / "head").glob("session_*/logs/*.err"), *(self.root / "head").glob("session_*/logs/ray_client_server*.out")])
        return "\n".join(f"--- {f.name}:\n{f.read_text(errors='replace')[-chars:]}" for f in logs if f.stat().st_size)

    def stop(self) -> None:
        for node in [*self.workers, *([self.head] if self.head else [])]:
            if node.alive() or _session_pids(node.proc.pid):
                node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(workers: int = 1) -> RayCluster:
    """Head + ``workers`` worker nodes, 1 CPU each; the caller must ``stop()`` it."""
    root = Path(tempfile.mkdtemp(prefix="slray-"))  # short: Ray's socket paths must stay under 107 characters
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           # the head's client-server proxy waits this long for the per-client server it starts (Ray's default 30 s);
           # on a 2-core VM whose hypervisor steals CPU that start took longer (2026-12-08) and the Ray Client test failed
           "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "120"}
    env.pop("RAY_ADDRESS", None)
    cluster = RayCluster(root, _free_port(), _free_port(), env)
    try:
        cluster.start_head()
        for _ in range(workers):
            cluster.add_worker()
        cluster.wait_for_nodes(1 + workers)
    except BaseException:
        cluster.stop()
        raise
    return cluster
