-- Every object of the connected database that a user made, with its owner: schemas,
-- relations, standalone types and routines; not the catalogs', not an extension's members.
-- A sequence owned by a column follows its table (ALTER TABLE ... OWNER moves it too);
-- `signature` names a routine by its argument types, `routine` as ALTER ROUTINE takes it.
WITH extension_members AS (
    SELECT d.classid, d.objid
    FROM pg_catalog.pg_depend d
    WHERE d.deptype = 'e'
), user_schemas AS (
    SELECT n.oid, n.nspname, n.nspowner
    FROM pg_catalog.pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND n.nspname !~ '^pg_(toast_)?temp_'
      AND NOT EXISTS (SELECT 1 FROM extension_members e
                      WHERE e.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                        AND e.objid = n.oid)
)
SELECT 'SCHEMA' AS kind, n.nspname AS schema, n.nspname AS name, '' AS signature,
       NULL::text AS routine, pg_catalog.pg_get_userbyid(n.nspowner) AS owner
FROM user_schemas n
UNION ALL
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
       n.nspname, c.relname, '', NULL, pg_catalog.pg_get_userbyid(c.relowner)
FROM pg_catalog.pg_class c
JOIN user_schemas n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND NOT EXISTS (SELECT 1 FROM extension_members e
                  WHERE e.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND e.objid = c.oid)
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND d.objid = c.oid AND c.relkind = 'S' AND d.deptype IN ('a', 'i'))
UNION ALL
SELECT 'TYPE', n.nspname, t.typname, '', NULL, pg_catalog.pg_get_userbyid(t.typowner)
FROM pg_catalog.pg_type t
JOIN user_schemas n ON n.oid = t.typnamespace
WHERE (t.typtype IN ('e', 'd', 'r')
       OR (t.typtype = 'c' AND (SELECT c.relkind FROM pg_catalog.pg_class c
                                WHERE c.oid = t.typrelid) = 'c'))
  AND NOT EXISTS (SELECT 1 FROM extension_members e
                  WHERE e.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
                    AND e.objid = t.oid)
UNION ALL
SELECT CASE p.prokind WHEN 'a' THEN 'AGGREGATE' ELSE 'ROUTINE' END,
       n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid),
       p.oid::pg_catalog.regprocedure::text, pg_catalog.pg_get_userbyid(p.proowner)
FROM pg_catalog.pg_proc p
JOIN user_schemas n ON n.oid = p.pronamespace
WHERE NOT EXISTS (SELECT 1 FROM extension_members e
                  WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                    AND e.objid = p.oid)
ORDER BY 1, 2, 3, 4
