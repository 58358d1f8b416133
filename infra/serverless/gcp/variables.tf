variable "project" {
  type        = string
  description = "The Google Cloud project"
}

variable "region" {
  type        = string
  description = "Region of the function, its trigger and the buckets"
  default     = "europe-west1"
}

variable "data_bucket" {
  type        = string
  description = "The data bucket (created here); RTS_DATA_URI is gs://<this>/<data_prefix>"
}

variable "data_prefix" {
  type        = string
  description = "Prefix of the data inside the bucket, with its trailing slash (\"\" for the bucket's root)"
  default     = "data/"
  validation {
    condition     = can(regex("^([A-Za-z0-9._-]+/)*$", var.data_prefix))
    error_message = "data_prefix is empty or ends with a slash, like data/."
  }
}

variable "function_source_dir" {
  type        = string
  description = "The Cloud Function's source folder, as `make package` writes it"
  default     = "../../../dist/serverless/gcp/function"
}

variable "ray_dashboard_url" {
  type        = string
  description = "The Ray Jobs API (the head's dashboard) as the function reaches it, e.g. http://10.0.0.5:8265"
}

variable "model_repository_uri" {
  type        = string
  description = "The model repository Triton reads, e.g. gs://models-bucket/repository"
}

variable "triton_url" {
  type        = string
  description = "Triton's gRPC address as the cluster reaches it"
}

variable "cluster_var_dir" {
  type        = string
  description = "RTS_VAR_DIR for the runs, a writable folder on the cluster's nodes"
  default     = "/tmp/rts"
}

variable "vpc_connector" {
  type        = string
  description = "Serverless VPC Access connector through which the function reaches the Ray dashboard"
}
