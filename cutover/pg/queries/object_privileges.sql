-- What is granted on each schema and relation a user made (not the catalogs', not pglogical's):
-- one row per grantee and privilege, PUBLIC as an empty grantee; what an owner holds by
-- owning is left out. Column privileges are not listed.
SELECT 'SCHEMA' AS kind, n.nspname AS schema, n.nspname AS name,
       CASE WHEN a.grantee = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(a.grantee) END
           AS grantee,
       a.privilege_type AS privilege, a.is_grantable AS grantable
FROM pg_catalog.pg_namespace n
CROSS JOIN LATERAL pg_catalog.aclexplode(n.nspacl) a
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'pglogical')
  AND n.nspname !~ '^pg_'
  AND a.grantee <> n.nspowner
UNION ALL
SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, n.nspname, c.relname,
       CASE WHEN a.grantee = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
       a.privilege_type, a.is_grantable
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'pglogical')
  AND n.nspname !~ '^pg_'
  AND a.grantee <> c.relowner
ORDER BY 1, 2, 3, 4, 5
