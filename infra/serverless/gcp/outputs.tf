output "data_uri" {
  value = local.data_uri
}

output "data_events_topic" {
  description = "also what a subscription for `rts listen --source pubsub` would read, in place of the function"
  value       = google_pubsub_topic.data_events.id
}

output "retrain_topic" {
  description = "publish retrain requests here (services.retraining.requests.publish_retrain_request)"
  value       = google_pubsub_topic.retrain.id
}

output "dead_letter_subscription" {
  value = google_pubsub_subscription.retrain_dead_letter.id
}

output "function_uri" {
  value = google_cloudfunctions2_function.retrain_trigger.service_config[0].uri
}
