//! What the daemon tells about itself while it runs: its metrics and its liveness.
//!
//! - Every metric's name is declared here once, with its type, unit and help text
//!   ([`describe`]); the stages record through the `metrics` facade with these constants
//!   (METRICS.md lists them). Without an installed recorder (every command but `run`, the
//!   tests of the library) recording is a no-op.
//! - Recording happens per transaction, per batch or per report round, never per row: a
//!   stage that records on its hot path takes the metric's handle once (an atomic add per
//!   use) instead of looking the name up each time.
//! - Label values are bounded: `destination` takes the configured names, `state`, `kind`
//!   and `disposition` fixed vocabularies, and `tenant` only the tenants a destination lists
//!   by name, at most [`TENANT_SERIES_CAP`] of them.
//! - [`live`] holds what `/health` and `/ready` answer from: the long-lived tasks'
//!   heartbeats, whether the pipeline streams, each destination's last state.
//!
//! Layer 0: imports nothing of pgfanout's, so every stage may record.

pub mod live;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Changes numbered from the replication stream (recorded at each commit).
pub const CHANGES_RECEIVED_TOTAL: &str = "pgfanout_source_changes_received_total";
/// Bytes of replication messages read from the slot.
pub const RECEIVED_BYTES_TOTAL: &str = "pgfanout_source_received_bytes_total";
/// WAL the slot holds behind the server's end: the last keepalive's WAL end minus the
/// position the change log made durable.
pub const SLOT_LAG_BYTES: &str = "pgfanout_slot_lag_bytes";
/// Protocol 2: transactions streamed and not yet committed or aborted.
pub const STREAMING_TRANSACTIONS: &str = "pgfanout_source_streaming_transactions";
/// Protocol 2: bytes those transactions hold in the spool.
pub const STREAMING_SPOOL_BYTES: &str = "pgfanout_source_streaming_spool_bytes";
/// Failures of the source pipeline (slot, change log, state database) by kind and what
/// happened next.
pub const SOURCE_ERRORS_TOTAL: &str = "pgfanout_source_errors_total";
/// Changes made durable in the change log.
pub const CHANGES_LOGGED_TOTAL: &str = "pgfanout_changelog_changes_logged_total";
/// The change log's last durable seq.
pub const LOG_LAST_SEQ: &str = "pgfanout_changelog_last_seq";
/// The oldest seq the change log still holds (0 while empty).
pub const LOG_OLDEST_SEQ: &str = "pgfanout_changelog_oldest_seq";
/// Bytes of the change log's segment files.
pub const LOG_SIZE_BYTES: &str = "pgfanout_changelog_size_bytes";
/// Segment files of the change log.
pub const LOG_SEGMENTS: &str = "pgfanout_changelog_segments";
/// The seq up to which a destination applied the log (its watermark).
pub const DEST_APPLIED_SEQ: &str = "pgfanout_destination_applied_seq";
/// Changes in the log beyond a destination's watermark.
pub const DEST_LAG_CHANGES: &str = "pgfanout_destination_lag_changes";
/// Commit time of the log's last transaction minus that of the last one a destination
/// applied (0 when it is caught up).
pub const DEST_LAG_SECONDS: &str = "pgfanout_destination_lag_seconds";
/// 1 for a destination's current state, 0 for the others (`state` label).
pub const DEST_STATE: &str = "pgfanout_destination_state";
/// Row operations per batch written.
pub const DEST_BATCH_ROWS: &str = "pgfanout_destination_batch_rows";
/// Time to write one batch, its watermark included.
pub const DEST_BATCH_SECONDS: &str = "pgfanout_destination_batch_duration_seconds";
/// Row operations written.
pub const DEST_ROWS_APPLIED_TOTAL: &str = "pgfanout_destination_rows_applied_total";
/// A destination's failed sessions, by kind and what happened next.
pub const DEST_ERRORS_TOTAL: &str = "pgfanout_destination_errors_total";
/// Per tenant that has a destination of its own: that destination's lag in changes.
pub const TENANT_LAG_CHANGES: &str = "pgfanout_tenant_lag_changes";
/// Per tenant that has a destination of its own: that destination's lag in seconds.
pub const TENANT_LAG_SECONDS: &str = "pgfanout_tenant_lag_seconds";
/// Snapshot chunks emitted into the change log.
pub const SNAPSHOT_CHUNKS_TOTAL: &str = "pgfanout_snapshot_chunks_total";
/// Snapshot rows emitted into the change log.
pub const SNAPSHOT_ROWS_TOTAL: &str = "pgfanout_snapshot_rows_total";
/// PostgreSQL connections open, by `kind`: `sql` or `replication`.
pub const OPEN_CONNECTIONS: &str = "pgfanout_open_connections";
/// Destination writers connected, under `[fanout] max_connections` (any kind of destination).
pub const DEST_CONNECTIONS_OPEN: &str = "pgfanout_destination_connections_open";
/// Destination writers waiting for one of the `[fanout] max_connections` connections.
pub const DEST_CONNECTIONS_WAITING: &str = "pgfanout_destination_connections_waiting";
/// 1 while the pipeline streams from its slot (what `/ready` also requires).
pub const STREAMING: &str = "pgfanout_streaming";
/// Always 1; the `version` label carries the build's version.
pub const BUILD_INFO: &str = "pgfanout_build_info";

/// At most this many tenants get series of their own (the `tenant` label); the ones past it,
/// in the order of the configuration, are left out and a warning says so once.
pub const TENANT_SERIES_CAP: usize = 100;

/// Per destination, the tenants that get series of their own: those it lists, in order, until
/// [`TENANT_SERIES_CAP`] in all; and how many were left out.
pub fn cap_tenant_series(mut listed: Vec<Vec<String>>) -> (Vec<Vec<String>>, usize) {
    let mut room = TENANT_SERIES_CAP;
    let mut left_out = 0;
    for tenants in &mut listed {
        let keep = tenants.len().min(room);
        left_out += tenants.len() - keep;
        tenants.truncate(keep);
        room -= keep;
    }
    (listed, left_out)
}

/// Every state a destination's [`DEST_STATE`] series may carry.
pub const DESTINATION_STATES: &[&str] = &[
    "starting",
    "streaming",
    "catching up",
    "retrying",
    "failed",
    "needs resync",
    "stopped",
];

/// Histogram buckets of [`DEST_BATCH_ROWS`].
pub const BATCH_ROWS_BUCKETS: &[f64] =
    &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];
/// Histogram buckets of [`DEST_BATCH_SECONDS`].
pub const BATCH_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Registers the help text and unit of every metric with the installed recorder.
pub fn describe() {
    describe_counter!(
        CHANGES_RECEIVED_TOTAL,
        Unit::Count,
        "Changes numbered from the replication stream."
    );
    describe_counter!(
        RECEIVED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of replication messages read from the slot."
    );
    describe_gauge!(
        SLOT_LAG_BYTES,
        Unit::Bytes,
        "WAL between the server's end (last keepalive) and what the change log made durable."
    );
    describe_gauge!(
        STREAMING_TRANSACTIONS,
        Unit::Count,
        "Transactions the server streamed before their commit, not yet committed or aborted."
    );
    describe_gauge!(
        STREAMING_SPOOL_BYTES,
        Unit::Bytes,
        "Bytes the streamed, uncommitted transactions hold in the log directory's streaming/."
    );
    describe_counter!(
        SOURCE_ERRORS_TOTAL,
        Unit::Count,
        "Failures of the source pipeline, by kind and disposition."
    );
    describe_counter!(
        CHANGES_LOGGED_TOTAL,
        Unit::Count,
        "Changes made durable in the change log."
    );
    describe_gauge!(LOG_LAST_SEQ, "The change log's last durable seq.");
    describe_gauge!(LOG_OLDEST_SEQ, "The oldest seq the change log holds.");
    describe_gauge!(
        LOG_SIZE_BYTES,
        Unit::Bytes,
        "Bytes of the change log's segment files."
    );
    describe_gauge!(LOG_SEGMENTS, "Segment files of the change log.");
    describe_gauge!(
        DEST_APPLIED_SEQ,
        "The seq up to which the destination applied the log (its watermark)."
    );
    describe_gauge!(
        DEST_LAG_CHANGES,
        "Changes in the log beyond the destination's watermark."
    );
    describe_gauge!(
        DEST_LAG_SECONDS,
        Unit::Seconds,
        "Commit time of the log's last transaction minus that of the last one applied."
    );
    describe_gauge!(
        DEST_STATE,
        "1 for the destination's current state, 0 for the others."
    );
    describe_histogram!(DEST_BATCH_ROWS, "Row operations per batch written.");
    describe_histogram!(
        DEST_BATCH_SECONDS,
        Unit::Seconds,
        "Time to write one batch and its watermark."
    );
    describe_counter!(
        DEST_ROWS_APPLIED_TOTAL,
        Unit::Count,
        "Row operations written to the destination."
    );
    describe_counter!(
        DEST_ERRORS_TOTAL,
        Unit::Count,
        "Failed sessions of the destination, by kind and disposition."
    );
    describe_gauge!(
        TENANT_LAG_CHANGES,
        "Changes the destination of this tenant has not applied."
    );
    describe_gauge!(
        TENANT_LAG_SECONDS,
        Unit::Seconds,
        "Lag in seconds of the destination of this tenant."
    );
    describe_counter!(
        SNAPSHOT_CHUNKS_TOTAL,
        Unit::Count,
        "Snapshot chunks emitted into the change log."
    );
    describe_counter!(
        SNAPSHOT_ROWS_TOTAL,
        Unit::Count,
        "Snapshot rows emitted into the change log."
    );
    describe_gauge!(OPEN_CONNECTIONS, "PostgreSQL connections open, by kind.");
    describe_gauge!(
        DEST_CONNECTIONS_OPEN,
        "Destination writers connected, under [fanout] max_connections."
    );
    describe_gauge!(
        DEST_CONNECTIONS_WAITING,
        "Destination writers waiting for a connection under [fanout] max_connections."
    );
    describe_gauge!(STREAMING, "1 while the pipeline streams from its slot.");
    describe_gauge!(BUILD_INFO, "Always 1; the version label is the build's.");
}

/// An open PostgreSQL connection, counted in [`OPEN_CONNECTIONS`] until dropped.
#[derive(Debug)]
pub struct OpenConnection(metrics::Gauge);

impl OpenConnection {
    /// `kind`: `sql` or `replication`.
    pub fn new(kind: &'static str) -> Self {
        let gauge = metrics::gauge!(OPEN_CONNECTIONS, "kind" => kind);
        gauge.increment(1.0);
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_series_stop_at_the_cap_in_the_order_given() {
        let names = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
        let (kept, left_out) = cap_tenant_series(vec![
            names("a", 60),
            Vec::new(),
            names("b", 60),
            names("c", 5),
        ]);
        assert_eq!(
            kept.iter().map(Vec::len).collect::<Vec<_>>(),
            [60, 0, 40, 0]
        );
        assert_eq!(kept[2].last().map(String::as_str), Some("b39"));
        assert_eq!(left_out, 25);
        let (kept, left_out) = cap_tenant_series(vec![names("a", 3)]);
        assert_eq!((kept[0].len(), left_out), (3, 0));
    }
}
