-- A lease's term counts its elections: it only grows, so a holder that was
-- replaced (even by itself, restarted) can tell its term is over. Rows from
-- before stay valid at term 0; their next election makes term 1.
ALTER TABLE leases ADD COLUMN term BIGINT NOT NULL DEFAULT 0;
