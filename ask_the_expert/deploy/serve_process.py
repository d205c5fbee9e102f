"""``ate-deploy serve`` in a child process on free loopback ports, for the tests and the serving benchmarks.

The child runs in its own session, so stopping it reaches Triton's server process too: SIGTERM to the process
group (PyTriton stops Triton and removes its workspace), then SIGKILL after a bounded wait. Waiting for readiness
is bounded as well: the server and every expert model must answer the V2 readiness checks within
``start_timeout_s``. A server killed with SIGKILL cannot clean up, so ``stop`` removes what it left: PyTriton's
workspace (PYTRITON_HOME points into a scratch folder of this object), the shared-memory blocks its processes had
mapped (read from /proc when it became ready and before a kill) and Triton's copies of the model folders in /tmp
(their config names the workspace).
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
from collections.abc import Sequence
from pathlib import Path

from ask_the_expert.deploy.bundle_format import ROUTER_FILE, RouterConfig, read_json
from ask_the_expert.deploy.serve_contract import expert_model_name
from ask_the_expert.utils.errors import SuiteError


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ServerProcess:
    """``ate-deploy serve`` for ``bundle`` on free ports of 127.0.0.1; a context manager that always stops it."""

    def __init__(
        self, bundle: str | Path, args: Sequence[str] = (), log: str | Path | None = None, start_timeout_s: float = 90
    ) -> None:
        self.host = "127.0.0.1"
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3, self.host)
        self.command = [
            sys.executable, "-m", "ask_the_expert.commands.deploy", "serve", "--bundle", str(bundle),
            "--host", self.host,
            "--http_port", str(self.http_port), "--grpc_port", str(self.grpc_port),
            "--metrics_port", str(self.metrics_port), *args,
        ]  # fmt: skip
        router = RouterConfig.from_dict(read_json(Path(bundle) / ROUTER_FILE, "routing rule"))
        self.models = [expert_model_name(j) for j in range(router.num_experts)]
        self.log_path = Path(log) if log else None
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="deploy-serve-"))
        self.env = {"PYTRITON_HOME": str(self.scratch)}
        self.startup_s = float("nan")
        self.shared_memory: set[Path] = set()

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def start(self) -> ServerProcess:
        """Start the child and wait (bounded) until every model is ready; ``startup_s`` is how long that took."""
        began = time.perf_counter()
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # the child keeps its own copy
        env = {**os.environ, **self.env}
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        if log is not subprocess.DEVNULL:
            log.close()
        try:
            self._wait_ready(began)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - began
        self.shared_memory |= self._mapped_shared_memory()
        return self

    def _wait_ready(self, began: float) -> None:
        import tritonclient.http as v2

        client = v2.InferenceServerClient(self.http_url, connection_timeout=1.0, network_timeout=1.0)
        try:
            while time.perf_counter() - began < self.start_timeout_s:
                if self.process.poll() is not None:
                    raise SuiteError(f"The server exited with code {self.process.returncode}: {self.log_tail()}")
                try:
                    if client.is_server_ready() and all(client.is_model_ready(m) for m in self.models):
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        raise SuiteError(f"The server was not ready after {self.start_timeout_s} s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's whole process group (Triton included)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def _mapped_shared_memory(self) -> set[Path]:
        """The /dev/shm files mapped by the processes of the server's group (Linux /proc)."""
        blocks = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                group = int(stat.read_text().rsplit(")", 1)[1].split()[2])  # after "pid (comm)": state ppid pgrp
                if group == self.process.pid:
                    maps = (stat.parent / "maps").read_text()
                    blocks |= {Path(line.split()[-1]) for line in maps.splitlines() if " /dev/shm/" in line}
            except (OSError, IndexError, ValueError):  # a process that ended meanwhile, or not ours to read
                continue
        return blocks

    def kill(self) -> None:
        """SIGKILL the process group, as a crash would (``stop`` later removes what it left)."""
        if self.process is not None and self.process.poll() is None:
            self.shared_memory |= self._mapped_shared_memory()
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, wait at most ``grace_s``, then SIGKILL whatever is left of the process group."""
        if self.process is None:
            return
        self.signal(signal.SIGCONT)  # a stopped (SIGSTOP) server cannot handle SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # Triton's process may outlive the Python parent
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """What the child left: its shared memory, model folder copies whose config names its workspace, and the
        scratch folder."""
        for block in self.shared_memory:
            block.unlink(missing_ok=True)
        for folder in Path(tempfile.gettempdir()).glob("folder*"):
            config = folder / "config.pbtxt"
            try:
                mine = str(self.scratch) in config.read_text(errors="replace")
            except OSError:  # not a model folder copy, or another user's
                continue
            if mine:
                shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
