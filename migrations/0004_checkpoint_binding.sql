-- 0004: bind each checkpoint to the stream its seqs count (see src/binding.rs).
--
-- A checkpoint's last_seq means "the Nth change of this numbering, from this cluster, database
-- and slot". Start-up refuses a checkpoint bound to anything else. Rows written before this
-- migration have NULLs and are bound at the next save. Same rules as 0001.
ALTER TABLE checkpoints
    -- pg_control's system identifier, as decimal text (it is an unsigned 64-bit number).
    ADD COLUMN system_identifier text,
    ADD COLUMN timeline integer,
    ADD COLUMN database text,
    -- The numbering's lineage: 32 hex digits.
    ADD COLUMN lineage text;
