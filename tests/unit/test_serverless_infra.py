"""infra/serverless: the bucket-notification wiring as code, kept in step with the code it deploys.

AWS: the CloudFormation template passes cfn-lint, and its pieces point at each other (bucket ->
queue -> function, queue policy -> bucket, dead-letter queue, the role's S3 scope = where the
Lambda writes). GCP: the Terraform is parsed with python-hcl2 (Terraform itself cannot run here)
and cross-checked the same way: every reference names something declared, the notification and
the trigger use one topic, the prefixes are the ones the code uses.
"""

from __future__ import annotations

import re
from typing import Any

import hcl2
import pytest
import yaml
from cfnlint.api import lint_file

from services.events.serverless import PUBSUB_PUBLISHED
from services.registry.records import Records
from services.retraining.artefacts import FUNCTION_ENTRY_POINT, LAMBDA_HANDLER
from services.retraining.dataset import DataPaths
from services.settings import REPO_ROOT
from services.storage import open_store

TEMPLATE = REPO_ROOT / "infra" / "serverless" / "aws" / "retraining-trigger.yaml"
TERRAFORM = REPO_ROOT / "infra" / "serverless" / "gcp"


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory) -> dict[str, str]:
    """Where the code puts what the wiring names: new data, and the run requests the trigger writes."""
    store = open_store(f"file://{tmp_path_factory.mktemp('bucket')}")
    Records(store).save_request("r1", {})
    [key] = [o.key for o in store.list()]
    assert DataPaths("m").incoming.startswith("datasets/")
    return {"datasets": "datasets/", "runs": key.split("/")[0] + "/"}


# --- AWS -------------------------------------------------------------------------------------------------

def test_cloudformation_passes_cfn_lint(tmp_path):
    assert [str(m) for m in lint_file(TEMPLATE)] == []
    broken = tmp_path / "broken.yaml"  # the check checks something: a queue that is not there
    broken.write_text(TEMPLATE.read_text().replace("Fn::GetAtt: [EventQueue, Arn]", "Fn::GetAtt: [EventQueues, Arn]"))
    assert any("EventQueues" in str(m) for m in lint_file(broken))


def test_cloudformation_wires_bucket_queue_and_function(prefixes):
    resources = yaml.safe_load(TEMPLATE.read_text())["Resources"]
    queue_arn = {"Fn::GetAtt": ["EventQueue", "Arn"]}
    bucket, queue, function = resources["DataBucket"], resources["EventQueue"], resources["Function"]
    [notification] = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert notification["Queue"] == queue_arn and notification["Event"] == "s3:ObjectCreated:*"
    [rule] = notification["Filter"]["S3Key"]["Rules"]
    assert rule == {"Name": "prefix", "Value": {"Fn::Sub": "${DataPrefix}" + prefixes["datasets"]}}
    assert bucket["Properties"]["BucketName"] == {"Ref": "DataBucketName"}
    assert bucket["DependsOn"] == "EventQueuePolicy"

    [statement] = resources["EventQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Resource"] == queue_arn and statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${DataBucketName}"}
    assert queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}

    props = function["Properties"]
    assert (props["Handler"], props["Runtime"], props["Architectures"]) == (LAMBDA_HANDLER, "python3.11", ["x86_64"])
    assert queue["Properties"]["VisibilityTimeout"] >= 6 * props["Timeout"]
    assert props["Environment"]["Variables"]["RTS_DATA_URI"] == {"Fn::Sub": "s3://${DataBucketName}/${DataPrefix}"}
    mapping = resources["EventSourceMapping"]["Properties"]
    assert mapping["EventSourceArn"] == queue_arn and mapping["FunctionName"] == {"Ref": "Function"}

    # Least privilege: the queue it reads, the log group it writes, and only the run requests in the bucket.
    statements = {s["Sid"]: s for s in resources["FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]}
    assert statements["ConsumeEvents"]["Resource"] == queue_arn
    assert statements["WriteRunRequests"]["Resource"] == \
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::${DataBucketName}/${DataPrefix}" + prefixes["runs"] + "*"}
    assert sorted(statements["WriteRunRequests"]["Action"]) == ["s3:GetObject", "s3:PutObject"]
    wildcard = [s["Sid"] for s in statements.values() if s["Resource"] == "*"]
    assert wildcard == ["NetworkInterfacesInTheVpc"]


# --- GCP -------------------------------------------------------------------------------------------------

def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _clean(value: Any) -> Any:
    """python-hcl2's output with the quotes of literal strings and keys, and its markers, taken off."""
    if isinstance(value, dict):
        return {_unquote(k): _clean(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return _unquote(value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def terraform() -> dict[str, dict]:
    """{"resource": {type: {name: body}}, "data": ..., "variable": {name: body}, "locals": {...}, "output": ...}"""
    found: dict[str, dict] = {"resource": {}, "data": {}, "variable": {}, "locals": {}, "output": {}}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as f:
            parsed = _clean(hcl2.load(f))
        for kind in ("resource", "data"):
            for item in parsed.get(kind, []):
                for type_, named in item.items():
                    found[kind].setdefault(type_, {}).update(named)
        for kind in ("variable", "output", "locals"):
            for item in parsed.get(kind, []):
                found[kind].update(item)
    return found


def block(body: dict, name: str) -> dict:
    [inner] = body[name]
    return inner


def test_terraform_references_name_what_is_declared(terraform):
    text = "\n".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    checked = 0
    for kind, a, b in re.findall(r"\b(google_[a-z0-9_]+|data|var|local)\.([a-z0-9_]+)(?:\.([a-z0-9_]+))?", text):
        if kind == "var":
            assert a in terraform["variable"], f"var.{a} is not declared"
        elif kind == "local":
            assert a in terraform["locals"], f"local.{a} is not declared"
        elif kind == "data":
            assert b in terraform["data"].get(a, {}), f"data.{a}.{b} is not declared"
        else:
            assert a in terraform["resource"].get(kind, {}), f"{kind}.{a} is not declared"
        checked += 1
    assert checked > 40


def test_terraform_wires_notification_topic_and_function(terraform, prefixes):
    res, local = terraform["resource"], terraform["locals"]
    data_events = "${google_pubsub_topic.data_events.id}"
    notification = res["google_storage_notification"]["datasets"]
    assert notification["topic"] == data_events and notification["bucket"] == "${google_storage_bucket.data.name}"
    # The notification format the event parsing reads (services/events/pubsub.py), on the code's prefix.
    assert (notification["payload_format"], notification["event_types"]) == ("JSON_API_V1", ["OBJECT_FINALIZE"])
    assert notification["object_name_prefix"] == "${local.datasets}"
    assert local["datasets"] == "${var.data_prefix}" + prefixes["datasets"]
    publisher = res["google_pubsub_topic_iam_member"]["gcs_publishes_data_events"]
    assert publisher["topic"] == data_events and "google_storage_project_service_account.gcs" in publisher["member"]
    assert notification["depends_on"] == ["${google_pubsub_topic_iam_member.gcs_publishes_data_events}"]

    function = res["google_cloudfunctions2_function"]["retrain_trigger"]
    build, service, trigger = (block(function, k) for k in ("build_config", "service_config", "event_trigger"))
    assert (build["runtime"], build["entry_point"]) == ("python311", FUNCTION_ENTRY_POINT)
    assert (trigger["event_type"], trigger["pubsub_topic"]) == (PUBSUB_PUBLISHED, data_events)
    assert service["environment_variables"]["RTS_DATA_URI"] == "${local.data_uri}"
    assert local["data_uri"] == "gs://${google_storage_bucket.data.name}/${var.data_prefix}"
    assert service["service_account_email"] == "${google_service_account.function.email}"
    assert trigger["service_account_email"] == "${google_service_account.trigger.email}"


def test_terraform_pushes_retrain_requests_with_dead_lettering(terraform):
    res, local = terraform["resource"], terraform["locals"]
    assert res["google_pubsub_topic"]["retrain"]["name"] == "${local.retrain_topic}"
    push = res["google_pubsub_subscription"]["retrain_push"]
    assert push["topic"] == "${google_pubsub_topic.retrain.id}"
    endpoint = block(push, "push_config")["push_endpoint"]
    assert endpoint.startswith("${google_cloudfunctions2_function.retrain_trigger.service_config[0].uri}/")
    assert endpoint.endswith("/projects/${var.project}/topics/${local.retrain_topic}")  # what functions-framework parses
    assert block(block(push, "push_config"), "oidc_token")["service_account_email"] == \
        "${google_service_account.trigger.email}"
    dead_letter = block(push, "dead_letter_policy")
    assert dead_letter["dead_letter_topic"] == "${google_pubsub_topic.retrain_dead_letter.id}"
    assert res["google_pubsub_topic_iam_member"]["dead_letter_publisher"]["topic"] == dead_letter["dead_letter_topic"]
    assert res["google_pubsub_subscription_iam_member"]["dead_letter_subscriber"]["subscription"] == \
        "${google_pubsub_subscription.retrain_push.id}"
    assert "gcp-sa-pubsub" in local["pubsub_agent"]


def test_terraform_grants_the_least(terraform, prefixes):
    res, local = terraform["resource"], terraform["locals"]
    grant = res["google_storage_bucket_iam_member"]["function_writes_run_requests"]
    assert grant["member"] == "serviceAccount:${google_service_account.function.email}"
    assert "${local.run_requests}" in block(grant, "condition")["expression"]
    assert local["run_requests"].endswith("/objects/${var.data_prefix}" + prefixes["runs"])
    invoker = res["google_cloud_run_service_iam_member"]["trigger_invokes_function"]
    assert (invoker["role"], invoker["member"]) == ("roles/run.invoker", "serviceAccount:${google_service_account.trigger.email}")
    assert invoker["service"] == "${google_cloudfunctions2_function.retrain_trigger.name}"
    assert "google_project_iam_member" not in res or all(
        g["member"] != "serviceAccount:${google_service_account.function.email}"
        for g in res["google_project_iam_member"].values())  # the runtime has no project-wide role
