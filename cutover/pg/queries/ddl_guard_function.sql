-- The DDL guard's function, called by the move's event triggers on the source at
-- ddl_command_end and sql_drop: an exception there rolls the command back. It lets
-- pass cutover's own sessions (the plan's source user and the move's role, compared
-- with session_user, which SET ROLE does not change), the commands that change no
-- replicated schema (GRANT, REVOKE, COMMENT, REFRESH MATERIALIZED VIEW) and whatever
-- touches temporary objects only (REFRESH ... CONCURRENTLY makes and drops temporary
-- tables of its own).
CREATE OR REPLACE FUNCTION {function}() RETURNS event_trigger LANGUAGE plpgsql AS $guard$
DECLARE
    refused text;
BEGIN
    IF session_user = ANY ({allowed})
        OR TG_TAG IN ('GRANT', 'REVOKE', 'COMMENT', 'REFRESH MATERIALIZED VIEW') THEN
        RETURN;
    END IF;
    IF TG_EVENT = 'sql_drop' THEN
        SELECT d.object_type || ' ' || d.object_identity INTO refused
        FROM pg_catalog.pg_event_trigger_dropped_objects() AS d
        WHERE NOT d.is_temporary
        LIMIT 1;
    ELSE
        SELECT c.object_type || ' ' || c.object_identity INTO refused
        FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
        WHERE c.schema_name IS NULL
            OR (c.schema_name NOT LIKE 'pg\_temp%' AND c.schema_name NOT LIKE 'pg\_toast\_temp%')
        LIMIT 1;
    END IF;
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = {message},
            DETAIL = TG_TAG || ' on ' || refused
                || ': a schema change on the source breaks the logical replication of the move',
            HINT = {hint};
    END IF;
END
$guard$
