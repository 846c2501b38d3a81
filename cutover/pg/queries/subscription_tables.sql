-- Each table of a subscription in the current database, with its copy state:
-- i queued, d copying, f copied, s syncing, r ready.
SELECT n.nspname AS schema, c.relname AS name, sr.srsubstate::text AS state
FROM pg_catalog.pg_subscription_rel sr
JOIN pg_catalog.pg_subscription s ON s.oid = sr.srsubid
JOIN pg_catalog.pg_database d ON d.oid = s.subdbid
JOIN pg_catalog.pg_class c ON c.oid = sr.srrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE s.subname = %s AND d.datname = pg_catalog.current_database()
ORDER BY n.nspname, c.relname
