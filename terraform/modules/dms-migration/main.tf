# The DMS connection profiles and the CONTINUOUS migration job of a move.
# Terraform only creates them: cutover verifies, starts and promotes the job
# through the API, reading its state and phase first, and deletes it (never
# with force after the promotion: that would delete the destination).

resource "google_database_migration_service_connection_profile" "source" {
  project               = var.project
  location              = var.region
  connection_profile_id = "${var.move}-source"
  display_name          = "${var.move} source"

  postgresql {
    host         = var.source_host
    port         = var.source_port
    username     = var.migration_user
    password     = var.migration_password
    cloud_sql_id = var.source_instance
  }
}

resource "google_database_migration_service_connection_profile" "destination" {
  project               = var.project
  location              = var.region
  connection_profile_id = "${var.move}-destination"
  display_name          = "${var.move} destination"

  postgresql {
    cloud_sql_id = var.destination_instance
  }
}

resource "google_database_migration_service_migration_job" "this" {
  project          = var.project
  location         = var.region
  migration_job_id = var.move
  display_name     = "${var.move} (cutover)"
  type             = "CONTINUOUS"
  source           = google_database_migration_service_connection_profile.source.name
  destination      = google_database_migration_service_connection_profile.destination.name

  dynamic "static_ip_connectivity" {
    for_each = var.vpc == null ? [1] : []
    content {}
  }

  dynamic "vpc_peering_connectivity" {
    for_each = var.vpc == null ? [] : [1]
    content {
      vpc = var.vpc
    }
  }

  lifecycle {
    # DMS moves the job through its states and phases; cutover drives them.
    ignore_changes = [labels]
  }
}
