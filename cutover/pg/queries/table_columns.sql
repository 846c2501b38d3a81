-- The columns of each named table in their order, with their type, their
-- position in the primary key (NULL when not part of it), and whether their
-- values are stored as this server's OIDs: an enum (its hash is its label's
-- OID), an OID alias (regclass...), or an array, domain, range or composite
-- that holds one. Such a value hashes apart on two servers however equal it is.
SELECT n.nspname AS schema,
       c.relname AS name,
       a.attname AS column,
       pg_catalog.format_type(a.atttypid, NULL) AS type,
       pg_catalog.array_position(i.indkey::int2[], a.attnum) AS key_position,
       EXISTS (
           WITH RECURSIVE inside(typ) AS (
               SELECT a.atttypid
               UNION
               SELECT u.typ
               FROM inside
               JOIN pg_catalog.pg_type t ON t.oid = inside.typ
               CROSS JOIN LATERAL (
                   SELECT t.typelem WHERE t.typelem <> 0
                   UNION ALL SELECT t.typbasetype WHERE t.typbasetype <> 0
                   UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r
                             WHERE t.oid IN (r.rngtypid, r.rngmultitypid)
                   UNION ALL SELECT f.atttypid FROM pg_catalog.pg_attribute f
                             WHERE t.typrelid <> 0 AND f.attrelid = t.typrelid
                               AND f.attnum > 0 AND NOT f.attisdropped
               ) AS u(typ)
           )
           SELECT 1
           FROM inside
           JOIN pg_catalog.pg_type t ON t.oid = inside.typ
           WHERE t.typtype = 'e'
              OR t.oid = ANY ('{regclass,regtype,regproc,regprocedure,regoper,regoperator,'
                              'regconfig,regdictionary,regnamespace,regrole,regcollation}'
                              ::pg_catalog.regtype[])
       ) AS by_oid
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
ORDER BY n.nspname, c.relname, a.attnum
