-- Each named table on the target during an initial copy: its size so far and
-- whether a COPY into it is running now.
SELECT n.nspname AS schema,
       c.relname AS name,
       pg_catalog.pg_table_size(c.oid) AS bytes,
       EXISTS (SELECT 1 FROM pg_catalog.pg_stat_progress_copy p WHERE p.relid = c.oid) AS copying
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
ORDER BY n.nspname, c.relname
