-- The move's slot on the source. Lag runs from the source's current WAL position
-- to what the subscriber has confirmed as flushed, never to what was merely sent.
SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)
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
WHERE s.slot_name = %s
