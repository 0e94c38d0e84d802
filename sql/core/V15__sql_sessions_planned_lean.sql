-- core.sql_sessions keeps only its primary key (server_started, pid).
--
-- Every statement of the SQL endpoint's sessions reads this table in its row policy (see V13), and in the
-- simple protocol every statement is planned again: the planner costs a path for each index of the table,
-- about 4 µs per statement for the two dropped here. They served only the rare deletes (a logout by token,
-- a key revoked), over a table that holds one row per open reporting session, which a scan serves as well.
-- Tokens are 32 random bytes: their hashes do not collide, and a binding is found by its backend first.
drop index core.sql_sessions_key;
drop index core.sql_sessions_token;
