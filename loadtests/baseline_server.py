"""What many users would write instead: one FastAPI process running onnxruntime in-process.

Same preprocessing, same ONNX models (the served version's files), same postprocessing as the
platform, no Ray, no Triton. The benchmark runs it beside the gateway so the comparison is fair::

    python -m loadtests.baseline_server --repository /abs/var/model_repository --version 1 --port 9100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.errors import ServingError
from services.modelkit.discovery import load_package
from services.triton.onnx_ensemble import OnnxEnsemble


def create_baseline_app(repository: str, version: int) -> FastAPI:
    digits = load_package("services.models.digits")
    files = {m: (Path(repository) / m / str(version) / "model.onnx").read_bytes() for m in digits.family.members}
    model = OnnxEnsemble(digits.family, files)
    options = digits.Options()
    app = FastAPI(title="baseline: FastAPI + onnxruntime")

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        form = await request.form()
        try:
            rows = np.stack([digits.from_image(await f.read()) for f in form.getlist("file")])
        except ServingError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        preds = digits.task.postprocess(model.primary(rows), options)
        return JSONResponse({"predictions": preds, "model": {"name": "digits", "version": str(version)}})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", required=True)
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_baseline_app(args.repository, args.version), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
