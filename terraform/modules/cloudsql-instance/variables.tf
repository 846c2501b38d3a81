variable "project" {
  type        = string
  description = "The Google Cloud project of the instance."
}

variable "region" {
  type        = string
  description = "The instance's region, e.g. europe-west1."
}

variable "name" {
  type        = string
  description = "The instance's name (not reusable for about a week after a deletion)."
}

variable "database_version" {
  type        = string
  default     = "POSTGRES_15"
  description = "POSTGRES_15, POSTGRES_16, ..."
}

variable "tier" {
  type        = string
  default     = "db-custom-2-7680"
  description = "The machine type. Changing it restarts the instance."
}

variable "disk_size_gb" {
  type    = number
  default = 100
}

variable "availability_type" {
  type        = string
  default     = "REGIONAL"
  description = "REGIONAL (high availability) or ZONAL."
}

variable "database_flags" {
  type        = map(string)
  default     = {}
  description = "Database flags by name. cutover adds cloudsql.logical_decoding and cloudsql.enable_pglogical (both restart the instance)."
}

variable "backups_enabled" {
  type    = bool
  default = true
}

variable "point_in_time_recovery" {
  type        = bool
  default     = true
  description = "Needs backups; turning it on after the creation restarts the instance."
}

variable "deletion_protection" {
  type        = bool
  default     = true
  description = "Terraform refuses to destroy the instance while true (set false and apply first)."
}

variable "private_network" {
  type        = string
  default     = null
  description = "The VPC's self link for a private IP (VPC peering); null for a public IP."
}

variable "authorized_networks" {
  type        = map(string)
  default     = {}
  description = "Name to CIDR, for a public IP (the DMS static IPs of the region for a source)."
}
