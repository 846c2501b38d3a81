output "migration_job" {
  description = "projects/P/locations/R/migrationJobs/J: what cutover's dms engine drives."
  value       = google_database_migration_service_migration_job.this.name
}

output "state" {
  value = google_database_migration_service_migration_job.this.state
}
