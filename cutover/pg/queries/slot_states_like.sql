-- The connected database's slots whose names match a LIKE pattern (those another tool made,
-- such as the migration service's pglogical slots), each with its lag against the source's
-- current WAL position: what the subscriber confirmed as flushed, never what was sent.
SELECT s.slot_name,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)
           AS lag_bytes,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)
           AS retained_bytes,
       s.wal_status,
       s.safe_wal_size,
       s.active,
       CASE WHEN s.confirmed_flush_lsn >= pg_catalog.pg_current_wal_lsn() THEN 0
            ELSE extract(epoch FROM r.flush_lag) END AS lag_seconds
FROM pg_catalog.pg_replication_slots s
LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid
WHERE s.database = pg_catalog.current_database()
  AND s.slot_type = 'logical'
  AND s.slot_name LIKE %s
ORDER BY s.slot_name
