-- A heartbeat: one row of the barrier table rewritten, so the source commits and its WAL moves.
INSERT INTO _cutover.barrier (token, move) VALUES (%s, %s)
ON CONFLICT (token) DO UPDATE SET created_at = pg_catalog.clock_timestamp()
