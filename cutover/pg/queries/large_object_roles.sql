-- The roles that own or are granted large objects (PUBLIC aside): each must
-- exist on the target for the copy to give the objects the same owner and ACL.
SELECT pg_catalog.pg_get_userbyid(m.lomowner) AS role
FROM pg_catalog.pg_largeobject_metadata m
UNION
SELECT pg_catalog.pg_get_userbyid(a.grantee)
FROM pg_catalog.pg_largeobject_metadata m,
     LATERAL pg_catalog.aclexplode(m.lomacl) AS a
WHERE a.grantee <> 0
