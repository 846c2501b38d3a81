-- The slot name pglogical gives a subscription: pgl_<database>_<provider node>_<subscription>,
-- each part over 16 bytes cut to 8 bytes and its hash (hashtext is the server's hash_any,
-- as pglogical uses it), then every byte but a-z, 0-9 and _ replaced by _, 63 bytes at most.
WITH parts(part, ord) AS (VALUES (%s::text, 1), (%s::text, 2), (%s::text, 3)),
short AS (
    SELECT ord,
           CASE WHEN octet_length(part) <= 16 THEN convert_to(part, 'UTF8')
                ELSE substring(convert_to(part, 'UTF8') FROM 1 FOR 8)
                     || convert_to(left(lpad(to_hex(hashtext(part)), 8, '0'), 7), 'UTF8')
           END AS bytes
    FROM parts
),
joined AS (
    SELECT 'pgl_'::bytea || string_agg(bytes, '_'::bytea ORDER BY ord) AS bytes FROM short
)
SELECT string_agg(
           CASE WHEN get_byte(bytes, i) BETWEEN 97 AND 122 OR get_byte(bytes, i) BETWEEN 48 AND 57
                     OR get_byte(bytes, i) = 95
                THEN chr(get_byte(bytes, i)) ELSE '_' END,
           '' ORDER BY i) AS slot
FROM joined, generate_series(0, least(octet_length(bytes), 63) - 1) AS i
