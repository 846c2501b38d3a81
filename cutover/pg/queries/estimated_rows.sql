-- Live rows of the user's tables from the statistics (no scan), plus the rows
-- that a COPY into this database has written and not yet committed.
SELECT (SELECT coalesce(sum(s.n_live_tup), 0)
        FROM pg_catalog.pg_stat_user_tables s
        WHERE s.schemaname NOT IN ('_cutover', 'pglogical'))
     + (SELECT coalesce(sum(p.tuples_processed), 0)
        FROM pg_catalog.pg_stat_progress_copy p
        JOIN pg_catalog.pg_database d ON d.oid = p.datid
        WHERE p.command = 'COPY FROM' AND d.datname = pg_catalog.current_database()) AS rows
