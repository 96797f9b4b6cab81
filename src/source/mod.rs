//! The source stage: one logical replication slot, decoded into row changes.
//!
//! ```text
//!              ┌──────────────── LogicalStream ─────────────────┐
//! PostgreSQL ─▶│ Session (CopyBoth) ─▶ pgoutput::decode_message  │─▶ SourceEvent
//!  walsender   │      ▲                  │ relation cache       │   (Begin, Change, Commit,
//!              │      └─ standby status ◀┘ (flushed = confirmed)│    Message)
//!              └────────────────────────────────────────────────┘
//! ```
//!
//! Changes are handed out as they are decoded; nothing buffers a transaction in memory. The
//! position reported to PostgreSQL as flushed only moves when the consumer calls
//! [`LogicalStream::confirm`], or, while no transaction is pending, to a keepalive's WAL end
//! (so an idle slot does not hold WAL).
//!
//! With protocol 2 (PostgreSQL 14 and later, `source.protocol`) the server streams a large
//! transaction while it is still in progress, instead of holding every later commit until it
//! has decoded the whole of it. Its blocks go to the [`spool`] on disk; at its Stream Commit
//! the stream hands it out as Begin, changes, Commit — exactly what protocol 1 sends at that
//! commit — so consumers see transactions in commit order whichever protocol runs, and number
//! them the same.

pub mod catalog;
pub mod pgoutput;
pub mod rows;
pub mod session;
pub mod slot;
pub mod spool;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::change::{Op, Relation, RowChange, TupleShapeError};
use crate::config::{Protocol, SourceConfig};
use crate::disposition::{Classify, ErrorKind};
use crate::lsn::Lsn;
use crate::value::{PgType, Timestamp};
use pgoutput::{DecodeError, PgOutput, ReplicationMessage};
use session::{CopyFrame, Session, SessionError};
use spool::{Replay, Spool, SpoolError};

pub use slot::{ServerIdentity, SlotPlan, SlotRow, SlotSpec};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("wal_level is {actual}, but logical decoding needs logical\nHINT: set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the server")]
    WalLevel { actual: String },
    #[error("user {user} may not open a replication connection\nHINT: ALTER ROLE {user} WITH REPLICATION (or use a role that has it)")]
    NoReplicationPrivilege {
        user: String,
        #[source]
        source: Box<SessionError>,
    },
    #[error("replication slot {slot} uses output plugin {plugin}, but pgfanout needs pgoutput\nHINT: drop it (SELECT pg_drop_replication_slot('{slot}')) or configure another source.slot")]
    SlotPlugin { slot: String, plugin: String },
    #[error("replication slot {slot} belongs to database {actual}, not {expected}\nHINT: connect to database {actual} or configure another source.slot")]
    SlotDatabase {
        slot: String,
        actual: String,
        expected: String,
    },
    #[error("replication slot {slot} is physical; pgfanout needs a logical slot\nHINT: configure another source.slot")]
    SlotPhysical { slot: String },
    #[error("replication slot {slot} does not exist\nHINT: set source.manage = true to create it, or create it: SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")]
    SlotMissing { slot: String },
    #[error("publication {publication} does not exist\nHINT: set source.manage = true to create it, or CREATE PUBLICATION {publication} FOR TABLE …")]
    PublicationMissing { publication: String },
    #[error("cannot read the replication stream")]
    Decode(#[from] DecodeError),
    #[error("pgoutput sent a {message} for relation oid {oid} before describing it with a Relation message")]
    UnknownRelation { message: &'static str, oid: u32 },
    #[error(transparent)]
    TupleShape(#[from] TupleShapeError),
    #[error("replication stream out of order: {0}")]
    Order(&'static str),
    #[error("the server ended the replication stream")]
    StreamEnded,
    #[error("source.protocol = 2 needs PostgreSQL 14 or later, but the server is version {version}\nHINT: set source.protocol = \"auto\" (protocol 1 on this server) or upgrade the server")]
    ProtocolUnsupported { version: String },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl Classify for SourceError {
    /// Reconnecting and resuming from the last confirmed position can succeed after trouble
    /// with the session or a stream the server ended; not after a malformed stream.
    fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Session(e) => e.kind(),
            SourceError::StreamEnded => ErrorKind::Transient,
            // The spool is emptied at the next start and the server streams again what was
            // not committed: a full disk can clear meanwhile.
            SourceError::Spool(e) if e.is_io() => ErrorKind::Transient,
            _ => ErrorKind::Definite,
        }
    }
}

/// What the stream hands to its consumer.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    Begin {
        xid: u32,
        final_lsn: Lsn,
        commit_time: Timestamp,
    },
    Change(RowChange),
    Commit {
        xid: u32,
        commit_lsn: Lsn,
        /// Confirming this LSN tells PostgreSQL the transaction need not be sent again.
        end_lsn: Lsn,
        commit_time: Timestamp,
    },
    /// A table's description; every later change of that table carries it.
    Relation(Arc<Relation>),
    /// A non-builtin type used by a published column.
    Type {
        oid: u32,
        schema: String,
        name: String,
    },
    /// The transaction was replicated into this database from elsewhere (replication origin).
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    /// The server's WAL position while it has nothing for us. Every frame yields an event, so a
    /// consumer sees when the stream has gone quiet (`has_buffered` is then false).
    Keepalive {
        wal_end: Lsn,
    },
    /// A `pg_logical_emit_message` message.
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

/// Enum types of the source database, whose oids are not fixed.
#[derive(Debug, Clone, Default)]
pub struct TypeRegistry {
    enums: HashSet<u32>,
    enum_arrays: HashSet<u32>,
}

/// Every enum type of the source database: its oid and its array type's oid (0 when it has
/// none). One text for both readers: the replication session at start-up ([`load_types`]) and
/// [`catalog::types`] over an ordinary connection.
pub(crate) const ENUM_TYPES_QUERY: &str =
    "SELECT oid, typarray FROM pg_catalog.pg_type WHERE typtype = 'e'";

impl TypeRegistry {
    /// A registry of these enum types: (enum oid, its array type's oid), as the rows of
    /// [`ENUM_TYPES_QUERY`] give them. An array oid of 0 (no array type) is ignored.
    pub fn from_enums(enums: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut types = TypeRegistry::default();
        for (oid, array) in enums {
            types.enums.insert(oid);
            if array != 0 {
                types.enum_arrays.insert(array);
            }
        }
        types
    }

    /// The type to parse a column's text as. Enums created after the stream started are kept
    /// as their text (`PgType::Other`), which is the value pgoutput sent anyway.
    pub fn pg_type(&self, oid: u32) -> PgType {
        if self.enums.contains(&oid) {
            PgType::Enum
        } else if self.enum_arrays.contains(&oid) {
            PgType::Array(Box::new(PgType::Enum))
        } else {
            PgType::from_oid(oid)
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct OpenTxn {
    xid: u32,
    commit_time: Timestamp,
}

pub struct LogicalStream {
    session: Session,
    slot: String,
    /// The pgoutput protocol version streaming (1 or 2).
    protocol: u8,
    /// Protocol 2: transactions streamed and not yet committed.
    spool: Option<Spool>,
    /// A committed streamed transaction being handed out.
    replay: Option<Replaying>,
    relations: HashMap<u32, Arc<Relation>>,
    types: TypeRegistry,
    txn: Option<OpenTxn>,
    /// Truncate of several relations: one change each, handed out one at a time.
    pending: VecDeque<SourceEvent>,
    /// Highest WAL end the server reported.
    received: Lsn,
    /// End of the last transaction handed to the consumer.
    last_commit_end: Lsn,
    /// Reported to PostgreSQL as flushed (and applied).
    flushed: Lsn,
    status_interval: Duration,
    next_status: Instant,
    /// Where a consumer that makes changes durable elsewhere publishes its durable LSN.
    durable: Option<tokio::sync::watch::Receiver<Lsn>>,
    frames_since_check: u32,
    /// Bytes of replication messages read (for the metrics: read once per transaction).
    bytes_received: u64,
}

/// While frames keep arriving, look at the clock once per this many.
const STATUS_CHECK_FRAMES: u32 = 1024;

/// A streamed transaction handed out at its Stream Commit: Begin, its spooled messages, Commit.
struct Replaying {
    records: Replay,
    xid: u32,
    flags: u8,
    commit_lsn: Lsn,
    end_lsn: Lsn,
    commit_time: i64,
    began: bool,
}

/// The first server version that streams in-progress transactions (protocol 2).
const STREAMING_SINCE: u32 = 140_000;

/// The protocol to start: the configured one, or by server version.
pub fn choose_protocol(configured: Protocol, server_version_num: u32) -> Result<u8, SourceError> {
    match configured {
        Protocol::V1 => Ok(1),
        Protocol::Auto if server_version_num >= STREAMING_SINCE => Ok(2),
        Protocol::Auto => Ok(1),
        Protocol::V2 if server_version_num >= STREAMING_SINCE => Ok(2),
        Protocol::V2 => Err(SourceError::ProtocolUnsupported {
            version: server_version_text(server_version_num),
        }),
    }
}

/// `server_version_num` as people write versions: 130004 → 13.4, 90624 → 9.6.24.
pub fn server_version_text(num: u32) -> String {
    if num >= 100_000 {
        format!("{}.{}", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100)
    }
}

impl LogicalStream {
    /// Connects, checks the server, ensures publication and slot as configured, and starts
    /// streaming from the slot's confirmed position.
    pub async fn start(cfg: &SourceConfig, slot: SlotSpec) -> Result<LogicalStream, SourceError> {
        let name = match &slot {
            SlotSpec::Named(n) => Some(n.as_str()),
            SlotSpec::Temporary => None,
        };
        let mut preflight = Preflight::connect(cfg, name).await?;
        // A missing publication is reported before a missing slot, as `check` does.
        preflight.ensure_publication(cfg).await?;
        let plan = slot::default_plan(cfg, &slot, preflight.slot.as_ref())?;
        preflight.stream(cfg, plan, None).await
    }
}

/// A replication session that has checked the server and read what start-up decides on (the
/// server's identity, the slot), before anything is created or streamed.
pub struct Preflight {
    session: Session,
    pub server: ServerIdentity,
    /// `server_version_num`, which decides the protocol.
    pub server_version_num: u32,
    /// The named slot as it is now (`None`: missing, or no slot was named).
    pub slot: Option<SlotRow>,
    publication_ensured: bool,
}

impl Preflight {
    /// Connects, checks `wal_level`, identifies the system and reads the slot `slot_name`.
    /// Changes nothing: `pgfanout log verify` uses it too.
    pub async fn connect(
        cfg: &SourceConfig,
        slot_name: Option<&str>,
    ) -> Result<Preflight, SourceError> {
        let mut session = Session::connect(&cfg.conn, Some("database"))
            .await
            .map_err(|e| match e.server_code() {
                Some("42501") => SourceError::NoReplicationPrivilege {
                    user: cfg.conn.user.clone(),
                    source: Box::new(e),
                },
                _ => SourceError::Session(e),
            })?;
        slot::check_wal_level(&mut session).await?;
        let server_version_num = slot::server_version_num(&mut session).await?;
        let server = slot::identify_system(&mut session).await?;
        let slot = match slot_name {
            Some(name) => slot::slot_state(&mut session, name).await?,
            None => None,
        };
        Ok(Preflight {
            session,
            server,
            server_version_num,
            slot,
            publication_ensured: false,
        })
    }

    /// The server's timeline history file for its current timeline (`TIMELINE_HISTORY`); `None`
    /// on timeline 1, which has none.
    pub async fn timeline_history(&mut self) -> Result<Option<String>, SourceError> {
        if self.server.timeline <= 1 {
            return Ok(None);
        }
        let rows = self
            .session
            .simple_query(&format!("TIMELINE_HISTORY {}", self.server.timeline))
            .await?;
        // Columns: filename, content.
        Ok(rows.first().and_then(|r| r.get(1)).map(str::to_owned))
    }

    /// Creates the publication, or adds missing tables to it, as configured (once).
    pub async fn ensure_publication(&mut self, cfg: &SourceConfig) -> Result<(), SourceError> {
        if !self.publication_ensured {
            slot::ensure_publication(&mut self.session, cfg).await?;
            self.publication_ensured = true;
        }
        Ok(())
    }

    /// Prepares the slot per `plan` and starts streaming. With protocol 2, transactions in
    /// progress are spooled in `spool_dir` (emptied first); without one, `source.protocol =
    /// "auto"` means protocol 1 and an explicit 2 spools in a temporary directory.
    pub async fn stream(
        self,
        cfg: &SourceConfig,
        plan: SlotPlan,
        spool_dir: Option<&std::path::Path>,
    ) -> Result<LogicalStream, SourceError> {
        let mut preflight = self;
        preflight.ensure_publication(cfg).await?;
        // Without a directory of its own to spool in (`tail`), "auto" keeps protocol 1: a
        // temporary directory may be memory (tmpfs), and such a consumer gains nothing from
        // receiving a transaction before it can hand it out.
        let configured = match (cfg.protocol, spool_dir) {
            (Protocol::Auto, None) => Protocol::V1,
            (configured, _) => configured,
        };
        let protocol = choose_protocol(configured, preflight.server_version_num)?;
        let Preflight {
            mut session, slot, ..
        } = preflight;
        let spool = match (protocol, spool_dir) {
            (1, _) => None,
            (_, Some(dir)) => Some(Spool::open(dir)?),
            (_, None) => Some(Spool::temporary()?),
        };
        let (slot_name, start_lsn) =
            slot::prepare_slot(&mut session, cfg, &plan, slot.as_ref()).await?;
        let types = load_types(&mut session).await?;
        // Protocol 2 streams a transaction once its decoded changes pass the server's
        // `logical_decoding_work_mem`, rather than spilling them to the server's disk.
        let streaming = if protocol >= 2 {
            ", streaming 'on'"
        } else {
            ""
        };
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '{protocol}'{streaming}, publication_names {}, messages 'true')",
            crate::sql::quote_ident(&slot_name),
            start_lsn,
            crate::sql::quote_literal(&crate::sql::quote_ident(&cfg.publication)),
        );
        session.start_copy_both(&command).await?;
        info!(slot = %slot_name, publication = %cfg.publication, lsn = %start_lsn, protocol, "streaming");
        Ok(LogicalStream {
            session,
            slot: slot_name,
            protocol,
            spool,
            replay: None,
            relations: HashMap::new(),
            types,
            txn: None,
            pending: VecDeque::new(),
            received: start_lsn,
            last_commit_end: start_lsn,
            flushed: start_lsn,
            status_interval: cfg.status_interval,
            next_status: Instant::now() + cfg.status_interval,
            durable: None,
            frames_since_check: 0,
            bytes_received: 0,
        })
    }
}

impl LogicalStream {
    pub fn slot(&self) -> &str {
        &self.slot
    }

    pub fn types(&self) -> &TypeRegistry {
        &self.types
    }

    /// The pgoutput protocol version streaming (1, or 2 with in-progress transactions).
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Streamed transactions not yet committed or aborted.
    pub fn open_streamed_transactions(&self) -> usize {
        self.spool.as_ref().map_or(0, Spool::open_transactions)
    }

    /// Bytes the streamed, uncommitted transactions hold in the spool.
    pub fn spooled_bytes(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::bytes)
    }

    /// The position reported to PostgreSQL as flushed.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// The highest WAL end the server reported.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// Bytes of replication messages read so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Whether the next call to [`next`](Self::next) can return without waiting on the network.
    pub fn has_buffered(&self) -> bool {
        !self.pending.is_empty() || self.replay.is_some() || self.session.has_buffered_frame()
    }

    /// The consumer has made everything up to `lsn` durable: PostgreSQL may release it.
    /// Reported with the next status update.
    pub fn confirm(&mut self, lsn: Lsn) {
        self.flushed = self.flushed.max(lsn);
    }

    /// Follow a durable position published by another task (the change-log writer): it is read
    /// whenever a status update is sent or a keepalive arrives, so confirmation needs no event.
    pub fn confirm_from(&mut self, durable: tokio::sync::watch::Receiver<Lsn>) {
        self.durable = Some(durable);
    }

    fn refresh_confirmed(&mut self) {
        if let Some(rx) = &self.durable {
            let lsn = *rx.borrow();
            self.flushed = self.flushed.max(lsn);
        }
    }

    /// Sends a status update now (for example before shutting down).
    pub async fn send_status(&mut self) -> Result<(), SourceError> {
        self.send_status_update(false).await
    }

    /// Closes the session after reporting the confirmed position.
    pub async fn close(mut self) -> Result<(), SourceError> {
        self.send_status_update(false).await?;
        self.session.close(true).await?;
        Ok(())
    }

    async fn send_status_update(&mut self, reply_requested: bool) -> Result<(), SourceError> {
        self.refresh_confirmed();
        let write = self.received.max(self.flushed);
        self.session
            .send_standby_status(write, self.flushed, self.flushed, reply_requested)
            .await?;
        self.next_status = Instant::now() + self.status_interval;
        debug!(write = %write, flushed = %self.flushed, "standby status sent");
        Ok(())
    }

    /// The next event. Sends status updates when due and answers keepalives.
    ///
    /// Cancel-safe: reads lose no bytes and a status update interrupted mid-write is completed
    /// by the next write, so it can sit in a `select!` with timers and shutdown.
    pub async fn next(&mut self) -> Result<SourceEvent, SourceError> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(ev);
            }
            if self.replay.is_some() {
                if let Some(ev) = self.next_replayed().await? {
                    return Ok(ev);
                }
                continue;
            }
            // Frames already buffered are taken without touching the clock or the timer wheel
            // (that cost showed in profiles); the status deadline is checked every
            // STATUS_CHECK_FRAMES frames while busy and before every wait on the network.
            // The status update comes before a frame is taken: a frame held across its await
            // would be lost if the caller dropped this future there.
            if self.frames_since_check >= STATUS_CHECK_FRAMES {
                self.frames_since_check = 0;
                if Instant::now() >= self.next_status {
                    self.send_status_update(false).await?;
                }
            }
            let frame = match self.session.try_copy_frame()? {
                Some(frame) => {
                    self.frames_since_check += 1;
                    frame
                }
                None => {
                    if Instant::now() >= self.next_status {
                        self.send_status_update(false).await?;
                    }
                    tokio::select! {
                        frame = self.session.next_copy_frame() => frame?,
                        _ = tokio::time::sleep_until(self.next_status) => continue,
                    }
                }
            };
            let data = match frame {
                CopyFrame::Data(data) => data,
                CopyFrame::Done => return Err(SourceError::StreamEnded),
            };
            self.bytes_received += data.len() as u64;
            match pgoutput::parse_replication_message(&data)? {
                ReplicationMessage::PrimaryKeepalive {
                    wal_end,
                    reply_requested,
                    ..
                } => {
                    self.received = self.received.max(wal_end);
                    self.refresh_confirmed();
                    // Nothing in flight and everything handed out confirmed: the WAL up to the
                    // server's end holds nothing for us, so the slot may move past it. A consumer
                    // that publishes its durable position (`confirm_from`) decides that itself:
                    // it must record how far it vouches for the stream before the slot moves.
                    if self.durable.is_none()
                        && self.txn.is_none()
                        && self.open_streamed_transactions() == 0
                        && self.flushed >= self.last_commit_end
                    {
                        self.flushed = self.flushed.max(wal_end);
                    }
                    if reply_requested {
                        self.send_status_update(false).await?;
                    }
                    return Ok(SourceEvent::Keepalive { wal_end });
                }
                ReplicationMessage::XLogData {
                    wal_start,
                    wal_end,
                    data,
                    ..
                } => {
                    self.received = self.received.max(wal_end);
                    if let Some(spool) = &mut self.spool {
                        // Inside a block everything but its Stop goes to disk undecoded; it
                        // is decoded when handed out at the commit.
                        if spool.in_block() {
                            match data.first() {
                                Some(b'E') => {}
                                // pgoutput may send a transaction's replication origin after
                                // its first Stream Start (`send_repl_origin`), without an xid;
                                // protocol 1 sends it after Begin, and consumers ignore it.
                                Some(b'O') => {
                                    pgoutput::decode_message(&data)?;
                                    continue;
                                }
                                _ => {
                                    spool.append(wal_start, &data)?;
                                    continue;
                                }
                            }
                        }
                    }
                    let message = pgoutput::decode_message(&data)?;
                    if let Some(ev) = self.apply(wal_start, message)? {
                        return Ok(ev);
                    }
                }
            }
        }
    }

    fn apply(&mut self, lsn: Lsn, message: PgOutput) -> Result<Option<SourceEvent>, SourceError> {
        let kind = message.kind();
        Ok(match message {
            PgOutput::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                if self.txn.is_some() {
                    return Err(SourceError::Order("Begin inside an open transaction"));
                }
                let commit_time = Timestamp::from_pg_epoch_micros(commit_time);
                self.txn = Some(OpenTxn { xid, commit_time });
                Some(SourceEvent::Begin {
                    xid,
                    final_lsn,
                    commit_time,
                })
            }
            PgOutput::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                let txn = self
                    .txn
                    .take()
                    .ok_or(SourceError::Order("Commit without Begin"))?;
                self.last_commit_end = self.last_commit_end.max(end_lsn);
                Some(SourceEvent::Commit {
                    xid: txn.xid,
                    commit_lsn,
                    end_lsn,
                    commit_time: Timestamp::from_pg_epoch_micros(commit_time),
                })
            }
            PgOutput::Origin { commit_lsn, name } => Some(SourceEvent::Origin { commit_lsn, name }),
            PgOutput::Relation(rel) => {
                debug!(oid = rel.oid, schema = %rel.schema, table = %rel.name, "relation");
                let rel = Arc::new(rel);
                self.relations.insert(rel.oid, rel.clone());
                Some(SourceEvent::Relation(rel))
            }
            PgOutput::Type { oid, schema, name } => Some(SourceEvent::Type { oid, schema, name }),
            PgOutput::Insert { relation, new } => {
                Some(self.change(kind, lsn, relation, Op::Insert { new })?)
            }
            PgOutput::Update { relation, old, new } => {
                Some(self.change(kind, lsn, relation, Op::Update { old, new })?)
            }
            PgOutput::Delete { relation, old } => {
                Some(self.change(kind, lsn, relation, Op::Delete { old })?)
            }
            PgOutput::Truncate {
                relations,
                cascade,
                restart_identity,
            } => {
                for oid in relations {
                    let ev = self.change(
                        kind,
                        lsn,
                        oid,
                        Op::Truncate {
                            cascade,
                            restart_identity,
                        },
                    )?;
                    self.pending.push_back(ev);
                }
                self.pending.pop_front()
            }
            PgOutput::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => Some(SourceEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            }),
            PgOutput::StreamStart { xid, first_segment } => {
                if self.txn.is_some() {
                    return Err(SourceError::Order("Stream Start inside a transaction"));
                }
                self.spool_for(kind)?.start(xid, first_segment)?;
                None
            }
            PgOutput::StreamStop => {
                self.spool_for(kind)?.stop()?;
                None
            }
            PgOutput::StreamAbort { xid, subxid } => {
                self.spool_for(kind)?.abort(xid, subxid)?;
                None
            }
            PgOutput::StreamCommit {
                xid,
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                if self.txn.is_some() {
                    return Err(SourceError::Order("Stream Commit inside a transaction"));
                }
                let records = self.spool_for(kind)?.commit(xid)?;
                self.replay = Some(Replaying {
                    records,
                    xid,
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                    began: false,
                });
                None
            }
        })
    }

    fn spool_for(&mut self, kind: &'static str) -> Result<&mut Spool, SourceError> {
        self.spool.as_mut().ok_or(SourceError::Order(match kind {
            "Stream Start" => "Stream Start on a protocol 1 stream",
            "Stream Stop" => "Stream Stop on a protocol 1 stream",
            "Stream Abort" => "Stream Abort on a protocol 1 stream",
            _ => "Stream Commit on a protocol 1 stream",
        }))
    }

    /// The next event of the streamed transaction being handed out, as protocol 1 would have
    /// sent it at its commit: Begin, its messages, Commit. `None` when a message gave no event.
    async fn next_replayed(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        let Some(r) = &mut self.replay else {
            return Ok(None);
        };
        if !r.began {
            r.began = true;
            let begin = PgOutput::Begin {
                final_lsn: r.commit_lsn,
                commit_time: r.commit_time,
                xid: r.xid,
            };
            let lsn = r.commit_lsn;
            return self.apply(lsn, begin);
        }
        // Handing out a large transaction reads no frames: keep the server's status current.
        // Before the next message is read, so that cancelling this future at the await loses
        // nothing (the caller selects on `next` with timers).
        self.frames_since_check += 1;
        if self.frames_since_check >= STATUS_CHECK_FRAMES {
            self.frames_since_check = 0;
            if Instant::now() >= self.next_status {
                self.send_status_update(false).await?;
            }
        }
        let Some(r) = &mut self.replay else {
            return Ok(None);
        };
        let Some(spooled) = r.records.next_message()? else {
            let commit = PgOutput::Commit {
                flags: r.flags,
                commit_lsn: r.commit_lsn,
                end_lsn: r.end_lsn,
                commit_time: r.commit_time,
            };
            let lsn = r.commit_lsn;
            self.replay = None;
            return self.apply(lsn, commit);
        };
        let (_, message) = pgoutput::decode_streamed(&spooled.message)?;
        if spooled.aborted && !matches!(message, PgOutput::Relation(_) | PgOutput::Type { .. }) {
            return Ok(None);
        }
        self.apply(spooled.wal_start, message)
    }

    fn change(
        &self,
        kind: &'static str,
        lsn: Lsn,
        oid: u32,
        op: Op,
    ) -> Result<SourceEvent, SourceError> {
        let txn = self
            .txn
            .ok_or(SourceError::Order("row change outside a transaction"))?;
        let relation = self
            .relations
            .get(&oid)
            .ok_or(SourceError::UnknownRelation { message: kind, oid })?
            .clone();
        relation.check_op(&op)?;
        Ok(SourceEvent::Change(RowChange {
            lsn,
            xid: txn.xid,
            commit_time: txn.commit_time,
            relation,
            op,
        }))
    }
}

async fn load_types(session: &mut Session) -> Result<TypeRegistry, SourceError> {
    let rows = session.simple_query(ENUM_TYPES_QUERY).await?;
    // Both columns are oids, never NULL; a row that does not parse is left out.
    Ok(TypeRegistry::from_enums(rows.iter().filter_map(|row| {
        let oid = row.get(0)?.parse().ok()?;
        let array = row.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Some((oid, array))
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_follows_the_server_version_unless_configured() {
        assert_eq!(choose_protocol(Protocol::Auto, 150_018).unwrap(), 2);
        assert_eq!(choose_protocol(Protocol::Auto, 140_000).unwrap(), 2);
        assert_eq!(choose_protocol(Protocol::Auto, 130_004).unwrap(), 1);
        assert_eq!(choose_protocol(Protocol::V1, 170_000).unwrap(), 1);
        assert_eq!(choose_protocol(Protocol::V2, 140_001).unwrap(), 2);
        let e = choose_protocol(Protocol::V2, 130_004)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("source.protocol = 2") && e.contains("13.4"),
            "{e}"
        );
        assert_eq!(server_version_text(90_624), "9.6.24");
    }
}
