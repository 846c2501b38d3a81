variable "project" {
  type = string
}

variable "region" {
  type = string
}

variable "move" {
  type        = string
  description = "The move's name: the profiles and the job are named after it."
}

variable "source_instance" {
  type        = string
  description = "The source Cloud SQL instance's name."
}

variable "source_host" {
  type        = string
  description = "The source's IP address as DMS reaches it."
}

variable "source_port" {
  type    = number
  default = 5432
}

variable "migration_user" {
  type        = string
  description = "The source's migration user (REPLICATION, with grants on every schema)."
}

variable "migration_password" {
  type        = string
  sensitive   = true
  description = "Its password: from a secret store (a data source or TF_VAR_migration_password), never in a file."
}

variable "destination_instance" {
  type        = string
  description = "The existing target Cloud SQL instance's name (DMS demotes it to a replica)."
}

variable "vpc" {
  type        = string
  default     = null
  description = "The VPC's self link for VPC peering; null for static IP connectivity."
}
