"""The one Ray cluster of a test run: ``ray start --head`` on 127.0.0.1 (as a user starts one), 2 CPUs, joined
by every Ray test -- in-process builds (``ray.init(address=...)``) and ``mmfm shards build --ray-address``
subprocesses alike -- and stopped after the last test that uses it (tests/conftest.py). Its workers find S3 at
``http://127.0.0.1:{s3_port}`` with moto's dummy credentials: a test that writes to S3 from Ray tasks starts
``moto_s3(port=head.s3_port)`` (tests/integration/s3_helpers.py)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ENV = {"RAY_AUTH_MODE": "disabled"}      # a throwaway loopback cluster: no ~/.ray token to share


@dataclass
class RayHead:
    address: str          # 127.0.0.1:PORT, for --ray-address / ray.init(address=...)
    pid: int              # the `ray start` process: Ray's workers run under it
    s3_port: int          # the workers' AWS_ENDPOINT_URL port (reserved for a moto server)
    temp: str
    proc: subprocess.Popen

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)      # whatever of this head's session is left
        except ProcessLookupError:
            pass
        shutil.rmtree(self.temp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(num_cpus: int = 2, timeout: float = 90) -> RayHead:
    port, s3_port, temp = _free_port(), _free_port(), tempfile.mkdtemp(prefix="ray", dir="/tmp")
    s3 = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "testing",
          "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", str(num_cpus),
                             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp],
                            env=dict(os.environ, **ENV, **s3), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    head = RayHead(f"127.0.0.1:{port}", proc.pid, s3_port, temp, proc)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            head.stop()
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return head
        except OSError:
            if time.monotonic() > deadline:
                head.stop()
                raise RuntimeError(f"the Ray head did not listen on {port} within {timeout}s")
            time.sleep(0.5)
