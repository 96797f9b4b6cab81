//! End-to-end benchmark of a ClickHouse destination against `pg_recvlogical` decoding the same
//! WAL on the same machine, in one run. Run it with `scripts/bench-clickhouse.sh`.
//!
//! For each workload (insert-only, update-heavy, mixed; `BENCH_ROWS` row changes each, the
//! same workloads as `bench_fanout`) a fresh source database gets two `pgoutput` slots at the
//! same LSN: one for `pg_recvlogical`, one for `pgfanout run` with one ClickHouse destination
//! (one tenant, identity mappings, `create_tables = true`, the default `batch_rows` and
//! `flush_interval`) into database `bench_<workload>` of a private ClickHouse server. A preload
//! phase (untimed) brings ClickHouse to the starting rows and moves the reference slot past
//! them; then the workload is written with both consumers stopped, and each is timed:
//!
//! - the reference, `pg_recvlogical --start -o proto_version=1 -o publication_names=bench
//!   --endpos=LSN -f /dev/null`, from process start until it exits by itself at the LSN after
//!   the final marker row's commit. The same plugin, protocol and publication as pgfanout's
//!   slot, so the walsender decodes and sends exactly the same stream: this is the rate at
//!   which the WAL can be decoded and received, with no work done on the changes;
//! - `pgfanout run`, from process start until the final marker row is visible in ClickHouse
//!   (`FINAL`, polled every 20 ms); then it is stopped with SIGTERM.
//!
//! Which consumer goes first alternates between workloads, and each waits until ClickHouse
//! has no merge running. Afterwards the live rows in ClickHouse (`FINAL`, not deleted) must
//! match the source table: count, sums, and an MD5 over every row's id, score, email and note.
//!
//! `BENCH_CH_SETTINGS` (TOML lines, for example `flush_interval = "100ms"`) is appended to
//! the destination's table, for experiments; the reported figures use the defaults.

mod bench_common;

use std::process::Command;
use std::time::{Duration, Instant};

use bench_common::{
    bench_rows, bench_workloads, check_running, find_recvlogical, pgfanout_bin, setup_source,
    source_and_mappings_toml, spawn, start_source, stop, write_preload, write_workload, BoxError,
    MARKER_TIMEOUT, TENANT,
};
use pgfanout_testkit::localch::LocalClickHouse;
use pgfanout_testkit::localpg::LocalPostgres;
use tokio::runtime::Runtime;

/// How often the marker is looked for in ClickHouse.
const POLL: Duration = Duration::from_millis(20);

struct Measured {
    workload: String,
    recv: Duration,
    fanout: Duration,
    /// When pgfanout's walsender had sent the whole workload.
    slot_read: Duration,
    wal_bytes: i64,
}

fn main() -> Result<(), BoxError> {
    let rows = bench_rows();
    let only = bench_workloads();
    let pgfanout = pgfanout_bin();
    let recvlogical =
        find_recvlogical().ok_or("pg_recvlogical not found (apt-get install postgresql-client)")?;
    let rt = Runtime::new()?;
    let pg = start_source(&[])?;
    let ch = LocalClickHouse::start()?;
    let version = ch.query("SELECT version()")?;
    eprintln!("ClickHouse {} at {}", version.trim(), ch.url());
    let mut results = Vec::new();
    for (i, workload) in only.split(',').enumerate() {
        let r = bench(
            &rt,
            &pg,
            &ch,
            &pgfanout,
            &recvlogical,
            workload,
            rows,
            i % 2 == 1,
        )?;
        results.push(r);
    }
    let rate = |d: &Duration| rows as f64 / d.as_secs_f64();
    println!(
        "{rows} row changes per workload, one tenant, same WAL for both consumers (ClickHouse {}):",
        version.trim()
    );
    println!(
        "  {:7} {:>8}  {:>26}  {:>26}  {:>5}  {:>9}",
        "", "WAL", "pg_recvlogical", "pgfanout → ClickHouse", "ratio", "slot read"
    );
    for r in &results {
        println!(
            "  {:7} {:>5} MB  {:>9.0} rows/s ({:>6.2} s)  {:>9.0} rows/s ({:>6.2} s)  {:>5.2}  {:>7.2} s",
            r.workload,
            r.wal_bytes / 1_000_000,
            rate(&r.recv),
            r.recv.as_secs_f64(),
            rate(&r.fanout),
            r.fanout.as_secs_f64(),
            rate(&r.fanout) / rate(&r.recv),
            r.slot_read.as_secs_f64()
        );
    }
    println!("  (slot read: when pgfanout's walsender had sent the whole workload, from pgfanout's start)");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bench(
    rt: &Runtime,
    pg: &LocalPostgres,
    ch: &LocalClickHouse,
    pgfanout: &str,
    recvlogical: &str,
    workload: &str,
    rows: u64,
    fanout_first: bool,
) -> Result<Measured, BoxError> {
    let src = format!("src_{workload}");
    let ch_db = format!("bench_{workload}");
    let (recv_slot, pgf_slot) = (format!("recv_{workload}"), format!("pgf_{workload}"));
    rt.block_on(pg.create_database(&src))?;
    let source = rt.block_on(pg.sql(&src))?;
    rt.block_on(setup_source(
        &source,
        &[recv_slot.clone(), pgf_slot.clone()],
    ))?;
    let work = tempfile::tempdir()?;
    let config = work.path().join("pgfanout.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[destinations]]\nname = \"ch\"\nkind = \"clickhouse\"\nurl = \"{}\"\ndatabase = \"{ch_db}\"\n\
             tenants = [\"{TENANT}\"]\nmappings = [\"bench\", \"marker\"]\ncreate_tables = true\n{}\n",
            source_and_mappings_toml(&pg.socket_url(&src), &pgf_slot, &work.path().join("log")),
            ch.url(),
            // For experiments only (e.g. `batch_rows = 50000`): the reported runs use none.
            std::env::var("BENCH_CH_SETTINGS").unwrap_or_default(),
        ),
    )?;

    // Preload (untimed): ClickHouse gets the starting rows through pgfanout; the reference
    // slot is moved past them (decoding them on the server, untimed too).
    rt.block_on(write_preload(&source, workload))?;
    let mut daemon = spawn(pgfanout, &config)?;
    wait_marker(ch, &ch_db, 1, &mut daemon, || Ok(()))?;
    stop(daemon)?;
    let start_lsn: String = rt
        .block_on(source.query_one(
            "SELECT lsn::text FROM pg_replication_slot_advance($1, pg_current_wal_insert_lsn()) AS a(slot, lsn)",
            &[&recv_slot],
        ))?
        .get(0);

    eprintln!("{workload}: writing {rows} row changes");
    rt.block_on(write_workload(&source, workload, rows))?;
    // The LSN after the final marker's commit: pg_recvlogical exits once it gets there.
    let end_lsn: String = rt
        .block_on(source.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]))?
        .get(0);
    let wal_bytes: i64 = rt
        .block_on(source.query_one(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::bigint",
            &[&end_lsn, &start_lsn],
        ))?
        .get(0);
    // Neither consumer should meet the checkpoint of the workload's writes.
    rt.block_on(source.batch_execute("CHECKPOINT"))?;

    let conninfo = pg.conninfo_string(&src);
    let time_recv = || -> Result<Duration, BoxError> {
        quiesce(ch)?;
        let start = Instant::now();
        let status = Command::new(recvlogical)
            .args([
                "-d",
                &conninfo,
                "--slot",
                &recv_slot,
                "--start",
                "--no-loop",
            ])
            .args(["-o", "proto_version=1", "-o", "publication_names=bench"])
            .args(["--endpos", &end_lsn, "-f", "/dev/null"])
            .status()?;
        let took = start.elapsed();
        if !status.success() {
            return Err(format!("{workload}: pg_recvlogical failed: {status}").into());
        }
        Ok(took)
    };
    // Also notes when pgfanout's walsender has sent everything up to `end_lsn`: the part of
    // its time the slot takes, the rest being the destination's.
    let sent_all = "SELECT coalesce(bool_or(r.sent_lsn >= $1::text::pg_lsn), false)
                    FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
                    WHERE s.slot_name = $2";
    let time_fanout = || -> Result<(Duration, Duration), BoxError> {
        quiesce(ch)?;
        let start = Instant::now();
        let mut slot_read = None;
        let mut daemon = spawn(pgfanout, &config)?;
        wait_marker(ch, &ch_db, 2, &mut daemon, || {
            if slot_read.is_none()
                && rt
                    .block_on(source.query_one(sent_all, &[&end_lsn, &pgf_slot]))?
                    .get::<_, bool>(0)
            {
                slot_read = Some(start.elapsed());
            }
            Ok(())
        })?;
        let took = start.elapsed();
        stop(daemon)?;
        Ok((took, slot_read.unwrap_or(took)))
    };
    let (recv, (fanout, slot_read)) = if fanout_first {
        let f = time_fanout()?;
        (time_recv()?, f)
    } else {
        let r = time_recv()?;
        (r, time_fanout()?)
    };
    eprintln!(
        "{workload}: pg_recvlogical {:.2}s, pgfanout → ClickHouse {:.2}s (its slot read in {:.2}s)",
        recv.as_secs_f64(),
        fanout.as_secs_f64(),
        slot_read.as_secs_f64()
    );

    // ClickHouse must hold the source's rows, or the time means nothing.
    let expected: String = rt
        .block_on(source.query_one(
            "SELECT count(*)::text || ':' || coalesce(sum(id), 0)::text || ':' ||
                    coalesce(sum(score), 0)::text || ':' || coalesce(sum(balance), 0)::text || ':' ||
                    coalesce(md5(string_agg(s, ',' ORDER BY s COLLATE \"C\")), '')
             FROM (SELECT id, score, balance,
                          id || ':' || coalesce(score::text, '') || ':' || coalesce(email, '') || ':' ||
                          coalesce(note, '') AS s
                   FROM bench) b",
            &[],
        ))?
        .get(0);
    // FINAL in a subquery and the deleted filter outside it: the filter must not reach the
    // rows before FINAL has collapsed each key's versions.
    let got = ch.query(&format!(
        "SELECT concat(toString(count()), ':', toString(sum(id)), ':', toString(sum(score)), ':',
                       toString(sum(balance)), ':',
                       if(count() = 0, '', lower(hex(MD5(arrayStringConcat(arraySort(groupArray(s)), ','))))))
         FROM (SELECT id, score, balance, _is_deleted,
                      concat(toString(id), ':', ifNull(toString(score), ''), ':', ifNull(email, ''), ':',
                             ifNull(note, '')) AS s
               FROM {ch_db}.bench FINAL)
         WHERE _is_deleted = 0"
    ))?;
    if got.trim() != expected {
        return Err(format!(
            "{workload}: ClickHouse differs from the source: source {expected}, ClickHouse {}",
            got.trim()
        )
        .into());
    }
    eprintln!("{workload}: ClickHouse matches the source ({expected})");
    Ok(Measured {
        workload: workload.to_owned(),
        recv,
        fanout,
        slot_read,
        wal_bytes,
    })
}

/// Waits until marker `id` is a live row in ClickHouse, calling `each_poll` between looks;
/// fails when `daemon` exits first.
fn wait_marker(
    ch: &LocalClickHouse,
    db: &str,
    id: i32,
    daemon: &mut std::process::Child,
    mut each_poll: impl FnMut() -> Result<(), BoxError>,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + MARKER_TIMEOUT;
    let sql = format!(
        "SELECT count() FROM (SELECT id, _is_deleted FROM {db}.marker FINAL WHERE id = {id}) WHERE _is_deleted = 0"
    );
    loop {
        // Before pgfanout has created the table, the query fails: not there yet.
        if ch.query(&sql).is_ok_and(|n| n.trim() == "1") {
            return Ok(());
        }
        check_running(daemon, &format!("marker {id}"))?;
        each_poll()?;
        if Instant::now() > deadline {
            return Err(format!("marker {id} never arrived in ClickHouse").into());
        }
        std::thread::sleep(POLL);
    }
}

/// Waits (up to two minutes) until ClickHouse runs no background merge, so that merges of
/// one consumer's inserts do not run during the other's timing.
fn quiesce(ch: &LocalClickHouse) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ch.query("SELECT count() FROM system.merges")?.trim() != "0" {
        if Instant::now() > deadline {
            eprintln!("ClickHouse still merging after 120 s; going on");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
