"""Deployment files stay in step with the code they deploy."""

import yaml

from ray.serve.schema import ServeDeploySchema
from services.settings import REPO_ROOT

CONFIGS = REPO_ROOT / "ray_apps" / "configs"


def test_serve_configs_are_valid_for_serve_deploy():
    for path in CONFIGS.glob("*.yaml"):
        ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))


def test_rayservice_runs_the_same_application_as_make_up():
    service = yaml.safe_load((REPO_ROOT / "infra" / "k8s" / "rayservice.yaml").read_text())
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    local = yaml.safe_load((CONFIGS / "inference-fused.yaml").read_text())
    assert serve_config["applications"] == local["applications"]
    ServeDeploySchema.model_validate(serve_config)


def test_serve_config_args_match_the_builder():
    from ray_apps.inference import InferenceAppArgs

    for path in CONFIGS.glob("*.yaml"):
        for app in yaml.safe_load(path.read_text())["applications"]:
            InferenceAppArgs.model_validate(app.get("args", {}))
