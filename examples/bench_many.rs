//! 1,000 tenant databases: `pgfanout run` with one PostgreSQL destination per tenant (one
//! database each on one private server) against the same changes into ONE destination holding
//! every tenant, in one run. Run it with `scripts/bench-many.sh`.
//!
//! Both runs stream live: pgfanout runs and has settled (every destination connected once,
//! created its tables and applied marker 1 of its tenant) before the workload is written, and
//! each run is timed from the first write of the workload until marker 2 of every tenant is
//! visible in its target — a destination applies in commit order, so its marker means all its
//! tenant's changes before it are applied. The workload: `BENCH_ROWS` inserts whose tenants
//! follow a Zipf law (s = 1) over the `BENCH_DESTINATIONS` tenants, in transactions of 1,000.
//!
//! Measured: (a) throughput of each run and their ratio; (b) peak RSS (`VmHWM`) of each
//! pgfanout; (c) once every destination connection closed after `idle_timeout`, commit →
//! visible of one insert for the coldest tenant (its destination connects again first),
//! against the same insert with its connection still open and the time a bare connection to
//! that database takes.

mod bench_common;

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_common::{check_running, pgfanout_bin, spawn, stop, BoxError, MARKER_TIMEOUT};
use pgfanout_testkit::localpg::{LocalPostgres, Options};
use tokio_postgres::Client;

const ROWS: u64 = 200_000;
const DESTINATIONS: usize = 1000;
const MAX_CONNECTIONS: usize = 50;
const IDLE_TIMEOUT: &str = "5s";
const ROWS_PER_TXN: usize = 1000;
/// Connections polling the tenant databases for their markers.
const WATCHERS: usize = 16;
/// Cold-tenant latency samples.
const COLD_SAMPLES: usize = 5;
/// Set on pgfanout's destination connections (counted in `pg_stat_activity`).
const APP: &str = "pgfanout_bench_many";

const SOURCE_TABLES: &str = "
    CREATE TABLE items (tenant text NOT NULL, id bigint NOT NULL, email text, score int,
                        note text, created_at timestamptz NOT NULL DEFAULT now(),
                        PRIMARY KEY (tenant, id));
    CREATE TABLE marker (tenant text NOT NULL, id int NOT NULL, PRIMARY KEY (tenant, id));
    CREATE PUBLICATION bench FOR TABLE items, marker;";

const MAPPINGS: &str = "
[[mappings]]
name = \"items\"
source = \"public.items\"
tenant_key = \"tenant\"
target = \"items\"
[mappings.columns]
tenant = \"tenant\"
id = \"id\"
email = \"email\"
score = \"score\"
note = \"note\"
created_at = \"created_at\"
[[mappings]]
name = \"marker\"
source = \"public.marker\"
tenant_key = \"tenant\"
target = \"marker\"
[mappings.columns]
tenant = \"tenant\"
id = \"id\"
";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn tenant(i: usize) -> String {
    format!("t{i:04}")
}

struct Settings {
    rows: u64,
    destinations: usize,
    max_connections: usize,
    idle_timeout: String,
    flush_interval: String,
}

fn main() -> Result<(), BoxError> {
    let s = Settings {
        rows: env_or("BENCH_ROWS", ROWS),
        destinations: env_or("BENCH_DESTINATIONS", DESTINATIONS),
        max_connections: env_or("BENCH_MAX_CONNECTIONS", MAX_CONNECTIONS),
        idle_timeout: std::env::var("BENCH_IDLE_TIMEOUT").unwrap_or_else(|_| IDLE_TIMEOUT.into()),
        flush_interval: std::env::var("BENCH_FLUSH_INTERVAL").unwrap_or_else(|_| "0s".into()),
    };
    let pgfanout = pgfanout_bin();
    let rt = tokio::runtime::Runtime::new()?;
    let pg = LocalPostgres::start(&Options {
        conf: vec![
            "max_wal_size = '8GB'".into(),
            "max_replication_slots = 10".into(),
            "max_wal_senders = 10".into(),
            format!("max_connections = {}", s.max_connections + WATCHERS + 100),
        ],
        ..Default::default()
    })?;
    rt.block_on(bench(&pg, &pgfanout, &s))
}

async fn bench(pg: &LocalPostgres, pgfanout: &str, s: &Settings) -> Result<(), BoxError> {
    let tenants: Vec<String> = (0..s.destinations).map(tenant).collect();
    let plan = zipf_tenants(s.rows, s.destinations);

    // Tenant databases, copied from one template (a plain copy: FILE_COPY).
    let t0 = Instant::now();
    let admin = pg.sql("postgres").await?;
    admin.batch_execute("CREATE DATABASE tmpl").await?;
    let dbs: Vec<String> = (0..s.destinations)
        .map(|i| format!("tenant_{i:04}"))
        .collect();
    for db in &dbs {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {db} TEMPLATE tmpl STRATEGY FILE_COPY"
            ))
            .await?;
    }
    eprintln!(
        "created {} tenant databases in {:.1}s",
        dbs.len(),
        t0.elapsed().as_secs_f64()
    );

    // (a) ONE destination holding every tenant.
    pg.create_database("one").await?;
    let one = run_one(pg, pgfanout, s, &tenants, &plan).await?;
    eprintln!(
        "one destination: {:.2}s, peak RSS {} MB",
        one.took.as_secs_f64(),
        one.peak_rss_kb / 1024
    );
    // (b, c) one destination per tenant.
    let many = run_many(pg, pgfanout, s, &tenants, &dbs, &plan).await?;

    let rate = |d: Duration| s.rows as f64 / d.as_secs_f64();
    println!(
        "{} row changes, Zipf s=1 over {} tenants; [fanout] max_connections = {}, idle_timeout = {}; flush_interval = {}:",
        s.rows, s.destinations, s.max_connections, s.idle_timeout, s.flush_interval
    );
    println!(
        "  one destination (all tenants)   {:>9.0} rows/s ({:.2}s)  peak RSS {:>4} MB",
        rate(one.took),
        one.took.as_secs_f64(),
        one.peak_rss_kb / 1024
    );
    println!(
        "  {:>4} destinations (one each)   {:>9.0} rows/s ({:.2}s)  peak RSS {:>4} MB  ratio {:.2}",
        s.destinations,
        rate(many.took),
        many.took.as_secs_f64(),
        many.peak_rss_kb / 1024,
        rate(many.took) / rate(one.took)
    );
    println!(
        "  start-up: every destination connected and applied its first change in {:.2}s; most destination connections seen {}",
        many.settled.as_secs_f64(),
        many.most_connections
    );
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    println!(
        "  cold tenant commit → visible: median {:.1} ms, max {:.1} ms (connection open: median {:.1} ms; a bare connect + query: median {:.1} ms)",
        ms(&median(&many.cold)),
        ms(many.cold.iter().max().unwrap_or(&Duration::ZERO)),
        ms(&median(&many.warm)),
        ms(&median(&many.connect)),
    );
    Ok(())
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The tenant (index) of each of `rows` inserts: Zipf with s = 1 over `n` tenants, tenant 0
/// the most frequent; a fixed seed, so both runs write the same changes.
fn zipf_tenants(rows: u64, n: usize) -> Vec<usize> {
    let mut cdf = Vec::with_capacity(n);
    let mut sum = 0.0;
    for k in 1..=n {
        sum += 1.0 / k as f64;
        cdf.push(sum);
    }
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..rows)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let u = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            cdf.partition_point(|&c| c < u * sum).min(n - 1)
        })
        .collect()
}

/// A fresh source database with its slot, and the `[source]`…`[fanout]` part of the
/// configuration.
async fn source(
    pg: &LocalPostgres,
    name: &str,
    work: &Path,
    s: &Settings,
) -> Result<(Client, String), BoxError> {
    pg.create_database(name).await?;
    let client = pg.sql(name).await?;
    client.batch_execute(SOURCE_TABLES).await?;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&format!("pgf_{name}")],
        )
        .await?;
    let toml = format!(
        "[source]\nurl = \"{}\"\npublication = \"bench\"\nmanage = false\nslot = \"pgf_{name}\"\n\
         [log]\ndir = \"{}\"\n[snapshot]\nmode = \"never\"\nauto_resync = false\n\
         [admin]\nlisten = \"off\"\n\
         [fanout]\nmax_connections = {}\nidle_timeout = \"{}\"\n{MAPPINGS}",
        pg.socket_url(name),
        work.join("log").display(),
        s.max_connections,
        s.idle_timeout
    );
    Ok((client, toml))
}

async fn markers(source: &Client, tenants: &[String], id: i32) -> Result<(), BoxError> {
    source
        .execute(
            "INSERT INTO marker SELECT t, $2 FROM unnest($1::text[]) t",
            &[&tenants, &id],
        )
        .await?;
    Ok(())
}

/// The workload, in transactions of [`ROWS_PER_TXN`], then marker 2 of every tenant.
async fn write_workload(
    source: &Client,
    tenants: &[String],
    plan: &[usize],
) -> Result<(), BoxError> {
    for (c, chunk) in plan.chunks(ROWS_PER_TXN).enumerate() {
        let base = (c * ROWS_PER_TXN) as i64;
        let t: Vec<&str> = chunk.iter().map(|&i| tenants[i].as_str()).collect();
        let ids: Vec<i64> = (base..base + chunk.len() as i64).collect();
        source
            .execute(
                "INSERT INTO items (tenant, id, email, score, note)
                 SELECT t, id, 'user' || id || '@example.com', id % 1000, repeat('n', 40)
                 FROM unnest($1::text[], $2::int8[]) AS w(t, id)",
                &[&t, &ids],
            )
            .await?;
    }
    markers(source, tenants, 2).await
}

/// Peak resident set size of `pid` so far, in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct One {
    took: Duration,
    peak_rss_kb: u64,
}

async fn run_one(
    pg: &LocalPostgres,
    pgfanout: &str,
    s: &Settings,
    tenants: &[String],
    plan: &[usize],
) -> Result<One, BoxError> {
    let work = tempfile::tempdir()?;
    let (source, toml) = source(pg, "src_one", work.path(), s).await?;
    let config = work.path().join("pgfanout.toml");
    std::fs::write(
        &config,
        format!(
            "{toml}[[destinations]]\nname = \"all\"\nkind = \"postgres\"\nurl = \"{}\"\n\
             tenants = \"*\"\nmappings = [\"items\", \"marker\"]\nflush_interval = \"{}\"\n",
            pg.socket_url("one"),
            s.flush_interval
        ),
    )?;
    let mut daemon = spawn(pgfanout, &config)?;
    let target = pg.sql("one").await?;
    markers(&source, tenants, 1).await?;
    wait_count(&target, 1, tenants.len(), &mut daemon).await?;
    let start = Instant::now();
    write_workload(&source, tenants, plan).await?;
    wait_count(&target, 2, tenants.len(), &mut daemon).await?;
    let took = start.elapsed();
    let peak_rss_kb = peak_rss_kb(daemon.id());
    stop(daemon)?;
    Ok(One { took, peak_rss_kb })
}

/// Waits until the one target holds marker `id` of `n` tenants.
async fn wait_count(
    target: &Client,
    id: i32,
    n: usize,
    daemon: &mut Child,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + MARKER_TIMEOUT;
    loop {
        let got: i64 = match target
            .query_one("SELECT count(*) FROM marker WHERE id = $1", &[&id])
            .await
        {
            Ok(r) => r.get(0),
            Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => 0,
            Err(e) => return Err(e.into()),
        };
        if got as usize >= n {
            return Ok(());
        }
        check_running(daemon, "the markers arrived")?;
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for marker {id}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Many {
    took: Duration,
    settled: Duration,
    peak_rss_kb: u64,
    most_connections: i64,
    cold: Vec<Duration>,
    warm: Vec<Duration>,
    connect: Vec<Duration>,
}

async fn run_many(
    pg: &LocalPostgres,
    pgfanout: &str,
    s: &Settings,
    tenants: &[String],
    dbs: &[String],
    plan: &[usize],
) -> Result<Many, BoxError> {
    let work = tempfile::tempdir()?;
    let (source, toml) = source(pg, "src_many", work.path(), s).await?;
    let mut destinations = String::new();
    for (t, db) in tenants.iter().zip(dbs) {
        destinations.push_str(&format!(
            "[[destinations]]\nname = \"{t}\"\nkind = \"postgres\"\nurl = \"{}&application_name={APP}\"\n\
             tenants = [\"{t}\"]\nmappings = [\"items\", \"marker\"]\nflush_interval = \"{}\"\n",
            pg.socket_url(db),
            s.flush_interval
        ));
    }
    let config = work.path().join("pgfanout.toml");
    std::fs::write(&config, format!("{toml}{destinations}"))?;
    let admin = pg.sql("postgres").await?;
    let mut daemon = spawn(pgfanout, &config)?;
    let pid = daemon.id();
    let started = Instant::now();
    markers(&source, tenants, 1).await?;
    wait_all(pg, dbs, 1, &mut daemon).await?;
    let settled = started.elapsed();
    eprintln!(
        "{} destinations settled in {:.2}s",
        dbs.len(),
        settled.as_secs_f64()
    );

    let most = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (most, done) = (most.clone(), done.clone());
        let client = pg.sql("postgres").await?;
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(n) = connections(&client).await {
                    most.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let start = Instant::now();
    write_workload(&source, tenants, plan).await?;
    wait_all(pg, dbs, 2, &mut daemon).await?;
    let took = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.await?;
    eprintln!(
        "{} destinations: {:.2}s, peak RSS {} MB",
        dbs.len(),
        took.as_secs_f64(),
        peak_rss_kb(pid) / 1024
    );

    // (c) The coldest tenant, after every destination connection closed.
    let last = dbs.len() - 1;
    let target = pg.sql(&dbs[last]).await?;
    let (mut cold, mut warm, mut connect) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..COLD_SAMPLES {
        let deadline = Instant::now() + MARKER_TIMEOUT;
        while connections(&admin).await? > 0 {
            check_running(&mut daemon, "the destination connections closed")?;
            if Instant::now() > deadline {
                return Err("the destination connections never closed".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let id = 10_000_000 + 2 * i as i64;
        cold.push(visible_after_insert(&source, &target, &tenants[last], id).await?);
        warm.push(visible_after_insert(&source, &target, &tenants[last], id + 1).await?);
        let t = Instant::now();
        let c = pg.sql(&dbs[last]).await?;
        c.query_one("SELECT count(*) FROM marker", &[]).await?;
        connect.push(t.elapsed());
    }
    let peak_rss_kb = peak_rss_kb(pid);
    stop(daemon)?;
    Ok(Many {
        took,
        settled,
        peak_rss_kb,
        most_connections: most.load(std::sync::atomic::Ordering::SeqCst),
        cold,
        warm,
        connect,
    })
}

/// pgfanout's destination connections now.
async fn connections(client: &Client) -> Result<i64, BoxError> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&APP],
        )
        .await?
        .get(0))
}

/// Inserts one row for `tenant` and returns how long until it is readable in `target`.
async fn visible_after_insert(
    source: &Client,
    target: &Client,
    tenant: &str,
    id: i64,
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    source
        .execute(
            "INSERT INTO items (tenant, id, email) VALUES ($1, $2, 'cold@example.com')",
            &[&tenant, &id],
        )
        .await?;
    let deadline = start + MARKER_TIMEOUT;
    while target
        .query_opt("SELECT 1 FROM items WHERE id = $1", &[&id])
        .await?
        .is_none()
    {
        if Instant::now() > deadline {
            return Err("the cold tenant's row never arrived".into());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok(start.elapsed())
}

/// Waits until every database in `dbs` holds its tenant's marker `id`, polling with
/// [`WATCHERS`] connections (each database once it has it: a watcher moves on).
async fn wait_all(
    pg: &LocalPostgres,
    dbs: &[String],
    id: i32,
    daemon: &mut Child,
) -> Result<(), BoxError> {
    let mut watchers = tokio::task::JoinSet::new();
    for w in 0..WATCHERS {
        let mine: Vec<String> = dbs.iter().skip(w).step_by(WATCHERS).cloned().collect();
        let urls: Vec<String> = mine.iter().map(|db| pg.socket_url(db)).collect();
        watchers.spawn(async move {
            for (db, url) in mine.iter().zip(urls) {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| format!("{db}: {e}"))?;
                let task = tokio::spawn(conn);
                let deadline = Instant::now() + MARKER_TIMEOUT;
                loop {
                    let found = match client
                        .query_opt("SELECT 1 FROM marker WHERE id = $1", &[&id])
                        .await
                    {
                        Ok(r) => r.is_some(),
                        Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => false,
                        Err(e) => return Err(format!("{db}: {e}")),
                    };
                    if found {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("{db}: timed out waiting for marker {id}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                drop(client);
                let _ = task.await;
            }
            Ok::<_, String>(())
        });
    }
    while !watchers.is_empty() {
        tokio::select! {
            done = watchers.join_next() => {
                if let Some(r) = done {
                    r??;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                check_running(daemon, &format!("every destination had marker {id}"))?;
            }
        }
    }
    Ok(())
}
