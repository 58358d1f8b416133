"""Triton serves a model repository straight from S3 (moto and SeaweedFS), addressed the way
``S3Store.triton_repository_uri`` says: ``s3://http://127.0.0.1:PORT/bucket/prefix``.

The repository is published by the platform's own first build (``rts models init``) through the S3
store, so this also checks that what the registry writes (including the ensemble's version
placeholder: object stores have no empty folders) is what Triton needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import uuid

import pytest

from services.runtime.processes import free_ports
from services.runtime.triton import TritonServer
from services.settings import Settings
from services.storage import open_store

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("server_fixture", ["moto_server", "seaweedfs"])
def test_triton_loads_the_ensemble_from_s3(request, server_fixture, tmp_path):
    server = request.getfixturevalue(server_fixture)
    bucket = f"rts-triton-{uuid.uuid4().hex[:8]}"
    server.client("s3").create_bucket(Bucket=bucket)
    store = open_store(f"s3://{bucket}/model_repository", endpoint_url=server.endpoint_url, **server.credentials)

    env = {**os.environ, **server.env, "RTS_MODEL_REPOSITORY_URI": store.uri, "RTS_S3_ENDPOINT_URL": server.endpoint_url,
           "RTS_DATA_URI": f"file://{tmp_path}/bucket", "RTS_VAR_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "services.cli", "models", "init", "digits"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert store.exists("digits/1/ensemble-version.txt")

    repository = store.triton_repository_uri()
    assert repository == f"s3://{server.endpoint_url}/{bucket}/model_repository"
    settings = Settings(var_dir=tmp_path, triton=dict(zip(("http_port", "grpc_port", "metrics_port"),
                                                       free_ports(3))))
    # Triton's S3 client takes credentials and region from the AWS_* variables, like boto3.
    with TritonServer(repository, settings, load_models=("digits",), work_dir=tmp_path / "triton",
                      env=server.env) as triton:
        with urllib.request.urlopen(f"{triton.http_url}/v2/models/digits/ready", timeout=5) as resp:
            assert resp.status == 200
