# A Cloud SQL for PostgreSQL instance that a move can drive: its flags, backups
# and point-in-time recovery, and its deletion protection come from variables,
# which cutover writes in cutover.auto.tfvars.json of the root module.

resource "google_sql_database_instance" "this" {
  project             = var.project
  region              = var.region
  name                = var.name
  database_version    = var.database_version
  deletion_protection = var.deletion_protection

  settings {
    tier              = var.tier
    disk_size         = var.disk_size_gb
    availability_type = var.availability_type

    dynamic "database_flags" {
      for_each = var.database_flags
      content {
        name  = database_flags.key
        value = database_flags.value
      }
    }

    backup_configuration {
      enabled                        = var.backups_enabled
      point_in_time_recovery_enabled = var.backups_enabled && var.point_in_time_recovery
    }

    ip_configuration {
      ipv4_enabled    = var.private_network == null
      private_network = var.private_network

      dynamic "authorized_networks" {
        for_each = var.authorized_networks
        content {
          name  = authorized_networks.key
          value = authorized_networks.value
        }
      }
    }
  }

  lifecycle {
    # DMS demotes an existing target to a replica of the source for the time of
    # the move, and promotes it back: Terraform must not undo either.
    ignore_changes = [master_instance_name, replica_configuration, instance_type]
  }
}
