output "name" {
  value = google_sql_database_instance.this.name
}

output "connection_name" {
  description = "project:region:instance, as the Cloud SQL connector takes it."
  value       = google_sql_database_instance.this.connection_name
}

output "public_ip_address" {
  value = google_sql_database_instance.this.public_ip_address
}

output "private_ip_address" {
  value = google_sql_database_instance.this.private_ip_address
}
