# -- read by cutover ---------------------------------------------------------------------

output "source_instance" {
  value = module.source.connection_name
}

output "target_instance" {
  value = module.target.connection_name
}

output "migration_job" {
  value = module.migration.migration_job
}
