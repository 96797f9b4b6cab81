//! End-to-end benchmark on the same pre-generated WAL, in one run on one machine:
//! `pg_recvlogical -f /dev/null` (the reference), `pgfanout tail > /dev/null`, and
//! `pgfanout run --endpos` into a change log fsync'd in groups. Run it with
//! `scripts/bench-e2e.sh`.
//!
//! Every client reads its own slot, created at the same LSN before the WAL is written, so each
//! decodes exactly the same transactions. Rounds rotate which client goes first; the report
//! gives each client's median rate and the ratios against pg_recvlogical.

mod bench_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench_common::find_recvlogical;
use pgfanout_testkit::localpg::{LocalPostgres, Options};

const ROWS: u64 = 1_000_000;
const ROWS_PER_TXN: u64 = 10_000;
const ROUNDS: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROWS);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS);
    let pgfanout =
        std::env::var("PGFANOUT_BIN").unwrap_or_else(|_| "target/release/pgfanout".into());
    let recvlogical =
        find_recvlogical().ok_or("pg_recvlogical not found (apt-get install postgresql-client)")?;
    let rt = tokio::runtime::Runtime::new()?;
    let pg = LocalPostgres::start(&Options {
        conf: vec![
            "max_wal_size = '4GB'".into(),
            "logical_decoding_work_mem = '64MB'".into(),
        ],
        ..Default::default()
    })?;
    let db = "bench";
    rt.block_on(pg.create_database(db))?;
    let client = rt.block_on(pg.sql(db))?;
    rt.block_on(client.batch_execute(
        "CREATE TABLE bench (id bigint PRIMARY KEY, tenant uuid, email text, name text, score int,
                             balance numeric(12,2), active bool, created_at timestamptz, note text, tags text[]);
         CREATE PUBLICATION bench FOR TABLE bench;",
    ))?;
    for r in 0..rounds {
        for who in ["recv", "pgf", "run"] {
            rt.block_on(client.execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&format!("{who}_{r}")],
            ))?;
        }
    }
    eprintln!("writing {rows} inserts in transactions of {ROWS_PER_TXN} rows");
    let mut written = 0;
    while written < rows {
        let n = ROWS_PER_TXN.min(rows - written);
        rt.block_on(client.batch_execute(&format!(
            "INSERT INTO bench SELECT g, md5(g::text)::uuid, 'user' || g || '@example.com', 'User number ' || g,
                    g % 1000, (g % 100000) / 100.0, g % 2 = 0, now(), repeat('n', 20), ARRAY['a', 'b' || (g % 10)]
             FROM generate_series({}, {}) g",
            written + 1,
            written + n
        )))?;
        written += n;
    }
    let end_lsn: String = rt
        .block_on(client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]))?
        .get(0);
    let wal_bytes: i64 = rt
        .block_on(client.query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), (SELECT min(restart_lsn) FROM pg_replication_slots))::bigint",
            &[],
        ))?
        .get(0);

    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config.path(),
        format!(
            "[source]\nurl = \"postgres://postgres@/{db}?host={}&port={}\"\npublication = \"bench\"\nmanage = false\n",
            pg.socket_dir().display(),
            pg.port()
        ),
    )?;
    let conninfo = format!(
        "host={} port={} dbname={db} user=postgres",
        pg.socket_dir().display(),
        pg.port()
    );

    let (mut recv_times, mut pgf_times, mut run_times) = (Vec::new(), Vec::new(), Vec::new());
    let work = tempfile::tempdir()?;
    for r in 0..rounds {
        // Each client goes first once every three rounds.
        let order: [&str; 3] = match r % 3 {
            0 => ["recv", "pgf", "run"],
            1 => ["pgf", "run", "recv"],
            _ => ["run", "recv", "pgf"],
        };
        for who in order {
            let slot = format!("{who}_{r}");
            let start = Instant::now();
            let status = if who == "recv" {
                Command::new(&recvlogical)
                    .args(["-d", &conninfo, "--slot", &slot, "--start", "--no-loop"])
                    .args(["-o", "proto_version=1", "-o", "publication_names=bench"])
                    .args(["--endpos", &end_lsn, "-f", "/dev/null"])
                    .status()?
            } else if who == "run" {
                let run_cfg = work.path().join(format!("run_{r}.toml"));
                std::fs::write(
                    &run_cfg,
                    format!(
                        "[source]\nurl = \"postgres://postgres@/{db}?host={}&port={}\"\npublication = \"bench\"\nmanage = false\nslot = \"{slot}\"\n[log]\ndir = \"{}\"\n",
                        pg.socket_dir().display(),
                        pg.port(),
                        work.path().join(format!("log_{r}")).display()
                    ),
                )?;
                Command::new(&pgfanout)
                    .args(["run", "--config"])
                    .arg(&run_cfg)
                    .args(["--endpos", &end_lsn])
                    .env("RUST_LOG", "warn")
                    .status()?
            } else {
                Command::new(&pgfanout)
                    .args(["tail", "--config"])
                    .arg(config.path())
                    .args(["--slot", &slot, "--limit", &rows.to_string()])
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .status()?
            };
            let took = start.elapsed();
            if !status.success() {
                return Err(format!("{who} failed in round {r}: {status}").into());
            }
            eprintln!(
                "round {r}: {who:4} {:>8.2}s  {:>9.0} rows/s",
                took.as_secs_f64(),
                rows as f64 / took.as_secs_f64()
            );
            match who {
                "recv" => recv_times.push(took),
                "pgf" => pgf_times.push(took),
                _ => run_times.push(took),
            }
        }
    }
    let recv = median(&mut recv_times);
    let pgf = median(&mut pgf_times);
    let run = median(&mut run_times);
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!(
        "rows: {rows} inserts ({} MB of WAL), {rounds} rounds, medians:",
        wal_bytes / 1_000_000
    );
    println!(
        "  pg_recvlogical -f /dev/null : {:>9.0} rows/s ({:.2}s)",
        rate(recv),
        recv.as_secs_f64()
    );
    println!(
        "  pgfanout tail > /dev/null   : {:>9.0} rows/s ({:.2}s)",
        rate(pgf),
        pgf.as_secs_f64()
    );
    println!(
        "  pgfanout run (change log)   : {:>9.0} rows/s ({:.2}s)",
        rate(run),
        run.as_secs_f64()
    );
    println!(
        "  ratio tail / pg_recvlogical: {:.2}",
        rate(pgf) / rate(recv)
    );
    println!(
        "  ratio run  / pg_recvlogical: {:.2}",
        rate(run) / rate(recv)
    );
    drop(pg);
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
