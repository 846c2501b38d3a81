-- Every foreign table of the current database (extension-owned ones aside),
-- with the foreign server and wrapper it reads through, and how many user
-- mappings that server has: the schema copy brings them, and each needs
-- credentials that work from the target.
SELECT n.nspname AS schema,
       c.relname AS name,
       s.srvname AS server,
       w.fdwname AS wrapper,
       (SELECT count(*) FROM pg_catalog.pg_user_mappings u WHERE u.srvid = s.oid) AS user_mappings
FROM pg_catalog.pg_foreign_table ft
JOIN pg_catalog.pg_class c ON c.oid = ft.ftrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_foreign_server s ON s.oid = ft.ftserver
JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY s.srvname, n.nspname, c.relname
