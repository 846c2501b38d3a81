# A Cloud SQL to Cloud SQL move: the source, the target DMS replicates into,
# and the DMS job. cutover writes the variables of the section "written by
# cutover" and drives the job; everything else stays yours.

provider "google" {
  project = var.project
  region  = var.region
}

module "source" {
  source              = "../../modules/cloudsql-instance"
  project             = var.project
  region              = var.region
  name                = var.source_name
  database_version    = "POSTGRES_13"
  database_flags      = var.source_database_flags
  deletion_protection = var.source_deletion_protection
}

module "target" {
  source                 = "../../modules/cloudsql-instance"
  project                = var.project
  region                 = var.region
  name                   = var.target_name
  database_version       = "POSTGRES_15"
  backups_enabled        = var.target_backups_enabled
  point_in_time_recovery = var.target_point_in_time_recovery
}

module "migration" {
  source               = "../../modules/dms-migration"
  project              = var.project
  region               = var.region
  move                 = var.cutover_move
  source_instance      = module.source.name
  source_host          = module.source.public_ip_address
  migration_user       = "cutover_migration"
  migration_password   = var.migration_password
  destination_instance = module.target.name
}
