-- A digest of each named large object's bytes, read a chunk at a time so no
-- object is ever held whole: the md5 of its chunks' md5s (an object of one
-- chunk is read in one call). Both servers compute it on their own side; only
-- the digests travel.
SELECT o.oid::bigint AS oid,
       CASE WHEN o.size <= %(chunk)s THEN
           pg_catalog.md5(pg_catalog.md5(pg_catalog.lo_get(o.oid::oid)))
       ELSE
           (SELECT pg_catalog.md5(pg_catalog.string_agg(
                       pg_catalog.md5(pg_catalog.lo_get(o.oid::oid, part.at, %(chunk)s::integer)),
                       '' ORDER BY part.at))
            FROM pg_catalog.generate_series(0::bigint, o.size - 1, %(chunk)s::bigint) AS part(at))
       END AS digest
FROM unnest(%(oids)s::bigint[], %(sizes)s::bigint[]) AS o(oid, size)
