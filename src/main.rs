//! The `pgfanout` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use pgfanout::cmd::load_config;
use pgfanout::cmd::tail::{tail, TailOptions};
use pgfanout::config::validate_slot_name;
use pgfanout::report::Chain;
use pgfanout::source::SlotSpec;

// Compiled into the binary, not the library: the demo starts the testkit's private servers.
#[path = "cmd/demo/mod.rs"]
mod demo;

/// Rows are many small allocations made on one thread and freed on another (the dispatcher
/// routes, a destination writer drops its batch); glibc's allocator spent a third of the
/// writer's time there. Measured in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's options, by their index in `mi_option_t` (`mimalloc.h` of the mimalloc 3 that
// libmimalloc-sys 0.1.49 bundles; that crate names none of these two).
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Lets mimalloc give freed memory back to the system, so the RSS follows what the daemon
/// holds (invariant 37). By default it commits its whole arena eagerly on Linux, and freed
/// pages of a committed arena stay resident; and it purges a second after a free, so a batch
/// freed and the next one allocated meanwhile stacked up. Measured in BENCHMARKS.md ("Memory
/// for one big transaction"): idle 31 → 15 MiB. These two options are fixed here (the
/// `MIMALLOC_*` variables do not change them).
extern "C" fn tune_allocator() {
    // SAFETY: `mi_option_set` only writes mimalloc's option table (it allocates nothing and
    // takes any value, and mimalloc's own start-up keeps a value set before it).
    unsafe {
        mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        // Short enough that the RSS follows a batch's release, long enough that the pages
        // of a batch freed and the next one allocated right after are reused, not purged.
        mi_option_set(MI_OPTION_PURGE_DELAY, 10);
    }
}

/// The arena mimalloc reserves at the first allocation, which Rust's runtime makes before
/// `main`, follows the options at that moment: set them in a constructor that runs before
/// every constructor without a priority (mimalloc's own among them) and before the runtime.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00200"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

#[derive(Parser)]
#[command(
    name = "pgfanout",
    version,
    about = "Change-data-capture from a PostgreSQL logical replication slot",
    // Bare `pgfanout` prints the help (exit status 2, as for any missing subcommand).
    arg_required_else_help = true
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print each row change of the source as one JSON line.
    Tail {
        #[arg(long)]
        config: PathBuf,
        /// Exit after this many changes.
        #[arg(long)]
        limit: Option<u64>,
        /// Read this existing (or, with source.manage, new) slot instead of a temporary one.
        #[arg(long)]
        slot: Option<String>,
    },
    /// Stream the slot into the change log until stopped (SIGINT / SIGTERM flush, checkpoint
    /// and exit 0).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Stop once everything up to this LSN (e.g. 0/1A2B3C8) is in the change log.
        #[arg(long)]
        endpos: Option<pgfanout::lsn::Lsn>,
        /// Create the replication slot again when it is missing or was confirmed past what the
        /// change log holds: numbering continues after the highest seq ever confirmed, and
        /// every destination is marked needs resync (what happened in between is not in the
        /// log). Without it, start-up refuses.
        #[arg(long)]
        recreate_slot: bool,
    },
    /// Check every start-up precondition (read-only) and report all problems; exit 1 if any.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Where the slot, the change log and the last checkpoint stand.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Apply the state database's migrations and exit.
    Migrate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Re-apply the change log from a seq to one destination (the daemon may be running).
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        destination: String,
        #[arg(long)]
        from_seq: u64,
        /// Only this tenant's rows.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Copy what destination D is given (narrowed to a tenant or a mapping) from the source
    /// again, consistently with the stream; the running daemon does the work. Follows it.
    Resync {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        destination: String,
        /// Only this tenant's rows (the value of the mappings' tenant_key).
        #[arg(long)]
        tenant: Option<String>,
        /// Only this mapping's table.
        #[arg(long)]
        mapping: Option<String>,
        /// Print the request's id and return without following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Inspect the change log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Act on one destination.
    Destination {
        #[command(subcommand)]
        command: DestinationCommand,
    },
    /// The whole pipeline on private servers (removed at the end): a source, two tenant
    /// databases and ClickHouse (when installed), a workload, a live view, a SIGKILL and a
    /// replay, then checks that every target equals its projection of the source.
    Demo {
        /// How long the workload runs (Ctrl-C ends it early; the checks still run).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum DestinationCommand {
    /// Clear what holds destination NAME back (`failed` or `needs resync`, see `status`):
    /// after a fix, a running pgfanout retries it within a few seconds. Clearing `needs
    /// resync` accepts the gap.
    Resume {
        /// The destination's name, as configured.
        name: String,
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print changes as JSON lines (the `tail` format), from a seq on.
    Read {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 1)]
        from_seq: u64,
        /// Last seq to print (inclusive).
        #[arg(long)]
        to_seq: Option<u64>,
        /// Print at most this many changes.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Check every record of every segment (CRC, decoding, dense seqs: no gap, no reused
    /// seq) and that the log may be resumed with its source, slot and checkpoint; exit 1 if
    /// not.
    Verify {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    #[cfg(not(target_os = "linux"))]
    tune_allocator();
    let cli = Cli::parse();
    let log_format = cli.log_format;
    init_logging(log_format);
    // Only with the `failpoints` feature (tests): arms the points named in FAILPOINTS.
    if let Err(e) = pgfanout::failpoint::arm_from_env() {
        match log_format {
            LogFormat::Text => eprintln!("error: {e}"),
            LogFormat::Json => tracing::error!(error = %e, "pgfanout stopped"),
        }
        return ExitCode::FAILURE;
    }
    let runtime = match // One thread: the stream is a single sequential pipeline, and cross-thread wake-ups cost
    // more than they give (measured with scripts/bench-e2e.sh).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one place an error reaches a person on the command line: its message, then
            // each cause once; under --log-format json, as one JSON line like every other.
            match log_format {
                LogFormat::Text => eprintln!("error: {:#}", Chain(e.as_ref())),
                LogFormat::Json => tracing::error!(error = %Chain(e.as_ref()), "pgfanout stopped"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Tail {
            config,
            limit,
            slot,
        } => {
            let config = load_config(&config)?;
            let slot = match slot {
                Some(name) => {
                    validate_slot_name(&name).map_err(|m| format!("--slot: {m}"))?;
                    SlotSpec::Named(name)
                }
                None => SlotSpec::Temporary,
            };
            tail(
                &config.source,
                TailOptions { limit, slot },
                &mut stdout,
                ctrl_c(),
            )
            .await?;
        }
        Command::Run {
            config,
            endpos,
            recreate_slot,
        } => {
            let config = load_config(&config)?;
            let opts = pgfanout::pipeline::RunOptions {
                endpos,
                recreate_slot,
            };
            // With the admin endpoint ([admin] listen) beside it.
            pgfanout::admin::run(&config, opts, ctrl_c()).await?;
        }
        Command::Check { config } => {
            let config = load_config(&config)?;
            let report = pgfanout::cmd::check::check(&config).await;
            print!("{report}");
            if report.problems() > 0 {
                return Err(format!("{} problem(s) found", report.problems()).into());
            }
        }
        Command::Status { config, json } => {
            let config = load_config(&config)?;
            let status = pgfanout::cmd::status::status(&config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
        Command::Replay {
            config,
            destination,
            from_seq,
            tenant,
        } => {
            let config = load_config(&config)?;
            let r = pgfanout::fanout::replay(&config, &destination, from_seq, tenant.as_deref())
                .await?;
            eprintln!(
                "replayed {} change(s) up to seq {} into {destination}: {} row operation(s) applied in {} pass(es) over the log",
                r.changes, r.last_seq, r.ops, r.rounds
            );
        }
        Command::Resync {
            config,
            destination,
            tenant,
            mapping,
            no_wait,
        } => {
            let config = load_config(&config)?;
            let id = pgfanout::cmd::resync::request(
                &config,
                &destination,
                tenant.as_deref(),
                mapping.as_deref(),
            )
            .await?;
            eprintln!("snapshot {id} requested for destination {destination:?}");
            if !no_wait {
                let p = pgfanout::cmd::resync::follow(&config, id).await?;
                eprintln!(
                    "snapshot {id} done: {} row(s) from {} table(s) in the change log up to seq {}; the destination applies them in order (`pgfanout status` shows its lag)",
                    p.rows,
                    p.tables,
                    p.done_seq.map_or_else(|| "-".into(), |s| s.to_string())
                );
            }
        }
        Command::Migrate { config } => {
            let config = load_config(&config)?;
            let state =
                pgfanout::state::StateDb::connect(&config.state.conn, &config.state.schema).await?;
            let report = state.migrations();
            let version = report
                .current
                .map_or_else(|| "none".to_owned(), |v| v.to_string());
            if report.applied.is_empty() {
                eprintln!(
                    "state schema {} is up to date (version {version})",
                    state.schema()
                );
            } else {
                let applied: Vec<String> = report.applied.iter().map(|v| v.to_string()).collect();
                eprintln!(
                    "state schema {}: applied migration(s) {}; now at version {version}",
                    state.schema(),
                    applied.join(", ")
                );
            }
        }
        Command::Log {
            command:
                LogCommand::Read {
                    config,
                    from_seq,
                    to_seq,
                    limit,
                },
        } => {
            let config = load_config(&config)?;
            pgfanout::cmd::log::read(&config.log.dir, from_seq, to_seq, limit, &mut stdout)?;
        }
        Command::Log {
            command: LogCommand::Verify { config },
        } => {
            let config = load_config(&config)?;
            let report = pgfanout::cmd::verify::verify(&config).await;
            print!("{report}");
            if report.problems() > 0 {
                return Err(format!("{} problem(s) found", report.problems()).into());
            }
        }
        Command::Destination {
            command: DestinationCommand::Resume { name, config },
        } => {
            let config = load_config(&config)?;
            let resumed = pgfanout::cmd::destination::resume(&config, &name).await?;
            print!("{resumed}");
        }
        Command::Demo { duration } => {
            drop(stdout); // the demo prints through its own handle
            demo::run(demo::DemoOptions { duration }).await?;
        }
    }
    Ok(())
}

async fn ctrl_c() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat) {
    // tokio-postgres logs every server NOTICE at INFO ("relation … already exists, skipping"):
    // noise for an operator, so only its warnings show unless RUST_LOG says otherwise.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never into a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
