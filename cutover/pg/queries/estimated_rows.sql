-- Live rows of the user's tables from the statistics (no scan; the counting
-- function alone, cheaper than the pg_stat_user_tables view), plus the rows
-- that a COPY into this database has written and not yet committed.
SELECT (SELECT coalesce(sum(pg_catalog.pg_stat_get_live_tuples(c.oid)), 0)
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_cutover', 'pglogical')
          AND n.nspname NOT LIKE 'pg\_toast%')
     + (SELECT coalesce(sum(p.tuples_processed), 0)
        FROM pg_catalog.pg_stat_progress_copy p
        JOIN pg_catalog.pg_database d ON d.oid = p.datid
        WHERE p.command = 'COPY FROM' AND d.datname = pg_catalog.current_database()) AS rows
