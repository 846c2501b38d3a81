-- The current database's own pglogical node and the connection string it gives itself.
SELECT n.node_name AS name, i.if_dsn AS dsn
FROM pglogical.local_node l
JOIN pglogical.node n ON n.node_id = l.node_id
JOIN pglogical.node_interface i ON i.if_id = l.node_local_interface
