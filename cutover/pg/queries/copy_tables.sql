-- What the initial copy reads of each table: its columns in order (generated
-- columns are computed again on the target, so they are not copied), the pages
-- of its main fork (a large table is split by page ranges) and its whole size
-- with TOAST (what progress counts), and whether every copied column is of a built-in
-- type (binary COPY carries user types' OIDs, in arrays and composites, which differ
-- between servers; built-in types' OIDs are the same everywhere).
SELECT n.nspname AS schema,
       c.relname AS name,
       pg_catalog.pg_relation_size(c.oid)
           / pg_catalog.current_setting('block_size')::bigint AS pages,
       pg_catalog.pg_table_size(c.oid) AS bytes,
       ARRAY(SELECT a.attname::text
             FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0
               AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum) AS columns,
       NOT EXISTS (SELECT 1
                   FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = c.oid AND a.attnum > 0
                     AND NOT a.attisdropped AND a.attgenerated = ''
                     AND a.atttypid >= 16384) AS built_in_types
FROM unnest(%s::text[], %s::text[]) AS t(schema, name)
JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.name
ORDER BY bytes DESC, n.nspname, c.relname
