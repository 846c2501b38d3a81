-- The size of each large object, read from pg_largeobject (superusers only):
-- an object ends on its last page, found by index without reading the others,
-- at pageno * LOBLKSIZE + that page's length; LOBLKSIZE is a quarter of the
-- block size. An object without a page is empty.
SELECT m.oid::bigint AS oid,
       coalesce((SELECT l.pageno::bigint
                        * (pg_catalog.current_setting('block_size')::bigint / 4)
                        + pg_catalog.octet_length(l.data)
                 FROM pg_catalog.pg_largeobject l
                 WHERE l.loid = m.oid
                 ORDER BY l.pageno DESC LIMIT 1), 0) AS size
FROM pg_catalog.pg_largeobject_metadata m
