# A stand-in of terraform/ built from Terraform's own resources, which need no
# provider download: the same variables and outputs, so that cutover's runner
# is tested with the real binary.

variable "cutover_move" {
  type        = string
  description = "The move's name."
}

variable "source_database_flags" {
  type        = map(string)
  default     = {}
  description = "Flags of the source instance (cloudsql.logical_decoding, cloudsql.enable_pglogical)."
}

variable "source_deletion_protection" {
  type    = bool
  default = true
}

variable "target_backups_enabled" {
  type    = bool
  default = false
}

variable "target_point_in_time_recovery" {
  type    = bool
  default = false
}

variable "target_tier" {
  type        = string
  default     = "db-custom-2-7680"
  description = "Changing it replaces the target: what the destroy guard must catch."
}

variable "apply_seconds" {
  type        = number
  default     = 0
  description = "How long applying the source takes (a kill lands in the middle)."
}

resource "terraform_data" "source" {
  input = {
    flags               = var.source_database_flags
    deletion_protection = var.source_deletion_protection
  }

  provisioner "local-exec" {
    command = "sleep ${var.apply_seconds}; echo ${var.cutover_move} > ${path.module}/applied-${var.cutover_move}"
  }
}

resource "terraform_data" "target" {
  input = {
    backups                = var.target_backups_enabled
    point_in_time_recovery = var.target_point_in_time_recovery
  }
  triggers_replace = [var.target_tier]
}

output "source_instance" {
  value = terraform_data.source.id
}

output "target_instance" {
  value = terraform_data.target.id
}

output "migration_job" {
  value = "projects/p/locations/r/migrationJobs/${var.cutover_move}"
}
