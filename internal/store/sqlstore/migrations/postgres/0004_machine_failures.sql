-- Consecutive failed operations on a machine (reimages, deletes) since its
-- last success: kept here, not in a process, so that a restart or a new
-- leader neither forgets nor resets it.
ALTER TABLE machines ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
