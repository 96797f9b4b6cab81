-- 0006: the running daemon's heartbeat, so that `pgfanout status` can tell a daemon that is
-- down from one that is quiet.
--
-- One row per slot (one daemon streams a slot), written every few seconds while
-- `pgfanout run` runs, and marked stopped when it ends cleanly. A heartbeat older than a few
-- intervals means no daemon is running (it was killed, or its host is gone). Same rules as
-- 0001: unqualified names, no transaction control, never edited once released.
CREATE TABLE daemon_heartbeats (
    slot text PRIMARY KEY,
    pid integer NOT NULL,
    host text NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL,
    beat_at timestamptz NOT NULL DEFAULT now(),
    -- Seconds between beats, as the daemon writes them (status judges staleness by it).
    interval_seconds double precision NOT NULL CHECK (interval_seconds > 0),
    -- Set when the daemon ended cleanly; NULL while it runs (or after it was killed).
    stopped_at timestamptz
);
