-- 0005: snapshots (initial, coverage growth, resync) and what each destination was given.
--
-- A snapshot copies the rows of mapped tables into some destinations (and tenants, mappings)
-- while the stream flows, chunk by chunk (DBLog watermarks; see src/snapshot/mod.rs). It is a
-- request until the daemon starts it, then one row per source table and one per key range of
-- that table, each with the last key made durable in the change log: a restart continues
-- from there. Same rules as 0001: unqualified names, no transaction control, never edited
-- once released.
CREATE TABLE snapshots (
    id bigserial PRIMARY KEY,
    -- initial | coverage | resync | auto resync
    reason text NOT NULL,
    destinations text[] NOT NULL,
    -- NULL: every tenant the destinations serve.
    tenants text[],
    -- NULL: every mapping of the destinations.
    mappings text[],
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    -- Every change at or below this seq was in the log before the snapshot's first chunk:
    -- a row whose version is not above it afterwards was neither read nor changed.
    start_seq bigint CHECK (start_seq >= 0),
    -- The seq of its last mark: a destination whose watermark reached it holds the snapshot.
    done_seq bigint CHECK (done_seq >= 0),
    -- Clears the destinations' `needs resync` hold once done.
    clears_hold boolean NOT NULL DEFAULT false,
    -- Why it failed: names table and column, never a row value.
    error text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);

CREATE TABLE snapshot_tables (
    snapshot bigint NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    -- schema.name, as the mappings name it.
    source_table text NOT NULL,
    mappings text[] NOT NULL,
    -- The key the chunks are ordered by: the primary key, else the replica identity index.
    key_columns text[] NOT NULL,
    estimated_rows bigint NOT NULL DEFAULT 0,
    done boolean NOT NULL DEFAULT false,
    PRIMARY KEY (snapshot, source_table)
);

CREATE TABLE snapshot_ranges (
    snapshot bigint NOT NULL,
    source_table text NOT NULL,
    range_no integer NOT NULL CHECK (range_no >= 0),
    -- Keys as text, in key_columns order. lower: exclusive, NULL from the first row; upper:
    -- inclusive, NULL to the last row.
    lower_key text[],
    upper_key text[],
    -- The last key of the last chunk durable in the change log; NULL: none yet.
    position text[],
    chunks bigint NOT NULL DEFAULT 0,
    rows bigint NOT NULL DEFAULT 0,
    -- The seq of the last chunk's mark in the change log: after a crash, the log is read from
    -- there for marks made durable but not yet recorded here.
    mark_seq bigint NOT NULL DEFAULT 0,
    done boolean NOT NULL DEFAULT false,
    PRIMARY KEY (snapshot, source_table, range_no),
    FOREIGN KEY (snapshot, source_table)
        REFERENCES snapshot_tables (snapshot, source_table) ON DELETE CASCADE
);

-- What each destination has been given, so that a tenant, a mapping or a destination added
-- to the configuration later is backfilled. tenant '*': every tenant it serves.
CREATE TABLE coverage (
    destination text NOT NULL,
    mapping text NOT NULL,
    tenant text NOT NULL,
    PRIMARY KEY (destination, mapping, tenant)
);
