//! The PostgreSQL destination writer: target tables created or validated from their
//! specification, batches applied in one transaction with set-based, seq-guarded statements.
//!
//! Per table, four statements are prepared once by [`PostgresSink::ensure_tables`]; the row
//! statements bind one `text[]` per column and one `int8[]` of seqs, so a batch costs a few
//! statements whatever its size, and values travel as text and are cast on the server to the
//! column's type as the catalog reports it:
//!
//! ```text
//! missing: SELECT u.i FROM unnest(key text[]…, int4[]) AS u(…)
//!            WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.key = u.key [AND NOT t._deleted])
//! upsert:  INSERT INTO t (cols…, _seq) SELECT CAST(u.v0 AS type0), …, u.s
//!            FROM unnest($1::text[], …, $n::int8[]) AS u(v0, …, s)
//!          ON CONFLICT (key) DO UPDATE SET col = excluded.col, …, _seq = excluded._seq
//!            WHERE t._seq < excluded._seq
//! keep:    UPDATE t SET col = CASE WHEN u.k0 THEN t.col ELSE CAST(u.v0 AS type0) END, …
//!            FROM unnest(… text[] …, … bool[] "unchanged" …, int8[]) AS u(…)
//!            WHERE t.key = u.key AND t._seq < u.s           (rows with Cell::Unchanged only,
//!                                                            run before upsert)
//! delete:  DELETE FROM t USING unnest(key text[]…, int8[]) AS u(…)
//!            WHERE t.key = u.key AND t._seq < u.s       (soft: UPDATE SET _deleted = true)
//! truncate: DELETE FROM t WHERE t._seq < $1             (soft: UPDATE SET _deleted = true,
//!                                                        _seq = $1 … AND NOT _deleted;
//!                                                        run after the row statements)
//! ```
//!
//! A row whose key changed (deleted at its old key under the same seq just before) and that
//! carries [`Cell::Unchanged`] first goes through `carry`: `INSERT … SELECT` joining the old
//! key's row, taking the unchanged columns from it (the old row is deleted after).
//!
//! Rows carrying [`Cell::Unchanged`] first go through `keep`, which updates an existing row and
//! keeps those columns; the `upsert` that follows then finds the row at the same `_seq` and
//! leaves it alone, or inserts it when it did not exist. Before the batch is written, the
//! fan-out asks [`PostgresSink::unknown_unchanged`] which such rows have no live row to keep
//! the values from (the `missing` statement: keys without a live row, one statement per
//! table) and fills those from the source (`fanout::toast`), so an unchanged column is NULL
//! only for a row the source no longer has either — a later delete in the log removes it.
//!
//! The watermark row is locked first (`INSERT … ON CONFLICT DO UPDATE … RETURNING seq`, which
//! creates it when absent and row-locks it like `SELECT … FOR UPDATE`), so two writers for one
//! destination never interleave: the second waits, then sees the first one's watermark and
//! skips what it already applied.
//!
//! With `apply_connections = N > 1`, a batch without truncates or key changes is split by key
//! over N connections, each with its own prepared statements; connection 0 holds the
//! watermark row throughout and commits last (the protocol, and what a crash between the
//! commits leaves, is at [`PostgresSink::apply`]; invariant 35).
//!
//! Keys collapse by their text: the change stream sends each type's canonical output, so equal
//! values have equal text. Target tables must not reference each other with immediate foreign
//! keys: a batch writes table by table.

pub mod config;
mod ddl;
mod error;
mod plan;
mod sink;
mod statements;

pub use error::{Location, PostgresError};
pub use sink::{ApplyOutcome, PostgresSink};
