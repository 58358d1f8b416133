"""Process settings: one object, read once from the environment (prefix ``RTS_``) or a ``.env`` file.

Usage::

    from services.settings import get_settings
    settings = get_settings()
    settings.triton.grpc_port, settings.retrain.workers, settings.data_uri

Every field is a variable: top-level fields are ``RTS_<FIELD>`` (``RTS_DATA_URI``), fields of a
section are ``RTS_<SECTION>_<FIELD>`` (``RTS_TRITON_GRPC_PORT``, ``RTS_RETRAIN_WORKERS``). A variable
that starts with ``RTS_`` and names no field is refused, with the closest real name, because a typo
that silently keeps a default is worse than one that stops the start.

Processes started by the stack (Ray workers, jobs, the listener) get the same settings as
environment variables (``Settings.to_env``), so every process of one stack agrees.
"""

from __future__ import annotations

import difflib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_PREFIX = "RTS_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TritonSettings(Section):
    url: str | None = Field(
        None, description="External Triton as grpc://host:port. Unset: `make up` starts the bundled tritonserver.")
    http_url: str | None = Field(
        None, description="External Triton's HTTP endpoint, http://host:port, for traced requests (Triton's gRPC "
        "frontend loses the trace context of a few % of requests). Unset with url: traced requests use gRPC.")
    trace_rate: int | None = Field(
        None, ge=1, description="With tracing on, Triton also starts a trace for 1 in N requests that come without "
        "a trace context (direct callers). Unset: it traces only requests its caller sampled (the gateway's).")
    trace_max_per_s: float = Field(
        20.0, ge=0, description="With tracing on, each gateway replica asks Triton to trace at most this many sampled "
        "requests a second (Triton crashes when its span queue overflows, server#7795); 0: every sampled request")
    host: str = Field("127.0.0.1", description="Bind address of the bundled tritonserver")
    http_port: int = Field(8100, description="Bundled tritonserver HTTP port (Serve owns 8000)")
    grpc_port: int = Field(8101, description="Bundled tritonserver gRPC port")
    metrics_port: int = Field(8102, description="Bundled tritonserver Prometheus metrics port")
    model_config_name: str | None = Field(
        None, description="Triton --model-config-name: 'gpu' selects configs/gpu.pbtxt (KIND_GPU, onnxruntime_onnx)")
    response_cache_mb: int = Field(0, ge=0, description="Triton local response cache size in MiB; 0 = off")
    timeout_s: float = Field(5.0, gt=0, description="Per-request deadline for inference calls to Triton")
    batch_in_flight: int = Field(
        1, ge=0, description="Calls each gateway replica has out to Triton per model version before requests that "
        "arrive meanwhile wait and go together in the next call (never held back otherwise); 0: every request its "
        "own call")
    batch_max_rows: int = Field(
        64, ge=1, description="Most rows in one batched call (and never more than the ensemble's max_batch_size)")

    @property
    def grpc_address(self) -> str:
        """grpc://host:port of the Triton the platform talks to (the external one, else the bundled one)."""
        return self.url or f"grpc://{self.host}:{self.grpc_port}"

    @property
    def http_address(self) -> str | None:
        """http://host:port of that Triton for traced requests; None for an external Triton without http_url."""
        if self.http_url:
            return self.http_url
        return None if self.url else f"http://{self.host}:{self.http_port}"


class RaySettings(Section):
    gcs_port: int = Field(6380, description="GCS port of the Ray head started by `make up`")
    dashboard_port: int = Field(8265, description="Ray dashboard port of that head")
    dashboard_url: str | None = Field(
        None, description="Ray Jobs API of an existing cluster (http://ray-head:8265), for the listener, the CLI "
        "and serverless adapters; unset: the head `make up` starts on dashboard_port")
    temp_dir: Path = Field(Path("/tmp/rts-ray"), description="Ray's --temp-dir; keep it short and outside the repo")
    worker_nodes: int = Field(0, ge=0, description="Ray worker nodes `make up` starts beside the head on this machine "
                              "(raylets of their own on 127.0.0.1, in the head's temp dir): Serve replicas then run "
                              "on them only, spread out, and the head keeps retraining; 0: everything on the head")
    worker_node_cpus: int = Field(1, ge=1, description="logical CPUs each of those worker nodes offers to Ray (a "
                                  "scheduling count, not a limit: every node shares this machine's real cores)")

    @property
    def jobs_url(self) -> str:
        return self.dashboard_url or f"http://127.0.0.1:{self.dashboard_port}"


class ServeSettings(Section):
    config: Path = Field(REPO_ROOT / "ray_apps" / "configs" / "inference-fused.yaml",
                         description="Serve config deployed by `make up`")
    http_port: int = Field(8000, description="Serve HTTP port (the gateway)")
    fast_path: bool = Field(True, description="RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for the Ray head")
    haproxy: bool = Field(True, description="HAProxy instead of Serve's Python proxy on the HTTP port (needs "
                          "fast_path); its stats/metrics listeners bind all interfaces, as Ray's own gRPC ports do")
    retry_on: str = Field("conn-failure empty-response", description="HAProxy's retry-on: when a replica dies "
                          "with requests on it, those are sent again to another replica (empty-response) instead of "
                          "failing; Ray's default is conn-failure alone")


class AdminSettings(Section):
    token: SecretStr | None = Field(None, description="Bearer token of the /admin API; unset disables it")


class ListenerSettings(Section):
    enabled: bool = Field(True, description="`make up` runs the retraining listener (local folder source)")
    source: Literal["local", "sqs", "pubsub"] = Field("local", description="where events come from")
    queue_url: str | None = Field(None, description="SQS queue with the bucket's notifications (source sqs)")
    region: str | None = Field(None, description="AWS region of the queue; default: from the queue URL or "
                               "AWS_DEFAULT_REGION")
    subscription: str | None = Field(None, description="projects/P/subscriptions/S (source pubsub)")
    debounce_s: float = Field(3.0, ge=0, description="events this close together make one run")
    max_wait_s: float = Field(30.0, gt=0, description="a burst never delays its run longer than this")
    retry_attempts: int = Field(3, ge=1, description="runs in all for events whose run failed on a server that "
                                "was away (object store, Triton, Jobs API); 1: never again")
    retry_backoff_s: float = Field(30.0, ge=0, description="wait before running such events again; doubles")


class LauncherSettings(Section):
    metrics_port: int = Field(8103, ge=0, description="`rts up`'s own Prometheus endpoint on 127.0.0.1: the "
                              "processes it supervises, up and restarts (0: none)")
    restart_backoff_s: float = Field(1.0, gt=0, description="first wait before restarting a crashed Triton or "
                                     "listener; doubles per crash in a row")
    restart_backoff_max_s: float = Field(30.0, gt=0, description="longest wait between restarts")
    stable_after_s: float = Field(60.0, gt=0, description="a process up this long has its backoff reset")


class RetrainSettings(Section):
    workers: int = Field(1, ge=1, description="Ray Train data-parallel workers (1 on a laptop, more on a cluster)")
    max_file_mb: int = Field(256, ge=1, description="an incoming data file larger than this is rejected unread")
    worker_cpus: float = Field(0.5, ge=0, description="logical CPUs each Ray Train worker asks for besides one unit "
                               "of the `training` resource; 0: the unit alone (Kubernetes' training pods offer no CPU "
                               "to Ray, one `training` unit per core)")
    worker_nice: int = Field(19, ge=0, le=19, description="niceness of a run: its driver, every actor Ray Train starts "
                             "for it and every thread of its Ray Train workers, whose BLAS/OpenMP threads are also "
                             "capped at max(1, worker_cpus); at 19 the threads of the driver and the workers are also "
                             "SCHED_IDLE (they get a core only when serving does not want it). The Serve configs run "
                             "replicas at 0 (RAY_worker_niceness in their runtime_env; Ray's default is 15). 0: as Ray "
                             "left them, no cap")
    storage_path: str | None = Field(None, description="Ray Train storage (shared/cloud on a multi-node cluster); "
                                     "default <var_dir>/ray_train")
    metric_tolerance: float = Field(0.01, ge=0, description="holdout gate: allowed relative loss of the model's "
                                    "primary metric against production (0.01 = 1%)")
    latency_budget_ms: float = Field(5.0, gt=0, description="latency gate: p50 of one row through the candidate "
                                     "ensemble on onnxruntime CPU")
    timeout_s: float = Field(900.0, gt=0, description="how long `rts models retrain --wait` and the listener wait "
                             "for a run")


class DriftSettings(Section):
    enabled: bool = Field(True, description="watch input/prediction drift against the served version")
    window: int = Field(500, ge=50, description="rows in each model's drift window")
    cooldown_s: float = Field(600.0, ge=0, description="at most one drift retrain request per model per this long")


class LimitsSettings(Section):
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)")
    max_batch_items: int = Field(64, gt=0, description="Most instances in one request (413 above)")
    max_image_pixels: int = Field(16_000_000, gt=0, description="Largest decoded image, width*height "
                                  "(decompression bombs are refused from the header)")


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", env_nested_delimiter="_",
                                      env_nested_max_split=1, extra="forbid")

    environment: Literal["local", "staging", "production"] = Field(
        "local", description="local | staging | production; production refuses unsafe values")
    var_dir: Path = Field(REPO_ROOT / "var", description="Where local state lives: model repository, bucket, logs")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Model packages to serve and retrain, as import paths "
        "(comma-separated or a JSON list). Empty: every package in services/models/.")
    model_repository_uri_: str | None = Field(
        None, alias="RTS_MODEL_REPOSITORY_URI",
        description="Triton model repository (file://, s3://bucket/prefix, gs://bucket/prefix); "
        "default file://<var_dir>/model_repository")
    data_uri_: str | None = Field(
        None, alias="RTS_DATA_URI",
        description="Bucket for datasets, runs and lineage; default file://<var_dir>/bucket")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible server (SeaweedFS, MinIO) for s3:// URIs; unset: AWS itself "
        "(or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, which boto3 reads)")
    sqs_endpoint_url: str | None = Field(None, description="SQS-compatible server for the sqs listener; unset: AWS")

    triton: TritonSettings = Field(default_factory=TritonSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    launcher: LauncherSettings = Field(default_factory=LauncherSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)

    _models_validator = field_validator("models", mode="before")(_split_list)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_variables(cls, values: Any) -> Any:
        unknown = unknown_variables(os.environ)
        if unknown:
            raise ValueError("; ".join(unknown))
        return values

    @model_validator(mode="after")
    def _safe_in_production(self) -> "Settings":
        if self.environment == "production":
            if self.admin.token is not None and len(self.admin.token.get_secret_value()) < 16:
                raise ValueError("RTS_ADMIN_TOKEN is shorter than 16 characters; refused in production")
            if self.model_repository_uri.startswith("file://") and self.triton.url:
                raise ValueError("an external Triton cannot read a file:// model repository of this machine; "
                                 "set RTS_MODEL_REPOSITORY_URI to an s3:// or gs:// URI in production")
        return self

    @property
    def model_repository_uri(self) -> str:
        return self.model_repository_uri_ or f"file://{(self.var_dir / 'model_repository').resolve()}"

    @property
    def data_uri(self) -> str:
        return self.data_uri_ or f"file://{(self.var_dir / 'bucket').resolve()}"

    def to_env(self) -> dict[str, str]:
        """The values set explicitly (not defaults), as the RTS_* variables that give them to another process."""
        env: dict[str, str] = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            field = type(self).model_fields[name]
            if isinstance(value, Section):
                for sub in value.model_fields_set:
                    _put(env, f"{ENV_PREFIX}{name}_{sub}".upper(), getattr(value, sub))
            else:
                _put(env, field.alias or f"{ENV_PREFIX}{name}".upper(), value)
        return env


def _put(env: dict[str, str], key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    elif isinstance(value, (list, dict)):
        value = json.dumps(value)
    env[key] = str(value)


def variable_names() -> set[str]:
    """Every RTS_* variable the settings understand."""
    names = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            names.add(f"{ENV_PREFIX}{name}".upper())
            names.update(f"{ENV_PREFIX}{name}_{sub}".upper() for sub in annotation.model_fields)
        else:
            names.add((field.alias or f"{ENV_PREFIX}{name}").upper())
    return names


def unknown_variables(environ: dict[str, str] | os._Environ) -> list[str]:
    """A sentence per RTS_* variable that names no setting, with the closest real name."""
    known = variable_names()
    problems = []
    for key in sorted(k for k in environ if k.upper().startswith(ENV_PREFIX)):
        if key.upper() in known:
            continue
        close = difflib.get_close_matches(key.upper(), known, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see services/settings.py for every setting"
        problems.append(f"{key} is not a setting{hint}")
    return problems


@lru_cache
def get_settings() -> Settings:
    return Settings()
