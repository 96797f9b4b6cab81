-- 0002: what each destination's writer last reported, for `pgfanout status`.
--
-- Written by the running daemon every few seconds; the destination's own watermark table
-- (in the destination) stays the truth for resuming. Same rules as 0001: unqualified names,
-- no transaction control, never edited once released.
CREATE TABLE destinations (
    name text PRIMARY KEY,
    state text NOT NULL,
    watermark bigint NOT NULL CHECK (watermark >= 0),
    -- Commit time of the last source transaction applied (NULL before the first).
    applied_commit_time timestamptz,
    -- The last failure while retrying or needing resync; never holds row values.
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
