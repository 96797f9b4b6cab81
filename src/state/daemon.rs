//! The running daemon's heartbeat (`<schema>.daemon_heartbeats`, one row per slot): written
//! every [`HEARTBEAT_EVERY`] while `pgfanout run` runs, marked stopped when it ends cleanly.
//! `pgfanout status` reads it to say whether a daemon is running at all: a heartbeat older
//! than [`STALE_AFTER_BEATS`] intervals means it is not (killed, or its host gone).

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::StateError;
use crate::sql::quote_ident;

/// How often the daemon writes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// Missed beats after which `status` says no daemon is running.
pub const STALE_AFTER_BEATS: f64 = 3.0;

/// Who is beating: written with every beat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonIdentity {
    pub pid: u32,
    pub host: String,
    pub version: String,
}

impl DaemonIdentity {
    /// This process.
    pub fn this_process() -> Self {
        // The kernel's view of the host name; no crate needed for one file.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        DaemonIdentity {
            pid: std::process::id(),
            host,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// A slot's heartbeat row, as `status` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub identity: DaemonIdentity,
    /// When this daemon started, RFC 3339.
    pub started_at: String,
    /// Seconds since the last beat.
    pub age_seconds: f64,
    pub interval_seconds: f64,
    /// When it stopped cleanly, RFC 3339; `None` while running or after a kill.
    pub stopped_at: Option<String>,
}

impl Heartbeat {
    /// A daemon beats for this slot now: not stopped cleanly, its last beat is younger than
    /// [`STALE_AFTER_BEATS`] intervals, and it is not known to be gone from this host.
    pub fn alive(&self) -> bool {
        self.stopped_at.is_none()
            && self.age_seconds <= STALE_AFTER_BEATS * self.interval_seconds
            && !self.gone_from(&DaemonIdentity::this_process().host)
    }

    /// Whether the beating process is known to be gone: it beat from `host` (this one) and no
    /// process has its pid any more. This tells a `kill -9` at once instead of after the
    /// heartbeat goes stale. From another host nothing is known, so only the heartbeat's age
    /// counts; a pid reused by another program also leaves only the age (the safe side: a
    /// binary may be renamed, so the name proves nothing). Two containers given the same host
    /// name but separate pid namespaces would defeat this; container host names are their ids
    /// unless set by hand.
    fn gone_from(&self, host: &str) -> bool {
        self.identity.host == host
            && matches!(
                std::fs::metadata(format!("/proc/{}", self.identity.pid)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound
            )
    }
}

/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct DaemonStore {
    client: Arc<Client>,
    schema: String,
    table: String,
}

impl DaemonStore {
    /// A store over `client`; the schema must be migrated for writes (`status` reads without
    /// migrating and takes a missing table for no heartbeat).
    pub fn new(client: Arc<Client>, schema: &str) -> Self {
        DaemonStore {
            client,
            schema: schema.to_owned(),
            table: format!("{}.daemon_heartbeats", quote_ident(schema)),
        }
    }

    fn error(&self, what: String, source: tokio_postgres::Error) -> StateError {
        StateError::Query {
            what,
            schema: self.schema.clone(),
            source: source.into(),
        }
    }

    /// One beat for `slot`; `started` is the first beat of this process (sets `started_at`).
    pub async fn beat(
        &self,
        slot: &str,
        me: &DaemonIdentity,
        every: Duration,
        started: bool,
    ) -> Result<(), StateError> {
        let pid = i32::try_from(me.pid).unwrap_or(i32::MAX);
        let sql = format!(
            "INSERT INTO {} AS h (slot, pid, host, version, started_at, beat_at, interval_seconds, stopped_at) \
             VALUES ($1, $2, $3, $4, now(), now(), $5, NULL) \
             ON CONFLICT (slot) DO UPDATE SET pid = excluded.pid, host = excluded.host, \
                 version = excluded.version, beat_at = excluded.beat_at, \
                 interval_seconds = excluded.interval_seconds, stopped_at = NULL, \
                 started_at = CASE WHEN $6 THEN excluded.started_at ELSE h.started_at END",
            self.table
        );
        self.client
            .execute(
                &sql,
                &[
                    &slot,
                    &pid,
                    &me.host,
                    &me.version,
                    &every.as_secs_f64(),
                    &started,
                ],
            )
            .await
            .map_err(|e| self.error(format!("writing the heartbeat of slot {slot:?}"), e))?;
        Ok(())
    }

    /// Marks `slot`'s daemon stopped (a clean end), if `me` is the one that beat last.
    pub async fn stopped(&self, slot: &str, me: &DaemonIdentity) -> Result<(), StateError> {
        let pid = i32::try_from(me.pid).unwrap_or(i32::MAX);
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET stopped_at = now() WHERE slot = $1 AND pid = $2 AND host = $3",
                    self.table
                ),
                &[&slot, &pid, &me.host],
            )
            .await
            .map_err(|e| self.error(format!("marking the daemon of slot {slot:?} stopped"), e))?;
        Ok(())
    }

    /// The heartbeat of `slot`, if a daemon ever wrote one.
    pub async fn load(&self, slot: &str) -> Result<Option<Heartbeat>, StateError> {
        let what = || format!("reading the heartbeat of slot {slot:?} from {}", self.table);
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT pid, host, version, \
                        to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        extract(epoch FROM now() - beat_at)::float8, interval_seconds, \
                        to_char(stopped_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                     FROM {} WHERE slot = $1",
                    self.table
                ),
                &[&slot],
            )
            .await
            .map_err(|e| self.error(what(), e))?;
        let Some(r) = row else { return Ok(None) };
        let get = |e| self.error(what(), e);
        let pid: i32 = r.try_get(0).map_err(get)?;
        Ok(Some(Heartbeat {
            identity: DaemonIdentity {
                pid: u32::try_from(pid).unwrap_or(0),
                host: r.try_get(1).map_err(get)?,
                version: r.try_get(2).map_err(get)?,
            },
            started_at: r.try_get(3).map_err(get)?,
            // A clock step backwards makes a negative age: that is a fresh beat.
            age_seconds: r.try_get::<_, f64>(4).map_err(get)?.max(0.0),
            interval_seconds: r.try_get(5).map_err(get)?,
            stopped_at: r.try_get(6).map_err(get)?,
        }))
    }
}

impl std::fmt::Debug for DaemonStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonStore")
            .field("table", &self.table)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(pid: u32, host: &str) -> Heartbeat {
        Heartbeat {
            identity: DaemonIdentity {
                pid,
                host: host.into(),
                version: "0".into(),
            },
            started_at: String::new(),
            age_seconds: 1.0,
            interval_seconds: 5.0,
            stopped_at: None,
        }
    }

    #[test]
    fn a_fresh_beat_from_a_process_gone_from_this_host_is_not_alive() {
        let here = DaemonIdentity::this_process().host;
        // No process has this pid (above Linux's pid_max).
        assert!(!beat(u32::MAX - 1, &here).alive());
        // A process with the pid exists here: only the age counts.
        assert!(beat(std::process::id(), &here).alive());
        // From another host only the age counts.
        assert!(beat(u32::MAX - 1, "another-host").alive());
        let mut stale = beat(u32::MAX - 1, "another-host");
        stale.age_seconds = 60.0;
        assert!(!stale.alive());
    }
}
