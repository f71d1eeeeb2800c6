-- hooks.on_complete: after an analysis ends, its task carries the hand-off
-- to processing until the node that ended it has run the hook (pending) and
-- recorded how the hook ended (ok, failed, timeout). A pending hook survives
-- a crash of its node and runs when the node is back.
ALTER TABLE tasks ADD COLUMN hook_status TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN hook_node TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN hook_exit INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN hook_output TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN hook_ended_on TIMESTAMPTZ;

CREATE INDEX tasks_hooks_pending ON tasks (hook_node) WHERE hook_status = 'pending';
