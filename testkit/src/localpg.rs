//! A private PostgreSQL server in a temporary directory: `initdb`, `wal_level = logical`, a free
//! port on 127.0.0.1 and a unix socket inside the directory. Used by `pgfanout demo`, the
//! integration tests and the benchmark script; stopped and removed on drop.
//!
//! `initdb` and `postgres` refuse to run as root, so when pgfanout runs as root the server runs
//! as the `postgres` system user (created by Debian's package), which owns the directory.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use postgres_protocol::escape::escape_identifier;
use tempfile::TempDir;
use tracing::{debug, warn};

/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "postgres";

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error("PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH\nHINT: run scripts/install-deps.sh, or apt-get install postgresql, or set PGFANOUT_PG_BIN to the directory holding initdb")]
    NoBinaries,
    #[error("running as root, but there is no 'postgres' system user to run the server as\nHINT: apt-get install postgresql creates it (or: useradd --system postgres)")]
    NoPostgresUser,
    #[error("SQL on the private server failed: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("{what} failed: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LocalPgError {
    let what = what.into();
    move |source| LocalPgError::Io { what, source }
}

/// Extra settings for the private server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Lines appended to postgresql.conf.
    pub conf: Vec<String>,
    /// pg_hba.conf lines placed before the default trust rules.
    pub hba: Vec<String>,
    /// Serve TLS with a throw-away CA (see [`LocalPostgres::ca_cert`]).
    pub tls: bool,
}

pub struct LocalPostgres {
    // Dropped last (field order): the server is stopped in `Drop` before the directory goes.
    dir: TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    stopped: bool,
}

impl LocalPostgres {
    /// initdb + start. Blocking: call it from `spawn_blocking` inside a runtime.
    pub fn start(opts: &Options) -> Result<LocalPostgres, LocalPgError> {
        let bin = find_bin_dir().ok_or(LocalPgError::NoBinaries)?;
        let run_as = if is_root() {
            Some(postgres_user().ok_or(LocalPgError::NoPostgresUser)?)
        } else {
            None
        };
        let (dir, data) = server_dir(run_as)?;
        let mut pg = LocalPostgres {
            dir,
            data,
            bin,
            port: 0,
            run_as,
            stopped: true,
        };
        pg.run(pg.command("initdb").arg("-D").arg(&pg.data).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]))?;
        if opts.tls {
            pg.make_certificates()?;
        }
        pg.write_hba(&opts.hba)?;
        pg.launch(opts)?;
        Ok(pg)
    }

    /// A new server restored from a base backup of this one taken now (`pg_basebackup`),
    /// recovered to the backup's end and promoted: the same system identifier on a new
    /// timeline, without the replication slots — what restoring a backup gives.
    pub fn restore_backup(&self) -> Result<LocalPostgres, LocalPgError> {
        let (dir, data) = server_dir(self.run_as)?;
        let mut pg = LocalPostgres {
            dir,
            data,
            bin: self.bin.clone(),
            port: 0,
            run_as: self.run_as,
            stopped: true,
        };
        pg.run(
            pg.command("pg_basebackup")
                .arg("-D")
                .arg(&pg.data)
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-p", &self.port.to_string(), "-U", SUPERUSER])
                .args(["-X", "stream", "-c", "fast", "--no-sync"]),
        )?;
        pg.write_file(&pg.data.join("recovery.signal"), "", 0o600)?;
        // No archive: recovery replays the backup's WAL, ends, and promotes.
        pg.launch(&Options {
            conf: vec!["restore_command = 'false'".into()],
            ..Options::default()
        })?;
        Ok(pg)
    }

    /// Writes the configuration on a free port and starts the server in `self.data`.
    fn launch(&mut self, opts: &Options) -> Result<(), LocalPgError> {
        let pg = self;
        // A port that was free a moment ago can be taken before the server binds it: retry.
        let mut last_err = None;
        for _ in 0..5 {
            pg.port = free_port().map_err(io_err("finding a free port"))?;
            pg.write_conf(opts)?;
            match pg.run(
                pg.command("pg_ctl")
                    .arg("-D")
                    .arg(&pg.data)
                    .arg("-l")
                    .arg(pg.dir.path().join("server.log"))
                    .args(["-w", "-t", "60", "start"]),
            ) {
                Ok(_) => {
                    pg.stopped = false;
                    pg.spawn_watchdog()?;
                    debug!(port = pg.port, dir = %pg.dir.path().display(), "private PostgreSQL started");
                    return Ok(());
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(LocalPgError::NoBinaries))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory of the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file (useful when a test fails).
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// CA certificate that signed the server certificate (with `Options::tls`).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A TCP URL for `user` on `db` (no password, sslmode=disable).
    pub fn url(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A libpq URL for the superuser on `db` over the unix socket (parse it into pgfanout's
    /// `ConnInfo` where a product API wants one).
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@/{db}?host={}&port={}&sslmode=disable",
            self.socket_dir().display(),
            self.port
        )
    }

    /// A libpq key/value conninfo string for `db` over the unix socket (for `pg_recvlogical -d`
    /// and `CREATE SUBSCRIPTION`).
    pub fn conninfo_string(&self, db: &str) -> String {
        format!(
            "host={} port={} dbname={db} user={SUPERUSER}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// An ordinary SQL connection (tokio-postgres) as the superuser over the unix socket.
    pub async fn sql(&self, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(self.socket_dir())
            .port(self.port)
            .user(SUPERUSER)
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection to the private server ended");
            }
        });
        Ok(client)
    }

    /// Creates a database (for one test each).
    pub async fn create_database(&self, name: &str) -> Result<(), LocalPgError> {
        let client = self.sql("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE {}", escape_identifier(name)))
            .await?;
        Ok(())
    }

    /// Stops the server cleanly (`pg_ctl -m fast`) but keeps its directory and port, for
    /// [`LocalPostgres::resume`]: an outage in tests.
    pub fn pause(&self) -> Result<(), LocalPgError> {
        self.run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "stop"]),
        )
        .map(|_| ())
    }

    /// Starts a server stopped by [`LocalPostgres::pause`] again, on the same port.
    pub fn resume(&self) -> Result<(), LocalPgError> {
        self.run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.log_file())
                .args(["-w", "-t", "60", "start"]),
        )
        .map(|_| ())
    }

    /// Stops the server now (also done on drop).
    pub fn stop(&mut self) -> Result<(), LocalPgError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.run(self.command("pg_ctl").arg("-D").arg(&self.data).args([
            "-m",
            "immediate",
            "-w",
            "stop",
        ]))
        .map(|_| ())
    }

    /// A shell that stops the server and removes its directory once this process is gone, so a
    /// killed test run or demo leaves nothing behind. It ignores Ctrl-C (which the terminal
    /// sends to the whole process group) so it outlives us.
    fn spawn_watchdog(&self) -> Result<(), LocalPgError> {
        let script = format!(
            "trap '' INT TERM; while [ -d /proc/{pid} ]; do sleep 1; done; \
             '{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data.display(),
            dir = self.dir.path().display(),
        );
        self.command_path(Path::new("/bin/sh"))
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(io_err("starting the clean-up watchdog"))?;
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        self.command_path(&self.bin.join(program))
    }

    fn command_path(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        // The server inherits nothing it could be confused by (e.g. PGDATA, PGPORT).
        c.env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        c.current_dir(self.dir.path());
        c
    }

    fn run(&self, cmd: &mut Command) -> Result<Output, LocalPgError> {
        let command = format!("{:?}", cmd.get_program());
        let out = cmd.output().map_err(io_err(format!("running {command}")))?;
        if !out.status.success() {
            let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
            output.push_str(&String::from_utf8_lossy(&out.stdout));
            if let Ok(log) = fs::read_to_string(self.log_file()) {
                output.push_str("\nserver log:\n");
                output.push_str(&log);
            }
            return Err(LocalPgError::Command {
                command,
                status: out.status.to_string(),
                output,
            });
        }
        Ok(out)
    }

    fn write_file(&self, path: &Path, text: &str, mode: u32) -> Result<(), LocalPgError> {
        use std::os::unix::fs::PermissionsExt;
        fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("setting permissions of {}", path.display())))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io_err(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    fn write_conf(&self, opts: &Options) -> Result<(), LocalPgError> {
        let mut conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n",
            self.port,
            self.socket_dir().display()
        );
        conf.push_str(
            "wal_level = logical\nmax_wal_senders = 20\nmax_replication_slots = 20\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             shared_buffers = 128MB\nmax_connections = 100\nlog_min_messages = warning\n",
        );
        if opts.tls {
            conf.push_str(
                "ssl = on\nssl_cert_file = '../server.crt'\nssl_key_file = '../server.key'\n",
            );
        }
        for line in &opts.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        self.write_file(&self.data.join("postgresql.auto.conf"), &conf, 0o600)
    }

    fn write_hba(&self, extra: &[String]) -> Result<(), LocalPgError> {
        let mut hba = String::new();
        for line in extra {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "local all all trust\nlocal replication all trust\n\
             host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        );
        self.write_file(&self.data.join("pg_hba.conf"), &hba, 0o600)
    }

    /// The throw-away CA and server certificate ([`crate::localtls`]), readable by the server.
    fn make_certificates(&self) -> Result<(), LocalPgError> {
        let dir = self.dir.path();
        crate::localtls::make(dir).map_err(|e| LocalPgError::Command {
            command: "openssl".into(),
            status: e.step.into(),
            output: e.output,
        })?;
        for (file, mode) in [
            ("server.key", 0o600),
            ("server.crt", 0o644),
            ("ca.crt", 0o644),
        ] {
            let path = dir.join(file);
            let text = fs::read_to_string(&path).map_err(io_err(format!("reading {file}")))?;
            self.write_file(&path, &text, mode)?;
        }
        Ok(())
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            warn!(error = %e, "could not stop the private PostgreSQL server");
        }
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn postgres_user() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// `PGFANOUT_PG_BIN`, else the newest `/usr/lib/postgresql/N/bin`, else `initdb` on PATH.
/// A temporary directory for one server, owned by the user it runs as, and its data path.
fn server_dir(run_as: Option<(u32, u32)>) -> Result<(TempDir, PathBuf), LocalPgError> {
    let dir = tempfile::Builder::new()
        .prefix("pgfanout-pg-")
        .tempdir()
        .map_err(io_err("creating a temporary directory"))?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(io_err(
            "handing the temporary directory to the postgres user",
        ))?;
    }
    let data = dir.path().join("data");
    Ok((dir, data))
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PGFANOUT_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}
