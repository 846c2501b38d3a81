-- Every large object with its owner and, when it was ever granted, its
-- privileges as [grantee, privilege, grantable] ('' for PUBLIC) in the ACL's
-- order; NULL means the owner's default ones.
SELECT m.oid::bigint AS oid,
       pg_catalog.pg_get_userbyid(m.lomowner) AS owner,
       CASE WHEN m.lomacl IS NOT NULL THEN
           (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(
                       CASE WHEN a.grantee = 0 THEN ''
                            ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
                       a.privilege_type, a.is_grantable) ORDER BY a.n)
            FROM pg_catalog.aclexplode(m.lomacl) WITH ORDINALITY
                AS a(grantor, grantee, privilege_type, is_grantable, n))
       END AS grants
FROM pg_catalog.pg_largeobject_metadata m
ORDER BY m.oid
