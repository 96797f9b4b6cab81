//! Benchmark of the initial snapshot: rows that exist before the slot, copied into a
//! destination by `pgfanout run` (`[snapshot] mode = "initial"`), against piping the same rows
//! through `psql \copy` on the same machine, in one run. Run it with
//! `scripts/bench-snapshot.sh`.
//!
//! A private PostgreSQL server gets database `src` with `BENCH_ROWS` rows in the `bench` table
//! (one tenant, generated with INSERT … SELECT generate_series, then VACUUM ANALYZE) and a
//! publication `bench`. Then, each timed from process start until done:
//!
//! - PostgreSQL reference: `psql -c "\copy (SELECT …) TO STDOUT" | psql -c "\copy bench FROM
//!   STDIN"` into an empty table of the same shape in database `copy_ref`;
//! - pgfanout → PostgreSQL: a fresh slot (`manage = true`), one destination (`tenants = "*"`,
//!   identity mapping) into the empty database `fanout`, until the snapshot is done in the
//!   state database (`pgfanout.snapshots.state = 'done'`: every chunk durable in the change
//!   log) and the destination's watermark has reached its `done_seq` (every chunk applied);
//! - the same pair for ClickHouse (unless `BENCH_CLICKHOUSE=0` or no server is installed):
//!   psql piped into `clickhouse-client --query "INSERT … FORMAT TSV"` into a table made `AS`
//!   the one pgfanout created (same columns, `ReplacingMergeTree`), and pgfanout into a
//!   ClickHouse destination, until the watermark in ClickHouse reaches `done_seq`;
//! - the source's cost: pgbench TPS (`-c 2 -j 2`, 20 s, scale 10, own database) alone, and
//!   again from right after starting a second pgfanout snapshot into PostgreSQL.
//!
//! Each run afterwards checks that its target holds `BENCH_ROWS` rows (untimed), and its
//! database and slot are dropped so that autovacuum of finished targets and WAL held by old
//! slots do not weigh on the next run. Every pgfanout run has its own slot, log, destination
//! and state schema: each starts as a first deployment. The CPU seconds of pgfanout, of the
//! PostgreSQL server (postmaster and backends, the walsender included) and of ClickHouse are
//! printed with each run, to show where the time goes.
//!
//! The source runs with `synchronous_commit = on` (PostgreSQL's default; see `main`).
//! `BENCH_PARALLELISM` and `BENCH_CHUNK_ROWS` set `[snapshot] parallelism` and `chunk_rows`
//! (default: pgfanout's defaults); `BENCH_LOG` sets pgfanout's RUST_LOG (default warn);
//! `BENCH_PG_SETTINGS` adds `;`-separated postgresql.conf lines, for experiments (e.g.
//! `synchronous_commit = off`, the testkit's setting).

mod bench_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench_common::{
    check_running, find_pg_bin, insert_sql, pgfanout_bin, spawn, start_source, stop, BoxError,
    MAPPINGS, TABLES,
};
use pgfanout_testkit::localch::{LocalChError, LocalClickHouse};
use pgfanout_testkit::localpg::LocalPostgres;
use tokio::runtime::Runtime;
use tokio_postgres::Client;

/// About 2 GB of heap.
const ROWS: u64 = 10_000_000;
/// Rows per INSERT … SELECT while generating the source table.
const GENERATE_ROWS: u64 = 1_000_000;
const SOURCE_DB: &str = "src";
/// How often progress is looked for while a snapshot runs.
const POLL: Duration = Duration::from_millis(50);
/// Longest a snapshot may take before the run fails.
const TIMEOUT: Duration = Duration::from_secs(3600);
const PGBENCH_SECONDS: u32 = 20;
/// The columns of `bench`, in table order.
const COLUMNS: &str = "id, tenant, email, name, score, balance, active, created_at, note, tags";

struct Knobs {
    rows: u64,
    parallelism: Option<u64>,
    chunk_rows: Option<u64>,
}

/// One timed copy.
#[derive(Default)]
struct Run {
    took: Duration,
    /// pgfanout: when the snapshot was done in the state database (all in the change log).
    in_log: Option<Duration>,
    /// CPU seconds: the copying client(s), the PostgreSQL server, ClickHouse.
    cpu_client: f64,
    cpu_postgres: f64,
    cpu_clickhouse: f64,
    /// The machine's 1-minute load average when the run started: other work skews the times.
    load: f64,
}

struct PgbenchResult {
    idle: f64,
    during: f64,
    /// The load average before each.
    load: (f64, f64),
    /// When the snapshot that ran alongside was applied, if before pgbench ended.
    snapshot_applied: Option<Duration>,
}

fn main() -> Result<(), BoxError> {
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let knobs = Knobs {
        rows: env("BENCH_ROWS").unwrap_or(ROWS),
        parallelism: env("BENCH_PARALLELISM"),
        chunk_rows: env("BENCH_CHUNK_ROWS"),
    };
    let with_clickhouse = std::env::var("BENCH_CLICKHOUSE").map_or(true, |v| v != "0");
    let pgfanout = pgfanout_bin();
    let psql = find_pg_bin("psql").ok_or("psql not found (apt-get install postgresql-client)")?;
    let pgbench = find_pg_bin("pgbench").ok_or("pgbench not found (apt-get install postgresql)")?;
    let rt = Runtime::new()?;
    // PostgreSQL's default, not the testkit's `off`: a snapshot's watermarks are commits, and
    // with `off` each waits for the WAL writer (up to wal_writer_delay, 200 ms) before the
    // walsender may send it, which more than doubled the snapshot's time here.
    let mut settings = vec!["synchronous_commit = on".to_owned()];
    settings.extend(
        std::env::var("BENCH_PG_SETTINGS")
            .unwrap_or_default()
            .split(';')
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned),
    );
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let pg = start_source(&settings)?;
    let source = rt.block_on(pg.sql("postgres"))?;
    let pg_version: String = rt
        .block_on(source.query_one("SHOW server_version", &[]))?
        .get(0);
    let postmaster = postmaster_pid(&rt, &source)?;

    rt.block_on(pg.create_database(SOURCE_DB))?;
    let source = rt.block_on(pg.sql(SOURCE_DB))?;
    let heap_bytes = rt.block_on(generate(&source, knobs.rows))?;

    let ctx = Ctx {
        rt: &rt,
        pg: &pg,
        source: &source,
        pgfanout: &pgfanout,
        psql: &psql,
        postmaster,
        knobs: &knobs,
    };
    let pg_copy = ctx.copy_into_postgres()?;
    let pg_snapshot = ctx.snapshot_into_postgres()?;
    let pgbench = ctx.pgbench_cost(&pgbench)?;
    let clickhouse = if with_clickhouse {
        match LocalClickHouse::start() {
            Ok(ch) => {
                let version = ch.query("SELECT version()")?.trim().to_owned();
                let snapshot = ctx.snapshot_into_clickhouse(&ch)?;
                let copy = ctx.copy_into_clickhouse(&ch)?;
                Some((version, copy, snapshot))
            }
            Err(LocalChError::NoBinary) => {
                eprintln!("no ClickHouse server installed: skipping ClickHouse");
                None
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };

    let rows = knobs.rows;
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    let setting = |v: Option<u64>| v.map_or_else(|| "default".to_owned(), |v| v.to_string());
    println!(
        "\nInitial snapshot of {rows} rows ({:.2} GB heap), parallelism {}, chunk_rows {}; PostgreSQL {pg_version}{}:",
        heap_bytes as f64 / 1e9,
        setting(knobs.parallelism),
        setting(knobs.chunk_rows),
        clickhouse
            .as_ref()
            .map(|(v, _, _)| format!(", ClickHouse {v}"))
            .unwrap_or_default()
    );
    println!(
        "  {:<37} {:>8} {:>10} {:>6} {:>8}  {:>24}  {:>5}",
        "", "seconds", "rows/s", "ratio", "in log", "CPU s: client / PG / CH", "load"
    );
    let line = |what: &str, r: &Run, reference: Option<&Run>| {
        println!(
            "  {what:<37} {:>8.2} {:>10.0} {:>6} {:>8}  {:>24}  {:>5.1}",
            r.took.as_secs_f64(),
            rate(r.took),
            reference.map_or(String::new(), |c| format!(
                "{:.2}",
                rate(r.took) / rate(c.took)
            )),
            r.in_log
                .map_or(String::new(), |d| format!("{:.2} s", d.as_secs_f64())),
            format!(
                "{:.1} / {:.1} / {}",
                r.cpu_client,
                r.cpu_postgres,
                if r.cpu_clickhouse > 0.0 {
                    format!("{:.1}", r.cpu_clickhouse)
                } else {
                    "-".into()
                }
            ),
            r.load
        );
    };
    line("PostgreSQL: psql \\copy | psql \\copy", &pg_copy, None);
    line(
        "PostgreSQL: pgfanout snapshot",
        &pg_snapshot,
        Some(&pg_copy),
    );
    if let Some((_, copy, snapshot)) = &clickhouse {
        line("ClickHouse: psql \\copy | ch-client", copy, None);
        line("ClickHouse: pgfanout snapshot", snapshot, Some(copy));
    }
    println!(
        "  pgbench TPS (scale 10, -c 2 -j 2, {PGBENCH_SECONDS} s): idle {:.0} (load {:.1}), during the snapshot {:.0} (load {:.1}), ratio {:.2}{}",
        pgbench.idle,
        pgbench.load.0,
        pgbench.during,
        pgbench.load.1,
        pgbench.during / pgbench.idle,
        match pgbench.snapshot_applied {
            Some(d) => format!(
                " (the snapshot was applied after {:.1} s, before pgbench ended)",
                d.as_secs_f64()
            ),
            None => " (the snapshot ran the whole time)".into(),
        }
    );
    println!("  (ratio: pgfanout rows/s ÷ the pipe's; in log: when pgfanout.snapshots said done, every chunk in the change log; client CPU: psql and clickhouse-client, or pgfanout; load: the 1-minute load average at the start, on {} cores)", std::thread::available_parallelism().map_or(0, |n| n.get()));
    Ok(())
}

/// The source table's rows (not timed): `rows` rows of `bench`, VACUUM ANALYZE (hint bits and
/// visibility map set, so neither timed reader writes), a checkpoint. Returns the heap's size.
async fn generate(source: &Client, rows: u64) -> Result<i64, BoxError> {
    source
        .batch_execute(&format!(
            "{TABLES} CREATE PUBLICATION bench FOR TABLE bench, marker;"
        ))
        .await?;
    let started = Instant::now();
    let mut done = 0;
    while done < rows {
        let n = GENERATE_ROWS.min(rows - done);
        source.batch_execute(&insert_sql(done + 1, n)).await?;
        done += n;
    }
    // Separately: VACUUM cannot run in the implicit transaction of a multi-statement query.
    source.batch_execute("VACUUM ANALYZE bench").await?;
    source.batch_execute("CHECKPOINT").await?;
    let heap: i64 = source
        .query_one("SELECT pg_relation_size('bench')", &[])
        .await?
        .get(0);
    eprintln!(
        "source: {rows} rows, {:.2} GB heap, generated in {:.1} s",
        heap as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    Ok(heap)
}

struct Ctx<'a> {
    rt: &'a Runtime,
    pg: &'a LocalPostgres,
    source: &'a Client,
    pgfanout: &'a str,
    psql: &'a str,
    postmaster: u32,
    knobs: &'a Knobs,
}

impl Ctx<'_> {
    /// `psql … \copy (SELECT …) TO STDOUT` for the source, its stdout piped into `sink`.
    fn pipe(&self, select: &str, mut sink: Command) -> Result<Duration, BoxError> {
        let start = Instant::now();
        let mut from = Command::new(self.psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.pg.conninfo_string(SOURCE_DB))
            .arg("-c")
            .arg(format!("\\copy ({select}) TO STDOUT"))
            .stdout(Stdio::piped())
            .spawn()?;
        let mut into = sink.stdin(from.stdout.take().ok_or("no stdout")?).spawn()?;
        let (a, b) = (from.wait()?, into.wait()?);
        let took = start.elapsed();
        if !a.success() || !b.success() {
            return Err(format!("the copy pipe failed: psql {a}, sink {b}").into());
        }
        Ok(took)
    }

    fn copy_into_postgres(&self) -> Result<Run, BoxError> {
        let db = "copy_ref";
        self.rt.block_on(self.pg.create_database(db))?;
        let target = self.rt.block_on(self.pg.sql(db))?;
        self.rt.block_on(target.batch_execute(TABLES))?;
        let mut sink = Command::new(self.psql);
        sink.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.pg.conninfo_string(db))
            .args(["-c", &format!("\\copy bench ({COLUMNS}) FROM STDIN")]);
        let cpu = Cpu::now(self, None);
        let took = self.pipe(&format!("SELECT {COLUMNS} FROM bench"), sink)?;
        let mut run = cpu.since(self, None);
        run.took = took;
        eprintln!("PostgreSQL: psql \\copy pipe {:.2} s", took.as_secs_f64());
        let n: i64 = self
            .rt
            .block_on(target.query_one("SELECT count(*) FROM bench", &[]))?
            .get(0);
        self.expect_rows("copy_ref.bench", n as u64)?;
        drop(target);
        self.drop_database(db)?;
        Ok(run)
    }

    /// The configuration of a first deployment with slot `name`, state schema `pgfanout_name`
    /// (`pgfanout` for `pg`) and `destination`.
    fn config(&self, dir: &Path, name: &str, destination: &str) -> Result<PathBuf, BoxError> {
        let mut snapshot = "mode = \"initial\"\n".to_owned();
        if let Some(p) = self.knobs.parallelism {
            snapshot += &format!("parallelism = {p}\n");
        }
        if let Some(c) = self.knobs.chunk_rows {
            snapshot += &format!("chunk_rows = {c}\n");
        }
        let path = dir.join("pgfanout.toml");
        std::fs::write(
            &path,
            format!(
                "[source]\nurl = \"{}\"\npublication = \"bench\"\nmanage = true\nslot = \"pgf_{name}\"\n\
                 [log]\ndir = \"{}\"\n[state]\nschema = \"{}\"\n[snapshot]\n{snapshot}{MAPPINGS}{destination}",
                self.pg.socket_url(SOURCE_DB),
                dir.join("log").display(),
                state_schema(name),
            ),
        )?;
        Ok(path)
    }

    /// A PostgreSQL destination `name` into database `db`, every tenant, both mappings.
    fn pg_destination(&self, name: &str, db: &str) -> String {
        format!(
            "[[destinations]]\nname = \"{name}\"\nkind = \"postgres\"\nurl = \"{}\"\ntenants = \"*\"\n\
             mappings = [\"bench\", \"marker\"]\n",
            self.pg.socket_url(db)
        )
    }

    fn snapshot_into_postgres(&self) -> Result<Run, BoxError> {
        let (name, db) = ("pg", "fanout");
        self.rt.block_on(self.pg.create_database(db))?;
        let target = self.rt.block_on(self.pg.sql(db))?;
        let work = tempfile::tempdir()?;
        let config = self.config(work.path(), name, &self.pg_destination(name, db))?;
        let cpu = Cpu::now(self, None);
        let start = Instant::now();
        let mut daemon = spawn(self.pgfanout, &config)?;
        let mut progress = Progress::new(name);
        while progress.applied.is_none() {
            self.wait_a_moment(&mut daemon, start)?;
            progress.poll(self, start, || pg_watermark(self.rt, &target, name))?;
        }
        let mut run = cpu.since(self, None);
        run.took = progress.applied.unwrap_or_default();
        run.in_log = progress.in_log;
        run.cpu_client = process_cpu(daemon.id());
        stop(daemon)?;
        eprintln!(
            "PostgreSQL: pgfanout snapshot in the log after {:.2} s, applied after {:.2} s",
            run.in_log.unwrap_or_default().as_secs_f64(),
            run.took.as_secs_f64()
        );
        let n: i64 = self
            .rt
            .block_on(target.query_one("SELECT count(*) FROM bench", &[]))?
            .get(0);
        self.expect_rows("fanout.bench", n as u64)?;
        drop(target);
        self.drop_database(db)?;
        self.drop_slot(name)?;
        Ok(run)
    }

    /// pgbench TPS alone, then from right after a second pgfanout snapshot into PostgreSQL
    /// starts; each on freshly initialised tables.
    fn pgbench_cost(&self, pgbench: &str) -> Result<PgbenchResult, BoxError> {
        let db = "pgbench";
        self.rt.block_on(self.pg.create_database(db))?;
        let command = |args: &[&str]| {
            let mut c = Command::new(pgbench);
            c.arg("-h")
                .arg(self.pg.socket_dir())
                .args(["-p", &self.pg.port().to_string(), "-U", "postgres"])
                .args(args)
                .arg(db)
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            c
        };
        let init = || -> Result<(), BoxError> {
            let out = command(&["-i", "-s", "10", "-q"]).output()?;
            if !out.status.success() {
                return Err(format!("pgbench -i failed: {}", out.status).into());
            }
            self.rt.block_on(self.source.batch_execute("CHECKPOINT"))?;
            Ok(())
        };
        let secs = PGBENCH_SECONDS.to_string();
        let run_args = ["-T", secs.as_str(), "-c", "2", "-j", "2"];

        init()?;
        let idle_load = load_average();
        let idle = tps(&command(&run_args).output()?)?;
        eprintln!("pgbench: {idle:.0} TPS idle");

        init()?;
        let (name, target_db) = ("load", "fanout_load");
        self.rt.block_on(self.pg.create_database(target_db))?;
        let target = self.rt.block_on(self.pg.sql(target_db))?;
        let work = tempfile::tempdir()?;
        let config = self.config(work.path(), name, &self.pg_destination(name, target_db))?;
        let during_load = load_average();
        let start = Instant::now();
        let mut daemon = spawn(self.pgfanout, &config)?;
        let mut bench = command(&run_args).spawn()?;
        let mut progress = Progress::new(name);
        // pgbench writes its few lines at the end: the pipe cannot fill up before it exits.
        while bench.try_wait()?.is_none() {
            self.wait_a_moment(&mut daemon, start)?;
            if progress.applied.is_none() {
                progress.poll(self, start, || pg_watermark(self.rt, &target, name))?;
            }
        }
        let during = tps(&bench.wait_with_output()?)?;
        stop(daemon)?;
        eprintln!(
            "pgbench: {during:.0} TPS during the snapshot ({})",
            match progress.applied {
                Some(d) => format!("applied after {:.1} s", d.as_secs_f64()),
                None => "still running at the end".into(),
            }
        );
        drop(target);
        self.drop_database(target_db)?;
        self.drop_slot(name)?;
        self.drop_database(db)?;
        Ok(PgbenchResult {
            idle,
            during,
            load: (idle_load, during_load),
            snapshot_applied: progress.applied,
        })
    }

    fn snapshot_into_clickhouse(&self, ch: &LocalClickHouse) -> Result<Run, BoxError> {
        let name = "ch";
        let database = "fanout";
        let work = tempfile::tempdir()?;
        let destination = format!(
            "[[destinations]]\nname = \"{name}\"\nkind = \"clickhouse\"\nurl = \"{}\"\n\
             database = \"{database}\"\ntenants = \"*\"\nmappings = [\"bench\", \"marker\"]\n\
             create_tables = true\n",
            ch.url()
        );
        let config = self.config(work.path(), name, &destination)?;
        let cpu = Cpu::now(self, Some(ch));
        let start = Instant::now();
        let mut daemon = spawn(self.pgfanout, &config)?;
        let mut progress = Progress::new(name);
        let watermark = format!(
            "SELECT max(seq) FROM {database}._pgfanout_watermarks WHERE destination = '{name}'"
        );
        while progress.applied.is_none() {
            self.wait_a_moment(&mut daemon, start)?;
            // Before pgfanout has created the table, the query fails: nothing applied yet.
            progress.poll(self, start, || {
                Ok(ch
                    .query(&watermark)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()))
            })?;
        }
        let mut run = cpu.since(self, Some(ch));
        run.took = progress.applied.unwrap_or_default();
        run.in_log = progress.in_log;
        run.cpu_client = process_cpu(daemon.id());
        stop(daemon)?;
        eprintln!(
            "ClickHouse: pgfanout snapshot in the log after {:.2} s, applied after {:.2} s",
            run.in_log.unwrap_or_default().as_secs_f64(),
            run.took.as_secs_f64()
        );
        // FINAL in a subquery and the deleted filter outside it, as bench_clickhouse does.
        let n = ch.query(&format!(
            "SELECT count() FROM (SELECT id, _is_deleted FROM {database}.bench FINAL) WHERE _is_deleted = 0"
        ))?;
        self.expect_rows("ClickHouse fanout.bench", n.trim().parse()?)?;
        self.drop_slot(name)?;
        Ok(run)
    }

    /// Into `ref.bench`, made `AS` the table pgfanout created (so call it after
    /// [`Ctx::snapshot_into_clickhouse`]): same columns and engine. The SELECT writes each value
    /// as ClickHouse's TSV reads it.
    fn copy_into_clickhouse(&self, ch: &LocalClickHouse) -> Result<Run, BoxError> {
        ch.query("CREATE DATABASE ref")?;
        ch.query("CREATE TABLE ref.bench AS fanout.bench")?;
        // pgfanout's table is dropped first: its merges must not run during the timing.
        ch.query("DROP TABLE fanout.bench")?;
        let types: Vec<(String, String)> = ch
            .query("DESCRIBE TABLE ref.bench")?
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((f.next()?.to_owned(), f.next()?.to_owned()))
            })
            .collect();
        let mut names = Vec::new();
        let mut select = Vec::new();
        for (name, ty) in &types {
            let expr = match name.as_str() {
                // Text ClickHouse reads: seconds for DateTime, microseconds for DateTime64.
                "created_at" if ty.contains("DateTime64") => {
                    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')".into()
                }
                "created_at" => {
                    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')".into()
                }
                "active" => "active::int".into(),
                "tags" => "'[' || array_to_string(array(SELECT quote_literal(t) FROM unnest(tags) t), ',') || ']'".into(),
                // The version and deleted columns, as pgfanout writes them.
                "_seq" => "id".into(),
                "_is_deleted" => "0".into(),
                other if COLUMNS.split(", ").any(|c| c == other) => other.to_owned(),
                other => return Err(format!("unexpected column {other} {ty}").into()),
            };
            names.push(name.clone());
            select.push(expr);
        }
        let (client, prefix) = clickhouse_client().ok_or("clickhouse-client not found")?;
        let mut sink = Command::new(client);
        sink.args(prefix)
            .args(["--port", &ch.tcp_port().to_string(), "--query"])
            .arg(format!(
                "INSERT INTO ref.bench ({}) FORMAT TSV",
                names.join(", ")
            ));
        let cpu = Cpu::now(self, Some(ch));
        let took = self.pipe(&format!("SELECT {} FROM bench", select.join(", ")), sink)?;
        let mut run = cpu.since(self, Some(ch));
        run.took = took;
        eprintln!(
            "ClickHouse: psql \\copy | clickhouse-client {:.2} s",
            took.as_secs_f64()
        );
        let n = ch.query("SELECT count() FROM ref.bench")?;
        self.expect_rows("ClickHouse ref.bench", n.trim().parse()?)?;
        Ok(run)
    }

    /// Sleeps [`POLL`]; fails when `daemon` exited or the snapshot takes too long.
    fn wait_a_moment(&self, daemon: &mut Child, start: Instant) -> Result<(), BoxError> {
        check_running(daemon, "the snapshot was applied")?;
        if start.elapsed() > TIMEOUT {
            return Err("the snapshot took longer than an hour".into());
        }
        std::thread::sleep(POLL);
        Ok(())
    }

    fn expect_rows(&self, table: &str, n: u64) -> Result<(), BoxError> {
        if n != self.knobs.rows {
            return Err(format!("{table} holds {n} rows, not {}", self.knobs.rows).into());
        }
        Ok(())
    }

    fn drop_database(&self, db: &str) -> Result<(), BoxError> {
        self.rt.block_on(
            self.source
                .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")),
        )?;
        Ok(())
    }

    /// Drops pgfanout's slot `pgf_name` once its walsender is gone (it holds WAL otherwise).
    fn drop_slot(&self, name: &str) -> Result<(), BoxError> {
        let slot = format!("pgf_{name}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.rt.block_on(
                self.source
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot]),
            ) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// `pgfanout` for the timed PostgreSQL run (the default), `pgfanout_NAME` for the others.
fn state_schema(name: &str) -> String {
    if name == "pg" {
        "pgfanout".into()
    } else {
        format!("pgfanout_{name}")
    }
}

/// Where one pgfanout run's snapshot is.
struct Progress {
    schema: String,
    done_seq: Option<u64>,
    in_log: Option<Duration>,
    applied: Option<Duration>,
}

impl Progress {
    fn new(name: &str) -> Progress {
        Progress {
            schema: state_schema(name),
            done_seq: None,
            in_log: None,
            applied: None,
        }
    }

    /// Looks once: for the snapshot's end in the state database, then for a watermark
    /// (`watermark()`: `None` before there is one) at or above its `done_seq`.
    fn poll(
        &mut self,
        ctx: &Ctx,
        start: Instant,
        watermark: impl FnOnce() -> Result<Option<u64>, BoxError>,
    ) -> Result<(), BoxError> {
        if self.done_seq.is_none() {
            // Before pgfanout has made its state schema, the query fails: not done yet.
            let row = ctx.rt.block_on(ctx.source.query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE state IN ('pending', 'running')),
                            count(*) FILTER (WHERE state NOT IN ('pending', 'running', 'done')),
                            count(*), max(done_seq)
                     FROM {}.snapshots",
                    self.schema
                ),
                &[],
            ));
            if let Ok(r) = row {
                let (open, bad, all) = (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2));
                if bad > 0 {
                    return Err(format!("a snapshot in {} failed", self.schema).into());
                }
                if all > 0 && open == 0 {
                    self.in_log = Some(start.elapsed());
                    self.done_seq = r.get::<_, Option<i64>>(3).map(|s| s as u64);
                }
            }
        }
        if let Some(done) = self.done_seq {
            if watermark()?.is_some_and(|w| w >= done) {
                self.applied = Some(start.elapsed());
            }
        }
        Ok(())
    }
}

/// The PostgreSQL destination's watermark; `None` before its table exists.
fn pg_watermark(rt: &Runtime, target: &Client, name: &str) -> Result<Option<u64>, BoxError> {
    let row = rt.block_on(target.query_opt(
        "SELECT seq FROM public._pgfanout_watermarks WHERE destination = $1",
        &[&name],
    ));
    Ok(row.ok().flatten().map(|r| r.get::<_, i64>(0) as u64))
}

/// `tps = …` of pgbench's report.
fn tps(out: &std::process::Output) -> Result<f64, BoxError> {
    if !out.status.success() {
        return Err(format!("pgbench failed: {}", out.status).into());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| "no tps in pgbench's output".into())
}

/// `clickhouse-client`, or the single `clickhouse` binary with `client`.
fn clickhouse_client() -> Option<(String, Vec<&'static str>)> {
    let in_path = |name: &str| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
            .map(|p| p.display().to_string())
    };
    in_path("clickhouse-client")
        .map(|c| (c, vec![]))
        .or_else(|| in_path("clickhouse").map(|c| (c, vec!["client"])))
}

/// The postmaster: the parent of this connection's backend.
fn postmaster_pid(rt: &Runtime, client: &Client) -> Result<u32, BoxError> {
    let backend: i32 = rt
        .block_on(client.query_one("SELECT pg_backend_pid()", &[]))?
        .get(0);
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat"))?;
    Ok(stat_fields(&stat)
        .get(1)
        .and_then(|p| p.parse().ok())
        .ok_or("cannot read the postmaster's pid")?)
}

/// The fields of /proc/PID/stat after the command name: state, ppid, …
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// CPU seconds of `pid` and of the children it has waited for (utime, stime, cutime, cstime;
/// the kernel's 100 ticks a second).
fn process_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            stat_fields(&s)[11..15]
                .iter()
                .filter_map(|f| f.parse::<u64>().ok())
                .sum::<u64>() as f64
                / 100.0
        })
        .unwrap_or(0.0)
}

/// CPU seconds of `root` and of its children, live and exited (the postmaster waits for its
/// backends, so theirs count once they are gone too).
fn tree_cpu(root: u32) -> f64 {
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| stat_fields(&s).get(1) == Some(&root.to_string().as_str()))
        })
        .map(process_cpu)
        .sum();
    process_cpu(root) + children
}

/// CPU counters at the start of a run.
struct Cpu {
    postgres: f64,
    clickhouse: f64,
    /// This process's waited-for children: the pipe's psql and clickhouse-client.
    children: f64,
    load: f64,
}

impl Cpu {
    fn now(ctx: &Ctx, ch: Option<&LocalClickHouse>) -> Cpu {
        Cpu {
            postgres: tree_cpu(ctx.postmaster),
            clickhouse: ch.and_then(|c| c.pid()).map_or(0.0, process_cpu),
            children: children_cpu(),
            load: load_average(),
        }
    }

    fn since(&self, ctx: &Ctx, ch: Option<&LocalClickHouse>) -> Run {
        let now = Cpu::now(ctx, ch);
        Run {
            cpu_client: now.children - self.children,
            cpu_postgres: now.postgres - self.postgres,
            cpu_clickhouse: now.clickhouse - self.clickhouse,
            load: self.load,
            ..Run::default()
        }
    }
}

/// The machine's 1-minute load average.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// CPU seconds of this process's children it has waited for.
fn children_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .map(|s| {
            stat_fields(&s)[13..15]
                .iter()
                .filter_map(|f| f.parse::<u64>().ok())
                .sum::<u64>() as f64
                / 100.0
        })
        .unwrap_or(0.0)
}
