"""The event-driven loop on the local default: a data file lands in incoming/ -> the listener
(started by `make up` in real use) submits a run -> a new version serves. The file arrives while
the listener is down, so this also shows a stopped listener loses nothing."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.models.digits.data import load_split
from services.runtime.stack import Listener

pytestmark = pytest.mark.integration


def test_file_in_incoming_becomes_a_served_version(stack, gateway, tmp_path):
    split = load_split()
    bucket = Path(stack.settings.data_uri.removeprefix("file://"))
    incoming = bucket / "datasets/digits/incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, images=np.clip(split.train.x[:300] * 0.9, 0, 16), labels=split.train.y[:300])
    (incoming / "fainter.npz").write_bytes(buf.getvalue())  # lands while no listener runs

    token = stack.settings.admin.token.get_secret_value()
    admin = httpx.Client(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    before = admin.get("/admin/models/digits").json()["serving"]
    listener = Listener(stack.job_env(), tmp_path / "listener.log", ("--source", "local", "--debounce", "1"))

    def serving_lineage() -> dict:
        models = admin.get("/admin/models/digits").json()
        return next(v for v in models["versions"] if v["version"] == models["serving"])["lineage"]

    with listener:
        # Other requests may wait in the bucket too (a drift request from an earlier test): they
        # are handled as well, possibly in the same run. Wait for a served version trained on our file.
        deadline = time.monotonic() + 180
        lineage = {}
        while time.monotonic() < deadline:
            time.sleep(2)
            assert listener.running, (tmp_path / "listener.log").read_text()[-2000:]
            lineage = serving_lineage()
            files = [f["key"] for f in lineage.get("data", {}).get("files", [])]
            if "datasets/digits/accepted/fainter.npz" in files:
                break
        else:
            raise AssertionError((tmp_path / "listener.log").read_text()[-3000:])
    serving = admin.get("/admin/models/digits").json()["serving"]
    assert serving != before
    assert all(e["type"] in ("rts.object.created", "rts.retrain.requested") for e in lineage["events"])
    assert (bucket / "datasets/digits/accepted/fainter.npz").exists()
    assert not (incoming / "fainter.npz").exists()
    body = {"instances": [{"pixels": split.holdout.x[0].tolist()}]}
    assert gateway.post("/v1/predict", json=body).json()["model"]["version"] == str(serving)
