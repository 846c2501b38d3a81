-- The columns of each named table in their order, with their type and their
-- position in the primary key (NULL when not part of it).
SELECT n.nspname AS schema,
       c.relname AS name,
       a.attname AS column,
       pg_catalog.format_type(a.atttypid, NULL) AS type,
       pg_catalog.array_position(i.indkey::int2[], a.attnum) AS key_position
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
ORDER BY n.nspname, c.relname, a.attnum
