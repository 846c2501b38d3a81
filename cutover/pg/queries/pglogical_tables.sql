-- Each table of a subscription with the state pglogical keeps for it.
SELECT ss.sync_nspname AS schema, ss.sync_relname AS name, ss.sync_status::text AS state
FROM pglogical.local_sync_status ss
JOIN pglogical.subscription s ON s.sub_id = ss.sync_subid
WHERE s.sub_name = %s AND ss.sync_relname IS NOT NULL
ORDER BY ss.sync_nspname, ss.sync_relname
