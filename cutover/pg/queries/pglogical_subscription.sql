-- One subscription: the state of its worker, its slot on the provider, and the
-- state of its initial copy (the row of local_sync_status without a table).
-- The provider's connection string carries a password: it is never read here.
SELECT st.status, s.sub_slot_name AS slot, ss.sync_status::text AS sync
FROM pglogical.subscription s
LEFT JOIN LATERAL pglogical.show_subscription_status(s.sub_name) st ON true
LEFT JOIN pglogical.local_sync_status ss
       ON ss.sync_subid = s.sub_id AND ss.sync_nspname IS NULL AND ss.sync_relname IS NULL
WHERE s.sub_name = %s
