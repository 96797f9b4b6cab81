-- 0003: destinations held back, so that a restart or another process knows.
--
-- `failed`: stopped by an error retrying cannot fix (a value its column refuses, a vanished
-- table); the daemon does not run it again until `pgfanout destination resume` deletes the
-- row (a restart retries it once; failing again writes the row again).
-- `needs resync`: the change log no longer holds changes it had not applied; it keeps
-- streaming what comes next, but its tables miss those changes until resynced (or until
-- `pgfanout destination resume` accepts the gap).
-- One row per destination. Same rules as 0001: unqualified names, no transaction control,
-- never edited once released.
CREATE TABLE destination_holds (
    name text PRIMARY KEY,
    hold text NOT NULL CHECK (hold IN ('failed', 'needs resync')),
    -- Why, naming destination, table, column and seq; never a row value.
    reason text NOT NULL,
    -- failed: the change it stopped at; needs resync: the first change it missed.
    seq bigint CHECK (seq >= 0),
    -- Where it failed, when known.
    target_table text,
    target_column text,
    -- A failed destination that also needs a resync keeps the resync's reason here: clearing
    -- the failure at a restart leaves it `needs resync`.
    resync_reason text,
    since timestamptz NOT NULL DEFAULT now()
);
