-- The login roles that may write to the current database's tables (the move's: cutover's
-- own schema aside): their owners, the grantees of INSERT, UPDATE, DELETE or TRUNCATE on a
-- table or a column, PUBLIC's grants, pg_write_all_data; a member of any of these counts,
-- whether it inherits or must SET ROLE. Never a superuser, nor a role kept (cutover's
-- own, the managed service's), nor a predefined role: the fence takes LOGIN from these.
WITH moved AS (
    SELECT c.oid, c.relowner, c.relacl
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
      AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_cutover')
      AND n.nspname NOT LIKE 'pg\_toast%%'
),
writers AS (
    SELECT m.relowner AS role FROM moved m
    UNION
    SELECT g.grantee FROM moved m, LATERAL pg_catalog.aclexplode(m.relacl) g
    WHERE g.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
    UNION
    SELECT g.grantee FROM moved m
    JOIN pg_catalog.pg_attribute a ON a.attrelid = m.oid AND a.attacl IS NOT NULL,
    LATERAL pg_catalog.aclexplode(a.attacl) g
    WHERE g.privilege_type IN ('INSERT', 'UPDATE')
    UNION
    SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = 'pg_write_all_data'
)
SELECT r.rolname
FROM pg_catalog.pg_roles r
WHERE r.rolcanlogin
  AND NOT r.rolsuper
  AND r.rolname <> ALL(%(keep)s)
  AND r.rolname NOT LIKE 'pg\_%%'
  AND EXISTS (SELECT 1 FROM writers w
              WHERE CASE WHEN w.role = 0 THEN true  -- PUBLIC: every role
                         ELSE pg_catalog.pg_has_role(r.oid, w.role, 'MEMBER') END)
ORDER BY r.rolname
