# New data in the data bucket starts a retraining run on the Ray cluster, through a Cloud Function (gen2):
#
#   gs://<bucket>/<prefix>datasets/** OBJECT_FINALIZE --notification--> topic rts-data-events
#     --Eventarc trigger (messagePublished)--> function rts-retrain-trigger
#   topic rts-retrain (retrain requests: services.retraining.requests.publish_retrain_request)
#     --push subscription, dead-lettered to rts-retrain-dead-letter after 5 tries--> the same function
#
# The function (dist/serverless/gcp/function, `make package`) writes each run's request to <prefix>runs/
# and submits the job to the Ray Jobs API. Parsed and cross-checked by tests/unit/test_serverless_infra.py;
# `terraform validate/plan` needs the Terraform CLI and the google provider (see README.md here).

terraform {
  required_version = ">= 1.5"
  required_providers {
    google  = { source = "hashicorp/google", version = "~> 6.0" }
    archive = { source = "hashicorp/archive", version = "~> 2.4" }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

data "google_project" "this" {}

data "google_storage_project_service_account" "gcs" {}

locals {
  pubsub_agent   = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  data_uri       = "gs://${google_storage_bucket.data.name}/${var.data_prefix}"
  datasets       = "${var.data_prefix}datasets/"
  run_requests   = "projects/_/buckets/${google_storage_bucket.data.name}/objects/${var.data_prefix}runs/"
  retrain_topic  = "rts-retrain"
}

# --- the data bucket and its notifications -------------------------------------------------------------

resource "google_storage_bucket" "data" {
  name                        = var.data_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  versioning {
    enabled = true
  }
}

resource "google_pubsub_topic" "data_events" {
  name = "rts-data-events"
}

resource "google_pubsub_topic_iam_member" "gcs_publishes_data_events" {
  topic  = google_pubsub_topic.data_events.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "datasets" {
  bucket             = google_storage_bucket.data.name
  topic              = google_pubsub_topic.data_events.id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = local.datasets
  depends_on         = [google_pubsub_topic_iam_member.gcs_publishes_data_events]
}

# --- retrain requests, pushed to the function with dead-lettering -----------------------------------------

resource "google_pubsub_topic" "retrain" {
  name = local.retrain_topic
}

resource "google_pubsub_topic" "retrain_dead_letter" {
  name = "rts-retrain-dead-letter"
}

resource "google_pubsub_subscription" "retrain_dead_letter" {
  name                       = "rts-retrain-dead-letter"
  topic                      = google_pubsub_topic.retrain_dead_letter.id
  message_retention_duration = "1209600s"
}

resource "google_pubsub_subscription" "retrain_push" {
  name                 = "rts-retrain-push"
  topic                = google_pubsub_topic.retrain.id
  ack_deadline_seconds = 60
  push_config {
    # The path names the topic: functions-framework turns a raw push body into the messagePublished
    # CloudEvent with this topic as its source.
    push_endpoint = "${google_cloudfunctions2_function.retrain_trigger.service_config[0].uri}/projects/${var.project}/topics/${local.retrain_topic}"
    oidc_token {
      service_account_email = google_service_account.trigger.email
    }
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.retrain_dead_letter.id
    max_delivery_attempts = 5
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}

# Pub/Sub's service agent moves undeliverable messages to the dead-letter topic, and signs push requests.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.retrain_dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  subscription = google_pubsub_subscription.retrain_push.id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

resource "google_service_account_iam_member" "pubsub_signs_push_tokens" {
  service_account_id = google_service_account.trigger.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# --- service accounts ---------------------------------------------------------------------------------------

resource "google_service_account" "function" {
  account_id   = "rts-retrain-fn"
  display_name = "rts retrain trigger (function runtime)"
}

resource "google_service_account" "trigger" {
  account_id   = "rts-retrain-invoker"
  display_name = "rts retrain trigger (Eventarc and Pub/Sub push invoker)"
}

# The function writes runs/<run id>.request.json and reads it back; nothing else in the bucket.
resource "google_storage_bucket_iam_member" "function_writes_run_requests" {
  for_each = toset(["roles/storage.objectCreator", "roles/storage.objectViewer"])
  bucket   = google_storage_bucket.data.name
  role     = each.value
  member   = "serviceAccount:${google_service_account.function.email}"
  condition {
    title      = "run-requests-only"
    expression = "resource.name.startsWith(\"${local.run_requests}\")"
  }
}

resource "google_project_iam_member" "trigger_receives_events" {
  project = var.project
  role    = "roles/eventarc.eventReceiver"
  member  = "serviceAccount:${google_service_account.trigger.email}"
}

resource "google_cloud_run_service_iam_member" "trigger_invokes_function" {
  location = google_cloudfunctions2_function.retrain_trigger.location
  service  = google_cloudfunctions2_function.retrain_trigger.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.trigger.email}"
}

# --- the function ------------------------------------------------------------------------------------------

resource "google_storage_bucket" "sources" {
  name                        = "${var.project}-rts-function-sources"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
}

data "archive_file" "function" {
  type        = "zip"
  source_dir  = var.function_source_dir
  output_path = "${path.module}/.build/function.zip"
}

resource "google_storage_bucket_object" "function_source" {
  name   = "rts-retrain-trigger-${data.archive_file.function.output_md5}.zip"
  bucket = google_storage_bucket.sources.name
  source = data.archive_file.function.output_path
}

resource "google_cloudfunctions2_function" "retrain_trigger" {
  name        = "rts-retrain-trigger"
  location    = var.region
  description = "Starts retraining runs (Ray Jobs) for new data and retrain requests"

  build_config {
    runtime     = "python311"
    entry_point = "cloud_event_handler"
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  service_config {
    available_memory              = "512M"
    timeout_seconds               = 60
    max_instance_count            = 2
    ingress_settings              = "ALLOW_INTERNAL_ONLY"
    service_account_email         = google_service_account.function.email
    vpc_connector                 = var.vpc_connector
    vpc_connector_egress_settings = "PRIVATE_RANGES_ONLY"
    environment_variables = {
      RTS_RAY_DASHBOARD_URL    = var.ray_dashboard_url
      RTS_DATA_URI             = local.data_uri
      RTS_MODEL_REPOSITORY_URI = var.model_repository_uri
      RTS_TRITON_URL           = var.triton_url
      RTS_VAR_DIR              = var.cluster_var_dir
    }
  }

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic          = google_pubsub_topic.data_events.id
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.trigger.email
  }
}
