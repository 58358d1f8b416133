"""Process settings, read once from the environment (prefix ``RTS_``) or a ``.env`` file.

Usage::

    from services.common.settings import get_settings
    settings = get_settings()

Every field can be set as ``RTS_<FIELD>`` (for example ``RTS_TRITON_URL=grpc://triton:8001``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RTS_", env_file=".env", extra="ignore", populate_by_name=True)

    environment: str = Field("local", description="local | staging | production; production refuses unsafe defaults")
    var_dir: Path = Field(REPO_ROOT / "var", description="Where local state lives: model repository, datasets, logs")

    # Storage (file://, s3://bucket/prefix, gs://bucket/prefix)
    model_repository_uri_: str | None = Field(
        None, alias="RTS_MODEL_REPOSITORY_URI", description="Triton model repository; default file://<var_dir>/model_repository")
    data_uri_: str | None = Field(
        None, alias="RTS_DATA_URI", description="Bucket for datasets, runs and lineage; default file://<var_dir>/bucket")

    # Triton
    triton_url: str | None = Field(
        None,
        description="External Triton as grpc://host:port. Unset: `make up` starts the bundled tritonserver.",
    )
    triton_http_url: str | None = Field(
        None,
        description="External Triton's HTTP endpoint, http://host:port, for traced requests (Triton's gRPC "
        "frontend loses the trace context of a few % of requests). Unset with triton_url: traced requests use gRPC.",
    )
    triton_trace_rate: int | None = Field(
        None, ge=1, description="With tracing on, Triton also starts a trace for 1 in N requests that come without "
        "a trace context (direct callers). Unset: it traces only requests its caller sampled (the gateway's).")
    triton_host: str = Field("127.0.0.1", description="Bind address of the bundled tritonserver")
    triton_http_port: int = Field(8100, description="Bundled tritonserver HTTP port (Serve owns 8000)")
    triton_grpc_port: int = Field(8101, description="Bundled tritonserver gRPC port")
    triton_metrics_port: int = Field(8102, description="Bundled tritonserver Prometheus metrics port")
    triton_model_config_name: str | None = Field(
        None, description="Triton --model-config-name: 'gpu' selects configs/gpu.pbtxt (KIND_GPU, onnxruntime_onnx)"
    )
    triton_response_cache_mb: int = Field(0, description="Triton local response cache size in MiB; 0 = off")
    triton_timeout_s: float = Field(5.0, description="Per-request deadline for calls to Triton")

    # Ray
    ray_gcs_port: int = Field(6380, description="Port of the Ray head started by `make up`")
    ray_dashboard_port: int = Field(8265, description="Ray dashboard port")
    ray_temp_dir: Path = Field(Path("/tmp/rts-ray"), description="Ray's --temp-dir; keep it short and outside the repo")
    serve_config: Path = Field(
        REPO_ROOT / "ray_apps" / "configs" / "inference-fused.yaml", description="Serve config deployed by `make up`"
    )
    serve_http_port: int = Field(8000, description="Serve HTTP port (the gateway)")
    serve_fast_path: bool = Field(True, description="RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for the Ray head")
    serve_haproxy: bool = Field(
        True, description="HAProxy instead of Serve's Python proxy on the HTTP port (needs serve_fast_path); "
        "its stats/metrics listeners bind all interfaces, as Ray's own gRPC ports do")

    admin_token: SecretStr | None = Field(None, description="Bearer token of the /admin API; unset disables it")
    retraining_listener: bool = Field(True, description="`make up` runs the local retraining listener")

    drift_watch: bool = Field(True, description="watch input/prediction drift against the served version")
    drift_window: int = Field(500, description="images in the drift window")
    drift_cooldown_s: float = Field(600.0, description="at most one drift retrain request per this many seconds")

    # Request limits
    max_body_bytes: int = Field(8 * 1024 * 1024, description="Largest request body accepted (413 above)")
    max_batch_items: int = Field(64, description="Most images in one request (413 above)")
    max_image_pixels: int = Field(16_000_000, description="Largest decoded image, width*height (decompression bombs)")

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, value: str) -> str:
        if value not in {"local", "staging", "production"}:
            raise ValueError(f"environment must be local, staging or production, not {value!r}")
        return value

    @property
    def model_repository_uri(self) -> str:
        return self.model_repository_uri_ or f"file://{(self.var_dir / 'model_repository').resolve()}"

    @property
    def data_uri(self) -> str:
        return self.data_uri_ or f"file://{(self.var_dir / 'bucket').resolve()}"

    @property
    def bundled_triton_grpc_url(self) -> str:
        return f"grpc://{self.triton_host}:{self.triton_grpc_port}"

    @property
    def effective_triton_url(self) -> str:
        return self.triton_url or self.bundled_triton_grpc_url

    @property
    def effective_triton_http_url(self) -> str | None:
        """Triton's HTTP endpoint for traced requests: the external one if set, else the bundled one."""
        if self.triton_http_url:
            return self.triton_http_url
        return None if self.triton_url else f"http://{self.triton_host}:{self.triton_http_port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
