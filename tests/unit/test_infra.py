"""Deployment files stay in step with the code they deploy."""

import yaml

from ray.serve.schema import ServeDeploySchema
from services.settings import REPO_ROOT

CONFIGS = REPO_ROOT / "ray_apps" / "configs"


def test_serve_configs_are_valid_for_serve_deploy():
    for path in CONFIGS.glob("*.yaml"):
        ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))


def test_rayservice_runs_the_same_application_as_make_up():
    # serveConfigV2 is generated (`rts k8s serve-config`); tests/unit/test_k8s_manifests.py checks it is current
    service = yaml.safe_load((REPO_ROOT / "infra" / "k8s" / "base" / "serve-config.yaml").read_text())
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    local = yaml.safe_load((CONFIGS / "inference-fused.yaml").read_text())
    def without_env(apps: list[dict]) -> list[dict]:
        return [{k: v for k, v in a.items() if k != "runtime_env"} for a in apps]

    assert without_env(serve_config["applications"]) == without_env(local["applications"])
    for cluster, mine in zip(serve_config["applications"], local["applications"]):  # the local env, and Triton's URL
        assert cluster["runtime_env"]["env_vars"] == {**mine.get("runtime_env", {}).get("env_vars", {}),
                                                      "RTS_TRITON_URL": cluster["runtime_env"]["env_vars"]["RTS_TRITON_URL"]}
    ServeDeploySchema.model_validate(serve_config)


def test_serve_config_args_match_the_builder():
    from ray_apps.inference import InferenceAppArgs

    for path in CONFIGS.glob("*.yaml"):
        for app in yaml.safe_load(path.read_text())["applications"]:
            InferenceAppArgs.model_validate(app.get("args", {}))


def test_dashboard_and_alerts_query_only_metrics_the_code_records():
    """A renamed metric or label leaves a panel or an alert empty forever; this keeps them in step."""
    import json
    import re

    from services.telemetry.metrics import METRIC_FAMILIES

    dashboard = json.loads((REPO_ROOT / "infra" / "grafana" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    alerts = yaml.safe_load((REPO_ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    suffixes = ("_bucket", "_count", "_sum")
    checked = 0
    for expr in exprs:
        for name, selector in re.findall(r"\b(rts_[a-z_]+)(\{[^}]*\})?", expr):
            family = METRIC_FAMILIES.get(name) or next(
                (METRIC_FAMILIES[name[:-len(s)]] for s in suffixes if name.endswith(s) and name[:-len(s)] in
                 METRIC_FAMILIES), None)
            assert family is not None, f"{expr!r} queries {name}, which the code never records"
            labels = set(re.findall(r"([a-z_]+)\s*[=!]~?", selector or ""))
            allowed = set(family.labels) | ({"le"} if family.kind == "histogram" else set())
            assert labels <= allowed, f"{expr!r}: {name} has no labels {labels - allowed}"
            checked += 1
    assert checked > 20
    assert {"rts_traffic_share", "rts_version_stage", "rts_drift_alerts_total"} <= \
        {n for e in exprs for n in re.findall(r"\brts_[a-z_]+", e)}
