-- The barrier table: the switch writes a marker row here on the source after
-- the fence and waits until the target has applied it, which proves zero lag
-- end to end whatever the engine. It is part of the replication set, and keyed
-- by a token so it needs no sequence of its own.
CREATE TABLE IF NOT EXISTS _cutover.barrier (
    token text PRIMARY KEY,
    move text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
)
