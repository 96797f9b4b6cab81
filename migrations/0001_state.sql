-- 0001: checkpoints of the replication slot.
--
-- Applied by pgfanout's migration runner (src/state/migrations.rs) inside one transaction with
-- `search_path` set to the state schema, so names here are unqualified and the schema is
-- configurable. No transaction control (BEGIN/COMMIT) and nothing that cannot run inside a
-- transaction (CREATE INDEX CONCURRENTLY). Never edit this file once released: the runner
-- refuses a changed checksum; put changes in a new, higher-numbered file.

-- The (commit end LSN, last seq) pair of the last transaction boundary pgfanout made durable,
-- one row per slot. Restarting from it gives every later change the seq it had before.
CREATE TABLE checkpoints (
    slot text PRIMARY KEY,
    commit_end_lsn pg_lsn NOT NULL,
    last_seq bigint NOT NULL CHECK (last_seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
