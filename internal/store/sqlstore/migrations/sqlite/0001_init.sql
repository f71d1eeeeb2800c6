-- sandfleet schema for SQLite. Times are TEXT in UTC, RFC 3339 with microseconds
-- ("2006-01-02T15:04:05.000000Z"), so they sort as strings; NULL is the zero time.

CREATE TABLE pools (
	name         TEXT PRIMARY KEY,
	provider     TEXT NOT NULL DEFAULT '',
	platform     TEXT NOT NULL DEFAULT '',
	arch         TEXT NOT NULL DEFAULT '',
	image        TEXT NOT NULL DEFAULT '',
	initial_size INTEGER NOT NULL DEFAULT 0,
	max_size     INTEGER NOT NULL DEFAULT 0,
	reserved     BOOLEAN NOT NULL DEFAULT 0,
	updated_at   TEXT NOT NULL
);

CREATE TABLE pool_tags (
	pool TEXT NOT NULL REFERENCES pools (name) ON DELETE CASCADE,
	pos  INTEGER NOT NULL,
	tag  TEXT NOT NULL,
	PRIMARY KEY (pool, tag)
);

CREATE TABLE machines (
	id                INTEGER PRIMARY KEY AUTOINCREMENT,
	name              TEXT NOT NULL,
	label             TEXT NOT NULL UNIQUE,
	pool              TEXT NOT NULL DEFAULT '',
	instance_id       TEXT NOT NULL DEFAULT '',
	arch              TEXT NOT NULL DEFAULT '',
	ip                TEXT NOT NULL DEFAULT '',
	platform          TEXT NOT NULL DEFAULT '',
	interface         TEXT NOT NULL DEFAULT '',
	snapshot          TEXT NOT NULL DEFAULT '',
	resultserver_ip   TEXT NOT NULL DEFAULT '',
	resultserver_port INTEGER NOT NULL DEFAULT 0,
	reserved          BOOLEAN NOT NULL DEFAULT 0,
	state             TEXT NOT NULL,
	state_changed_on  TEXT NOT NULL,
	locked_changed_on TEXT,
	quarantine_reason TEXT NOT NULL DEFAULT '',
	version           INTEGER NOT NULL DEFAULT 1,
	created_at        TEXT NOT NULL
);

CREATE INDEX machines_pool_state ON machines (pool, state);

CREATE TABLE machine_tags (
	machine_id INTEGER NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
	pos        INTEGER NOT NULL,
	tag        TEXT NOT NULL,
	PRIMARY KEY (machine_id, tag)
);

CREATE TABLE machine_events (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	machine_id INTEGER NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
	label      TEXT NOT NULL,
	from_state TEXT NOT NULL,
	to_state   TEXT NOT NULL,
	cause      TEXT NOT NULL DEFAULT '',
	at         TEXT NOT NULL
);

CREATE INDEX machine_events_machine ON machine_events (machine_id);

CREATE TABLE operations (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	pool         TEXT NOT NULL,
	kind         TEXT NOT NULL,
	instance_ids TEXT NOT NULL DEFAULT '[]', -- JSON array of strings
	capacity     INTEGER NOT NULL DEFAULT 0,
	state        TEXT NOT NULL,
	resume_token TEXT NOT NULL DEFAULT '',
	attempt      INTEGER NOT NULL DEFAULT 0,
	deadline     TEXT,
	error        TEXT NOT NULL DEFAULT '',
	created_at   TEXT NOT NULL,
	updated_at   TEXT NOT NULL
);

CREATE INDEX operations_state ON operations (state);
