variable "project" {
  type = string
}

variable "region" {
  type    = string
  default = "europe-west1"
}

variable "source_name" {
  type    = string
  default = "shop-pg13"
}

variable "target_name" {
  type    = string
  default = "shop-pg15"
}

variable "migration_password" {
  type        = string
  sensitive   = true
  description = "TF_VAR_migration_password, from the secret store: never written to a file."
}

# -- written by cutover in cutover.auto.tfvars.json ----------------------------------------

variable "cutover_move" {
  type        = string
  default     = "shop"
  description = "The move's name (cutover)."
}

variable "source_database_flags" {
  type        = map(string)
  default     = {}
  description = "The source's flags; cutover's prepare adds cloudsql.logical_decoding and cloudsql.enable_pglogical."
}

variable "source_deletion_protection" {
  type        = bool
  default     = true
  description = "cutover cleanup --retire-source sets it false and applies, then destroys the source alone."
}

variable "target_backups_enabled" {
  type        = bool
  default     = false
  description = "Off while DMS holds the target as a replica; cutover turns it on after the promotion."
}

variable "target_point_in_time_recovery" {
  type        = bool
  default     = false
  description = "As target_backups_enabled."
}
