-- Tasks, their samples and their history. A running task holds its machine
-- (machines.task_id) under a lease owned by one node (tasks.node) until
-- tasks.lease_expires_at, renewed by that node's heartbeat.

CREATE TABLE samples (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	sha256     TEXT NOT NULL UNIQUE,
	sha1       TEXT NOT NULL,
	md5        TEXT NOT NULL,
	sha512     TEXT NOT NULL,
	crc32      TEXT NOT NULL,
	file_size  INTEGER NOT NULL,
	file_type  TEXT NOT NULL DEFAULT '',
	created_at TEXT NOT NULL
);

CREATE TABLE tasks (
	id               INTEGER PRIMARY KEY AUTOINCREMENT,
	target           TEXT NOT NULL,
	category         TEXT NOT NULL,
	sample_id        INTEGER REFERENCES samples (id),
	file_name        TEXT NOT NULL DEFAULT '',
	timeout          INTEGER NOT NULL DEFAULT 0,
	priority         INTEGER NOT NULL DEFAULT 1,
	custom           TEXT NOT NULL DEFAULT '',
	machine          TEXT NOT NULL DEFAULT '',
	package          TEXT NOT NULL DEFAULT '',
	route            TEXT NOT NULL DEFAULT '',
	options          TEXT NOT NULL DEFAULT '',
	platform         TEXT NOT NULL DEFAULT '',
	memory           BOOLEAN NOT NULL DEFAULT 0,
	enforce_timeout  BOOLEAN NOT NULL DEFAULT 0,
	clock            TEXT,
	added_on         TEXT NOT NULL,
	started_on       TEXT,
	completed_on     TEXT,
	status           TEXT NOT NULL,
	attempt          INTEGER NOT NULL DEFAULT 1,
	error            TEXT NOT NULL DEFAULT '',
	ran_on           TEXT NOT NULL DEFAULT '',
	node             TEXT NOT NULL DEFAULT '',
	lease_expires_at TEXT,
	version          INTEGER NOT NULL DEFAULT 1
);

CREATE INDEX tasks_queue ON tasks (status, priority, added_on);
CREATE INDEX tasks_completed ON tasks (completed_on);

CREATE TABLE task_tags (
	task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
	pos     INTEGER NOT NULL,
	tag     TEXT NOT NULL,
	PRIMARY KEY (task_id, tag)
);

CREATE TABLE task_events (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	task_id     INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
	from_status TEXT NOT NULL,
	to_status   TEXT NOT NULL,
	machine     TEXT NOT NULL DEFAULT '',
	attempt     INTEGER NOT NULL DEFAULT 1,
	cause       TEXT NOT NULL DEFAULT '',
	at          TEXT NOT NULL
);

CREATE INDEX task_events_task ON task_events (task_id);

ALTER TABLE machines ADD COLUMN task_id INTEGER NOT NULL DEFAULT 0;
