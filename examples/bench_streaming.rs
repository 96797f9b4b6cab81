//! Protocol 2 benchmark (issue 14): a large transaction and the small ones after it, under
//! pgoutput protocol 1 and protocol 2 in the same run. Run it with
//! `scripts/bench-streaming.sh`.
//!
//! One PostgreSQL 15 server (default `logical_decoding_work_mem = 64MB`) is source and
//! destination, so one clock stamps both ends. Per scenario and protocol, a fresh source
//! database with its own slot, change log and destination databases:
//!
//! - `after`: one transaction inserts `BENCH_ROWS` (default 1,000,000) rows into `bench` in
//!   statements of 10,000 rows and commits; right after its commit 100 small transactions
//!   commit, one every 5 ms, while the server decodes the large one.
//! - `during`: the same large transaction, with the 100 small ones committing between its
//!   statements (before its commit).
//!
//! Each small transaction inserts one `lat` row for tenant 1 — the large transaction's tenant,
//! whose destination `same` also receives the million rows — and one for tenant 2, whose
//! destination `other` receives only `lat`: `same` shows the small transactions behind the
//! large one in the same destination, `other` the head-of-line blocking the issue is about
//! (another tenant waiting for a transaction it does not receive). `lat.written_at` is
//! `clock_timestamp()` just before the commit (`synchronous_commit = on`, as `bench_latency`),
//! and each target's `arrived` is stamped when pgfanout inserts the row; the large
//! transaction's last statement writes `lat` row 0, so its `arrived - written_at` is the large
//! transaction's commit → visible time.
//!
//! `BENCH_LARGE_PACE_MS` (default 0) sleeps that long between the large transaction's
//! statements: a transaction that runs longer than the walsender needs to stream it, so that
//! at its commit only the last block is left to send.
//!
//! `BENCH_WORK_MEM` (e.g. `8MB`) overrides `logical_decoding_work_mem`, for experiments.
//!
//! Protocols run one after the other, not side by side: on two cores two walsenders decoding
//! the same 274 MB of WAL, two pgfanouts and two destinations applying a million rows would
//! each take CPU from the other, and the latencies would measure that contention instead of the
//! protocol. `BENCH_ROUNDS` (default 1) repeats each scenario, alternating which protocol goes
//! first.
//!
//! A sampler (every 20 ms) records where the time goes after the large commit: when the
//! walsender has sent past the commit record (`pg_stat_replication.sent_lsn`: under protocol
//! 1 it has then decoded and sent the whole transaction, under protocol 2 its last block and
//! Stream Commit), when pgfanout's change log is durable past the large transaction
//! (`pgfanout_changelog_last_seq` on the admin endpoint), the spool directory's size and the
//! CPU time of the walsender and of pgfanout (printed: how far behind the walsender was at the
//! commit, and the CPU each used until the large transaction was logged). At the end: the
//! slot's `pg_stat_replication_slots` spill and stream counters, pgfanout's peak resident memory
//! (`VmHWM`) and the load average. `BENCH_SAMPLES=PREFIX` writes every sample to
//! `PREFIX.<scenario>_<round>_v<protocol>.csv`.

mod bench_common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_common::{
    bench_rows, insert_sql, latency, pgfanout_bin, setup_source, source_and_mappings_toml_with,
    spawn, start_source, stop, wait_until, BoxError, ARRIVED, LAT_TABLE, ROWS_PER_TXN, TENANT,
};
use pgfanout_testkit::localpg::LocalPostgres;
use tokio_postgres::Client;

/// The tenant that receives only the small transactions.
const OTHER_TENANT: &str = "00000000-0000-0000-0000-000000000002";
const SMALL: i64 = 100;
const TICK: Duration = Duration::from_millis(5);
const SAMPLE: Duration = Duration::from_millis(20);
const LAT_MAPPING: &str =
    "[[mappings]]\nname = \"lat\"\nsource = \"public.lat\"\ntenant_key = \"tenant\"\ntarget = \"lat\"\n\
     [mappings.columns]\nid = \"id\"\ntenant = \"tenant\"\nwritten_at = \"written_at\"\n";

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    After,
    During,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::After => "after",
            Scenario::During => "during",
        }
    }
}

/// One protocol's run of one scenario.
struct Run {
    protocol: u32,
    /// Small transactions' commit → visible (ms: p50, p99, max) in `same` and `other`.
    same: (f64, f64, f64),
    other: (f64, f64, f64),
    /// The large transaction's commit → visible in `same` (ms).
    large_ms: f64,
    /// Sampled, ms after the large commit returned (`None`: never seen).
    sent_ms: Option<f64>,
    large_logged_ms: Option<f64>,
    /// WAL the walsender had still to read when the large commit returned (MB).
    behind_at_commit_mb: f64,
    /// CPU seconds from the large commit until it was logged.
    walsender_cpu: Option<f64>,
    pgfanout_cpu: Option<f64>,
    slot: SlotStats,
    peak_spool_bytes: u64,
    peak_rss_kb: u64,
    /// The machine's 1-minute load average when the run ended (two cores: above 2, something
    /// waited for a CPU).
    load: String,
}

struct SlotStats {
    spill_txns: i64,
    spill_bytes: i64,
    stream_txns: i64,
    stream_count: i64,
    stream_bytes: i64,
    total_bytes: i64,
}

/// What the sampler saw at one moment.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    sent_lsn: f64,
    logged_seq: f64,
    spool_bytes: u64,
    /// CPU seconds used so far by the slot's walsender and by pgfanout.
    walsender_cpu: f64,
    pgfanout_cpu: f64,
}

fn main() -> Result<(), BoxError> {
    let scenarios: Vec<Scenario> = std::env::var("BENCH_SCENARIOS")
        .unwrap_or_else(|_| "after,during".into())
        .split(',')
        .map(|s| match s.trim() {
            "after" => Ok(Scenario::After),
            "during" => Ok(Scenario::During),
            other => Err(format!(
                "BENCH_SCENARIOS: unknown scenario {other:?} (after, during)"
            )),
        })
        .collect::<Result<_, _>>()?;
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .map(|s| s.parse())
        .transpose()
        .map_err(|e| format!("BENCH_ROUNDS: {e}"))?
        .unwrap_or(1);
    let rows = bench_rows();
    let pace = Duration::from_millis(
        std::env::var("BENCH_LARGE_PACE_MS")
            .ok()
            .map(|s| s.parse())
            .transpose()
            .map_err(|e| format!("BENCH_LARGE_PACE_MS: {e}"))?
            .unwrap_or(0),
    );
    let pgfanout = pgfanout_bin();
    let rt = tokio::runtime::Runtime::new()?;
    // For experiments only; the reported runs use the default 64MB unless they say otherwise.
    let work_mem = std::env::var("BENCH_WORK_MEM")
        .ok()
        .map(|m| format!("logical_decoding_work_mem = '{m}'"));
    let pg = start_source(&work_mem.iter().map(String::as_str).collect::<Vec<_>>())?;
    rt.block_on(async {
        println!(
            "{}; {rows}-row transaction ({} ms between its statements), {SMALL} small ones; commit → visible (ms: p50 / p99 / max); \
             times after the large commit (ms)",
            work_mem
                .as_deref()
                .unwrap_or("logical_decoding_work_mem = '64MB'"),
            pace.as_millis()
        );
        for scenario in scenarios {
            let mut ratios = Vec::new();
            for round in 0..rounds {
                let order = if round % 2 == 0 { [1, 2] } else { [2, 1] };
                let mut runs = Vec::new();
                for protocol in order {
                    let run = run(&pg, &pgfanout, scenario, protocol, round, rows, pace).await?;
                    print_run(scenario, round, &run);
                    runs.push(run);
                }
                runs.sort_by_key(|r| r.protocol);
                ratios.push((
                    runs[0].same.1 / runs[1].same.1,
                    runs[0].other.1 / runs[1].other.1,
                ));
            }
            for (round, (same, other)) in ratios.iter().enumerate() {
                println!(
                    "  {} round {round}: small p99 v1/v2  same {same:.2}  other {other:.2}",
                    scenario.name()
                );
            }
        }
        Ok::<_, BoxError>(())
    })
}

fn print_run(scenario: Scenario, round: u32, r: &Run) {
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    println!(
        "  {:<6} round {round} v{}  small same {:>8.1} / {:>8.1} / {:>8.1}  other {:>8.1} / {:>8.1} / {:>8.1}  large {:>8.0}",
        scenario.name(),
        r.protocol,
        r.same.0,
        r.same.1,
        r.same.2,
        r.other.0,
        r.other.1,
        r.other.2,
        r.large_ms
    );
    let cpu = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    println!(
        "      walsender {:.0} MB behind at commit, sent past it {}  large logged {} (CPU-s meanwhile: walsender {}, pgfanout {})\n      slot: spill {} txns {} B, stream {} txns {} blocks {} B, total {} B | peak spool {} B, peak RSS {} kB | load {}",
        r.behind_at_commit_mb,
        ms(r.sent_ms),
        ms(r.large_logged_ms),
        cpu(r.walsender_cpu),
        cpu(r.pgfanout_cpu),
        r.slot.spill_txns,
        r.slot.spill_bytes,
        r.slot.stream_txns,
        r.slot.stream_count,
        r.slot.stream_bytes,
        r.slot.total_bytes,
        r.peak_spool_bytes,
        r.peak_rss_kb,
        r.load
    );
}

async fn run(
    pg: &LocalPostgres,
    pgfanout: &str,
    scenario: Scenario,
    protocol: u32,
    round: u32,
    rows: u64,
    pace: Duration,
) -> Result<Run, BoxError> {
    let tag = format!("{}_{round}_v{protocol}", scenario.name());
    let (src, same, other) = (
        format!("src_{tag}"),
        format!("same_{tag}"),
        format!("other_{tag}"),
    );
    for db in [&src, &same, &other] {
        pg.create_database(db).await?;
    }
    let source = pg.sql(&src).await?;
    setup_source(&source, std::slice::from_ref(&tag)).await?;
    source
        .batch_execute(&format!(
            "{LAT_TABLE}; ALTER PUBLICATION bench ADD TABLE lat"
        ))
        .await?;

    let work = tempfile::tempdir()?;
    let log_dir = work.path().join("log");
    let admin_port = free_port()?;
    let config = work.path().join("pgfanout.toml");
    std::fs::write(
        &config,
        format!(
            "{}{LAT_MAPPING}[snapshot]\nmode = \"never\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
             [[destinations]]\nname = \"same\"\nkind = \"postgres\"\nurl = \"{}\"\ntenants = [\"{TENANT}\"]\n\
             mappings = [\"bench\", \"lat\"]\n\
             [[destinations]]\nname = \"other\"\nkind = \"postgres\"\nurl = \"{}\"\ntenants = [\"{OTHER_TENANT}\"]\n\
             mappings = [\"lat\"]\n",
            source_and_mappings_toml_with(
                &pg.socket_url(&src),
                &tag,
                &log_dir,
                &format!("protocol = {protocol}\n")
            ),
            pg.socket_url(&same),
            pg.socket_url(&other),
        ),
    )?;
    let mut daemon = spawn(pgfanout, &config)?;
    let pid = daemon.id();
    let same_db = pg.sql(&same).await?;
    let other_db = pg.sql(&other).await?;
    for (db, name) in [(&same_db, "same"), (&other_db, "other")] {
        wait_until(
            &mut daemon,
            &format!("pgfanout to create lat in {name}"),
            || async {
                db.query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'lat'", &[])
                    .await
                    .is_ok_and(|r| r.is_some())
            },
        )
        .await?;
        db.batch_execute(ARRIVED).await?;
    }
    wait_until(&mut daemon, "pgfanout to stream from its slot", || async {
        source
            .query_opt(
                "SELECT 1 FROM pg_stat_replication r JOIN pg_replication_slots s ON r.pid = s.active_pid
                 WHERE s.slot_name = $1",
                &[&tag],
            )
            .await
            .is_ok_and(|r| r.is_some())
    })
    .await?;

    // The sampler: its own connection, stopped after everything is visible.
    let start = Instant::now();
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(
        pg.sql(&src).await?,
        tag.clone(),
        admin_port,
        pid,
        log_dir.join("streaming"),
        start,
        stop_sampling.clone(),
    ));

    let large = pg.sql(&src).await?;
    let small = pg.sql(&src).await?;
    for c in [&large, &small] {
        c.batch_execute("SET synchronous_commit = on").await?;
    }
    eprintln!("{tag}: writing");
    let statements = rows.div_ceil(ROWS_PER_TXN);
    let mut smalls = 0;
    large.batch_execute("BEGIN").await?;
    for k in 0..statements {
        let from = k * ROWS_PER_TXN + 1;
        large
            .batch_execute(&insert_sql(from, ROWS_PER_TXN.min(rows + 1 - from)))
            .await?;
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
        if scenario == Scenario::During {
            // Spread over the large transaction's statements.
            while smalls < (k as i64 + 1) * SMALL / statements as i64 {
                smalls += 1;
                write_small(&small, smalls).await?;
            }
        }
    }
    large
        .execute(
            "INSERT INTO lat VALUES (0, $1::text::uuid, clock_timestamp())",
            &[&TENANT],
        )
        .await?;
    large.batch_execute("COMMIT").await?;
    let committed = start.elapsed();
    // Flushed through the commit record (`synchronous_commit = on`), and perhaps a few records
    // of other sessions after it, never before: the walsender reads only flushed WAL, and has
    // read up to here once it has decoded (under protocol 1 also sent) the whole transaction.
    // (Taken before the commit, a record of another session between the two would pass it.)
    let commit_lsn: f64 = large
        .query_one("SELECT (pg_current_wal_flush_lsn() - '0/0')::float8", &[])
        .await?
        .get(0);
    let mut tick = tokio::time::interval(TICK);
    while smalls < SMALL {
        tick.tick().await;
        smalls += 1;
        write_small(&small, smalls).await?;
    }

    eprintln!("{tag}: waiting for both destinations");
    for (db, name, tenant, n) in [
        (&same_db, "same", TENANT, SMALL + 1),
        (&other_db, "other", OTHER_TENANT, SMALL),
    ] {
        wait_until(
            &mut daemon,
            &format!("{name} to show every lat row"),
            || async {
                db.query_one(
                    "SELECT count(*) FROM lat WHERE tenant = $1::text::uuid",
                    &[&tenant],
                )
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) == n)
            },
        )
        .await?;
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let samples = sampler.await??;
    let peak_rss_kb = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    let large_ms: f64 = same_db
        .query_one(
            "SELECT extract(epoch FROM arrived - written_at)::float8 * 1000 FROM lat WHERE id = 0",
            &[],
        )
        .await?
        .get(0);
    let same_lat = latency(&same_db, 1, SMALL).await?;
    let other_lat = latency(&other_db, 1, SMALL).await?;
    let slot = slot_stats(&source, &tag).await?;
    stop(daemon)?;
    // The walsender notices the gone client a moment after pgfanout exits.
    for _ in 0..3000 {
        let active: Option<bool> = source
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&tag],
            )
            .await?
            .map(|r| r.get(0));
        if active != Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    source
        .execute("SELECT pg_drop_replication_slot($1)", &[&tag])
        .await?;

    if let Ok(path) = std::env::var("BENCH_SAMPLES") {
        // For looking closer: every sample, ms after the large commit.
        let mut out = String::from(
            "ms,sent_lsn_minus_commit,logged_seq,spool_bytes,walsender_cpu_s,pgfanout_cpu_s\n",
        );
        for s in &samples {
            out += &format!(
                "{:.0},{:.0},{},{},{:.2},{:.2}\n",
                s.at.as_secs_f64() * 1000.0 - committed.as_secs_f64() * 1000.0,
                s.sent_lsn - commit_lsn,
                s.logged_seq,
                s.spool_bytes,
                s.walsender_cpu,
                s.pgfanout_cpu
            );
        }
        std::fs::write(format!("{path}.{tag}.csv"), out)?;
    }
    // The large transaction's seqs: after the small ones that committed before it.
    let before = if scenario == Scenario::During {
        2 * SMALL as u64
    } else {
        0
    };
    let large_end = before + rows + 1;
    let after_commit: Vec<&Sample> = samples.iter().filter(|s| s.at >= committed).collect();
    let first = |f: &dyn Fn(&Sample) -> bool| {
        after_commit
            .iter()
            .find(|s| f(s))
            .map(|s| (s.at - committed).as_secs_f64() * 1000.0)
    };
    let large_logged_ms = first(&|s| s.logged_seq >= large_end as f64);
    // CPU seconds each process used from the large commit until its changes were logged.
    let cpu = |f: fn(&Sample) -> f64| {
        let logged = after_commit
            .iter()
            .find(|s| s.logged_seq >= large_end as f64)?;
        Some(f(logged) - f(after_commit.first()?))
    };
    Ok(Run {
        protocol,
        behind_at_commit_mb: after_commit
            .first()
            .map_or(0.0, |s| (commit_lsn - s.sent_lsn).max(0.0) / 1e6),
        walsender_cpu: cpu(|s| s.walsender_cpu),
        pgfanout_cpu: cpu(|s| s.pgfanout_cpu),
        same: same_lat,
        other: other_lat,
        large_ms,
        sent_ms: first(&|s| s.sent_lsn >= commit_lsn),
        large_logged_ms,
        slot,
        peak_spool_bytes: samples.iter().map(|s| s.spool_bytes).max().unwrap_or(0),
        peak_rss_kb,
        load: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split(' ').next().map(str::to_owned))
            .unwrap_or_default(),
    })
}

/// One small transaction: `lat` row `id` for each tenant, stamped just before its commit.
async fn write_small(c: &Client, id: i64) -> Result<(), BoxError> {
    c.execute(
        "INSERT INTO lat VALUES ($1, $2::text::uuid, clock_timestamp()), ($1, $3::text::uuid, clock_timestamp())",
        &[&id, &TENANT, &OTHER_TENANT],
    )
    .await?;
    Ok(())
}

async fn sample(
    c: Client,
    slot: String,
    admin_port: u16,
    pgfanout: u32,
    spool_dir: PathBuf,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Sample>, String> {
    let ticks = clock_ticks();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (sent_lsn, walsender) = c
            .query_opt(
                "SELECT (r.sent_lsn - '0/0')::float8, r.pid FROM pg_stat_replication r
                 JOIN pg_replication_slots s ON r.pid = s.active_pid WHERE s.slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| format!("sampling pg_stat_replication: {e}"))?
            .map_or((0.0, 0), |r| (r.get(0), r.get::<_, i32>(1) as u32));
        let metrics = tokio::task::spawn_blocking(move || scrape_metrics(admin_port))
            .await
            .map_err(|e| format!("scraping the admin endpoint: {e}"))?;
        let logged_seq = metrics
            .as_deref()
            .and_then(|m| metric(m, "pgfanout_changelog_last_seq"))
            .unwrap_or(0.0);
        samples.push(Sample {
            at: start.elapsed(),
            sent_lsn,
            logged_seq,
            spool_bytes: dir_bytes(&spool_dir),
            walsender_cpu: cpu_seconds(walsender, ticks),
            pgfanout_cpu: cpu_seconds(pgfanout, ticks),
        });
    }
    Ok(samples)
}

/// `GET /metrics` on the admin endpoint; `None` while it does not answer.
fn scrape_metrics(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// Bytes in the files of `dir` (0 when it does not exist).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// User plus system CPU seconds process `pid` has used (0 when it is gone).
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / ticks_per_second
}

/// `getconf CLK_TCK`: the unit of `/proc/PID/stat`'s CPU times (100 where it cannot say).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `kB` field of `/proc/PID/status` (`VmHWM:`, `VmRSS:`).
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

async fn slot_stats(c: &Client, slot: &str) -> Result<SlotStats, BoxError> {
    let r = c
        .query_one(
            "SELECT spill_txns, spill_bytes, stream_txns, stream_count, stream_bytes, total_bytes
             FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(SlotStats {
        spill_txns: r.get(0),
        spill_bytes: r.get(1),
        stream_txns: r.get(2),
        stream_count: r.get(3),
        stream_bytes: r.get(4),
        total_bytes: r.get(5),
    })
}

/// A port nothing listens on now, for the admin endpoint.
fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
