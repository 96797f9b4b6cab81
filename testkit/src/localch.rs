//! A private ClickHouse server in a temporary directory: free HTTP and native-protocol ports on
//! 127.0.0.1, nothing else listening. Used by the integration tests, the demo and the benchmark
//! scripts; stopped and removed on drop.
//!
//! The server is our child process, in its own process group so a Ctrl-C in the terminal leaves
//! it to us. pgfanout does not depend on libc, so there is no `PR_SET_PDEATHSIG`: when this
//! process dies without dropping the server (a `static`, a crash, SIGKILL), a watchdog shell
//! stops it and removes the directory, as for [`crate::localpg`].
//!
//! Works with Debian's `clickhouse-server` 18.16 (config root `<yandex>`) and with the single
//! `clickhouse` binary of newer releases (`clickhouse server`, root `<clickhouse>` from 22.x on).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tracing::{debug, warn};

/// How long [`LocalClickHouse::start`] and [`LocalClickHouse::resume`] wait for `SELECT 1`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping server gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Read/write timeout of one HTTP request made by [`LocalClickHouse::query`].
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LocalChError {
    #[error("ClickHouse server binary not found (clickhouse-server, or clickhouse with its 'server' command, in PATH, /usr/sbin or /usr/bin)\nHINT: run scripts/install-deps.sh, or apt-get install clickhouse-server clickhouse-client, or set PGFANOUT_CLICKHOUSE_BIN to the binary")]
    NoBinary,
    #[error("{what} failed: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the private ClickHouse server exited while starting ({status}); log tail:\n{log}")]
    Exited { status: String, log: String },
    #[error("the private ClickHouse server did not answer SELECT 1 within {}s; log tail:\n{log}", READY_TIMEOUT.as_secs())]
    NotReady { log: String },
    #[error("the private ClickHouse server did not stop after SIGTERM and SIGKILL")]
    NotStopped,
    #[error("ClickHouse answered HTTP {status}: {message}")]
    Query { status: u16, message: String },
    #[error("malformed HTTP response from ClickHouse: {0}")]
    Http(String),
    #[error("making the server's TLS certificate: {0}")]
    Certificates(#[source] crate::localtls::CertError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LocalChError {
    let what = what.into();
    move |source| LocalChError::Io { what, source }
}

/// How to run the server: `clickhouse-server ARGS` or `clickhouse server ARGS`.
#[derive(Debug, Clone)]
struct ServerBin {
    program: PathBuf,
    /// `["server"]` for the single `clickhouse` binary.
    prefix: Vec<&'static str>,
}

impl ServerBin {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.prefix);
        c
    }
}

pub struct LocalClickHouse {
    // Dropped last (field order): the server is stopped in `Drop` before the directory goes.
    dir: TempDir,
    bin: ServerBin,
    http_port: u16,
    /// HTTPS with a throw-away CA ([`LocalClickHouse::ca_cert`]), certificate for `localhost`.
    https_port: u16,
    tcp_port: u16,
    child: Mutex<Option<Child>>,
    watchdog: Mutex<Option<Child>>,
}

impl LocalClickHouse {
    /// A user other than `default`, with a password (plain text in users.xml, markup escaped): `(user,
    /// password)`. The password has a space and quotes, like `support::PASSWORD` for PostgreSQL.
    pub const PASSWORD_USER: (&'static str, &'static str) = ("pgfanout", "ch p@ss word'\"&<");

    /// Writes the configuration and starts the server; returns once `SELECT 1` answers over HTTP.
    /// Blocking: call it from `spawn_blocking` inside a runtime.
    pub fn start() -> Result<LocalClickHouse, LocalChError> {
        let bin = find_server_bin().ok_or(LocalChError::NoBinary)?;
        let root = config_root(&bin);
        let dir = tempfile::Builder::new()
            .prefix("pgfanout-ch-")
            .tempdir()
            .map_err(io_err("creating a temporary directory"))?;
        let mut ch = LocalClickHouse {
            dir,
            bin,
            http_port: 0,
            https_port: 0,
            tcp_port: 0,
            child: Mutex::new(None),
            watchdog: Mutex::new(None),
        };
        fs::create_dir(ch.log_dir()).map_err(io_err("creating the log directory"))?;
        crate::localtls::make(ch.dir.path()).map_err(LocalChError::Certificates)?;
        ch.write_users(root)?;
        // A port that was free a moment ago can be taken before the server binds it: retry.
        let mut last_err = None;
        for _ in 0..5 {
            [ch.http_port, ch.https_port, ch.tcp_port] =
                free_ports().map_err(io_err("finding free ports"))?;
            ch.write_config(root)?;
            match ch.spawn_and_wait() {
                Ok(()) => {
                    ch.spawn_watchdog()?;
                    debug!(http_port = ch.http_port, dir = %ch.dir.path().display(), "private ClickHouse started");
                    return Ok(ch);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(LocalChError::NoBinary))
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `https://localhost:PORT`: the certificate names `localhost`, signed by [`Self::ca_cert`].
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.https_port)
    }

    /// The throw-away CA that signed the HTTPS certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The native-protocol port (`clickhouse-client --port`).
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// `http://127.0.0.1:PORT`, the HTTP interface.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The server's directory (configuration, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the server writes `server.log`, `err.log` and its stdout/stderr (`console.log`).
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// The server's process id while it runs (None while paused).
    pub fn pid(&self) -> Option<u32> {
        self.lock_child().as_ref().map(Child::id)
    }

    /// Runs one SQL statement as the `default` user (no password) and returns the response body
    /// (TabSeparated unless the statement says `FORMAT`). Blocking.
    pub fn query(&self, sql: &str) -> Result<String, LocalChError> {
        self.post(None, sql)
    }

    /// Runs one SQL statement as `user`, authenticated with the `X-ClickHouse-User` and
    /// `X-ClickHouse-Key` headers (as the `clickhouse` crate does). Blocking.
    pub fn query_as(&self, user: &str, password: &str, sql: &str) -> Result<String, LocalChError> {
        self.post(Some((user, password)), sql)
    }

    /// Stops the server (SIGTERM, then waits for it to exit) but keeps its directory and ports,
    /// for [`LocalClickHouse::resume`]: an outage in tests.
    pub fn pause(&self) -> Result<(), LocalChError> {
        let mut child = self.lock_child();
        if let Some(c) = child.as_mut() {
            stop_child(c)?;
        }
        *child = None;
        Ok(())
    }

    /// Starts a server stopped by [`LocalClickHouse::pause`] again on the same ports and waits
    /// until it answers. Does nothing if it runs.
    pub fn resume(&self) -> Result<(), LocalChError> {
        if self.lock_child().is_some() {
            return Ok(());
        }
        self.spawn_and_wait()
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn config_file(&self) -> PathBuf {
        self.dir.path().join("config.xml")
    }

    /// Starts the server process and waits until `SELECT 1` answers; on failure the process is
    /// stopped again.
    fn spawn_and_wait(&self) -> Result<(), LocalChError> {
        let console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir().join("console.log"))
            .map_err(io_err("opening console.log"))?;
        let console2 = console.try_clone().map_err(io_err("opening console.log"))?;
        let child = self
            .bin
            .command()
            .arg(format!("--config-file={}", self.config_file().display()))
            .current_dir(self.dir.path())
            // Newer releases can fork a watchdog parent; we want the server itself as our child.
            .env("CLICKHOUSE_WATCHDOG_ENABLE", "0")
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console2)
            .process_group(0)
            .spawn()
            .map_err(io_err(format!("starting {}", self.bin.program.display())))?;
        // For the watchdog, should this process die without dropping us.
        fs::write(self.dir.path().join("server.pid"), child.id().to_string())
            .map_err(io_err("writing server.pid"))?;
        let mut guard = self.lock_child();
        *guard = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let c = guard.as_mut().expect("just spawned");
            if let Some(status) = c.try_wait().map_err(io_err("waiting for ClickHouse"))? {
                *guard = None;
                return Err(LocalChError::Exited {
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if let Ok(body) = self.http(None, "SELECT 1", Duration::from_secs(2)) {
                if body.trim() == "1" {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let _ = stop_child(c);
                *guard = None;
                return Err(LocalChError::NotReady {
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn post(&self, auth: Option<(&str, &str)>, sql: &str) -> Result<String, LocalChError> {
        self.http(auth, sql, QUERY_TIMEOUT)
    }

    /// One HTTP/1.0 POST with the statement as the body; the server closes the connection after
    /// the response, so the body is everything up to EOF.
    fn http(
        &self,
        auth: Option<(&str, &str)>,
        sql: &str,
        timeout: Duration,
    ) -> Result<String, LocalChError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.http_port));
        let mut request = format!(
            "POST / HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: {}\r\n",
            self.http_port,
            sql.len()
        );
        if let Some((user, password)) = auth {
            if [user, password].iter().any(|s| s.contains(['\r', '\n'])) {
                return Err(LocalChError::Http(
                    "user or password contains a line break".into(),
                ));
            }
            request.push_str(&format!(
                "X-ClickHouse-User: {user}\r\nX-ClickHouse-Key: {password}\r\n"
            ));
        }
        request.push_str("\r\n");
        let what = || format!("HTTP request to ClickHouse at {addr}");
        let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))
            .map_err(io_err(what()))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(io_err(what()))?;
        stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.write_all(sql.as_bytes()))
            .map_err(io_err(what()))?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).map_err(io_err(what()))?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| LocalChError::Http(format!("no end of headers in {response:?}")))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| LocalChError::Http(format!("no status in {head:?}")))?;
        // Newer servers can report an exception after a 200 status line, in this header.
        let exception = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("x-clickhouse-exception-code:")
        });
        if status != 200 || exception {
            return Err(LocalChError::Query {
                status,
                message: body.trim_end().to_owned(),
            });
        }
        Ok(body.to_owned())
    }

    /// The last lines of err.log and console.log, for error messages.
    fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["err.log", "console.log"] {
            if let Ok(text) = fs::read_to_string(self.log_dir().join(name)) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(30)..];
                out.push_str(&format!("--- {name}\n{}\n", tail.join("\n")));
            }
        }
        if out.is_empty() {
            out.push_str("(no log)");
        }
        out
    }

    fn write_config(&self, root: &str) -> Result<(), LocalChError> {
        let d = xml_escape(&self.dir.path().display().to_string());
        let log = xml_escape(&self.log_dir().display().to_string());
        // Only the HTTP(S) and native ports: no interserver, MySQL or PostgreSQL listeners.
        let config = format!(
            "<?xml version=\"1.0\"?>
<{root}>
  <logger>
    <level>warning</level>
    <log>{log}/server.log</log>
    <errorlog>{log}/err.log</errorlog>
    <console>0</console>
  </logger>
  <http_port>{http}</http_port>
  <https_port>{https}</https_port>
  <tcp_port>{tcp}</tcp_port>
  <openSSL>
    <server>
      <certificateFile>{d}/server.crt</certificateFile>
      <privateKeyFile>{d}/server.key</privateKeyFile>
      <verificationMode>none</verificationMode>
      <loadDefaultCAFile>false</loadDefaultCAFile>
      <disableProtocols>sslv2,sslv3</disableProtocols>
    </server>
  </openSSL>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>5368709</mark_cache_size>
  <uncompressed_cache_size>8589934</uncompressed_cache_size>
</{root}>
",
            http = self.http_port,
            https = self.https_port,
            tcp = self.tcp_port,
        );
        let path = self.config_file();
        fs::write(&path, config).map_err(io_err(format!("writing {}", path.display())))
    }

    fn write_users(&self, root: &str) -> Result<(), LocalChError> {
        let (user, password) = Self::PASSWORD_USER;
        let networks = "<networks><ip>127.0.0.1</ip><ip>::1</ip></networks>";
        let users = format!(
            "<?xml version=\"1.0\"?>
<{root}>
  <profiles><default></default></profiles>
  <users>
    <default><password></password>{networks}<profile>default</profile><quota>default</quota></default>
    <{user}><password>{password}</password>{networks}<profile>default</profile><quota>default</quota></{user}>
  </users>
  <quotas><default></default></quotas>
</{root}>
",
            password = xml_escape(password),
        );
        let path = self.dir.path().join("users.xml");
        fs::write(&path, users).map_err(io_err(format!("writing {}", path.display())))
    }

    /// A shell that stops the server and removes its directory once this process is gone (see
    /// the module comment). It reads the server's pid from `server.pid` (it changes with
    /// pause/resume) and signals it only if its command line still names our config file.
    fn spawn_watchdog(&self) -> Result<(), LocalChError> {
        const SCRIPT: &str = r#"
trap '' INT TERM
alive() { [ -n "$(tr -d '\0' < "/proc/$1/cmdline" 2>/dev/null)" ]; }
ours() { tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "--config-file=$3"; }
while alive "$1" && [ -d "$2" ]; do sleep 1; done
[ -d "$2" ] || exit 0
p=$(cat "$2/server.pid" 2>/dev/null)
if [ -n "$p" ] && ours "$p" "$2" "$3"; then
  kill -TERM "$p" 2>/dev/null
  i=0
  while ours "$p" "$2" "$3" && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$p" 2>/dev/null
fi
rm -rf "$2"
"#;
        let child = Command::new("/bin/sh")
            .args(["-c", SCRIPT, "pgfanout-ch-watchdog"])
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .arg(self.config_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io_err("starting the clean-up watchdog"))?;
        *self.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }
}

impl Drop for LocalClickHouse {
    fn drop(&mut self) {
        if let Err(e) = self.pause() {
            warn!(error = %e, "could not stop the private ClickHouse server");
        }
        let watchdog = self.watchdog.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut w) = watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// SIGTERM (with kill(1): no libc here), up to [`STOP_TIMEOUT`] for the exit, then SIGKILL.
fn stop_child(child: &mut Child) -> Result<(), LocalChError> {
    if child
        .try_wait()
        .map_err(io_err("waiting for ClickHouse"))?
        .is_some()
    {
        return Ok(());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if child
            .try_wait()
            .map_err(io_err("waiting for ClickHouse"))?
            .is_some()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    warn!(
        pid = child.id(),
        "private ClickHouse ignored SIGTERM; killing it"
    );
    child.kill().map_err(io_err("killing ClickHouse"))?;
    match child.wait() {
        Ok(_) => Ok(()),
        Err(_) => Err(LocalChError::NotStopped),
    }
}

/// Two distinct free ports on 127.0.0.1 (held together so they differ, then released).
/// Three distinct free ports (held open together while they are picked).
fn free_ports() -> io::Result<[u16; 3]> {
    let held = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    Ok([
        held[0].local_addr()?.port(),
        held[1].local_addr()?.port(),
        held[2].local_addr()?.port(),
    ])
}

/// `PGFANOUT_CLICKHOUSE_BIN` (a `clickhouse-server` or a single `clickhouse` binary), else
/// `clickhouse-server`, else `clickhouse`, in PATH, /usr/sbin or /usr/bin.
fn find_server_bin() -> Option<ServerBin> {
    let from = |program: PathBuf| {
        let single = program.file_name().is_some_and(|n| n == "clickhouse");
        ServerBin {
            program,
            prefix: if single { vec!["server"] } else { vec![] },
        }
    };
    if let Some(bin) = std::env::var_os("PGFANOUT_CLICKHOUSE_BIN") {
        return Some(from(PathBuf::from(bin)));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]);
    ["clickhouse-server", "clickhouse"].iter().find_map(|name| {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .map(from)
    })
}

/// The configuration's root element: `<clickhouse>` from release 22 on, `<yandex>` before (18.16
/// has no `--version`, which also means old).
fn config_root(bin: &ServerBin) -> &'static str {
    match server_major_version(bin) {
        Some(major) if major >= 22 => "clickhouse",
        _ => "yandex",
    }
}

/// Parses `ClickHouse server version 24.3.1.2672 (official build).`
fn server_major_version(bin: &ServerBin) -> Option<u32> {
    let out = bin
        .command()
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_major_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_major_version(text: &str) -> Option<u32> {
    text.split("version ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_the_password_is_escaped() {
        assert_eq!(xml_escape("a&<>\"'b"), "a&amp;&lt;&gt;\"'b");
    }

    #[test]
    fn parses_the_major_version() {
        let parse = parse_major_version;
        assert_eq!(
            parse("ClickHouse server version 24.3.1.2672 (official build)."),
            Some(24)
        );
        assert_eq!(parse("ClickHouse client version 18.16.1."), Some(18));
        assert_eq!(parse("Unknown option specified: version"), None);
    }
}
