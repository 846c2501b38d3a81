-- Every user table, partitioned table and sequence of the current database, with
-- what the current user may do with it. Extension-owned objects are left out:
-- the extension recreates them on the target.
SELECT n.nspname AS schema,
       c.relname AS name,
       c.relkind::text AS kind,
       c.relpersistence::text AS persistence,
       c.relreplident::text AS replica_identity,
       pg_catalog.pg_get_userbyid(c.relowner) AS owner,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               WHERE i.indrelid = c.oid AND i.indisprimary) AS has_primary_key,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               WHERE i.indrelid = c.oid AND i.indisreplident) AS has_identity_index,
       pg_catalog.has_schema_privilege(n.oid, 'USAGE') AS schema_usage,
       pg_catalog.has_table_privilege(c.oid, 'SELECT') AS can_select,
       pg_catalog.pg_has_role(c.relowner, 'USAGE') AS acts_as_owner
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S', 'f', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%'
  AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
