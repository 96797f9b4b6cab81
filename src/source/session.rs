//! A replication-protocol session with PostgreSQL, built on postgres-protocol's message codec
//! and SCRAM (the published tokio-postgres cannot open one).
//!
//! ```text
//! connect ─▶ [SSLRequest ─▶ TLS] ─▶ StartupMessage(replication=database) ─▶ auth
//!         ─▶ simple queries (IDENTIFY_SYSTEM, SQL, CREATE_REPLICATION_SLOT)
//!         ─▶ START_REPLICATION ─▶ CopyBoth: CopyData frames in, standby status updates out
//! ```
//!
//! Authentication keeps the URL's rules (`pgconn::AuthPolicy`): each request of the server is
//! checked before it is answered (`require_auth`, `channel_binding`), SCRAM binds to the TLS
//! channel (SCRAM-SHA-256-PLUS, `tls-server-end-point`) when the server offers it over TLS,
//! and `AuthenticationOk` is accepted only after a SCRAM exchange that was started finished
//! (with the server's signature verified).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::disposition::{sqlstate_kind, Classify, ErrorKind};
use crate::lsn::Lsn;
use crate::pgconn::auth::{AuthRequest, Link};
use crate::pgconn::tls;
use crate::pgconn::{
    AuthRefusal, ChannelBinding, ConnInfo, Host, Socket, SslMode, TargetSessionAttrs, Transport,
};

/// Read granularity: large enough that a busy stream costs few syscalls.
const READ_CHUNK: usize = 256 * 1024;
/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// An error PostgreSQL reported (an `ErrorResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `42501`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

impl ServerError {
    fn parse(body: &backend::ErrorResponseBody) -> ServerError {
        let mut e = ServerError {
            severity: "ERROR".into(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        let mut fields = body.fields();
        // A malformed field list still leaves whatever was parsed before it.
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        e
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("could not connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {target} timed out after {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("server {target} refused TLS, but sslmode={} requires it\nHINT: enable ssl on the server or use sslmode=prefer", mode.as_str())]
    TlsRefused { target: String, mode: SslMode },
    #[error("TLS handshake with {target} failed")]
    Tls {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    TlsConfig(#[from] tls::TlsConfigError),
    /// (The authentication policy refuses such a request first, see `AuthRefusal::NoPassword`;
    /// this stays for a request the policy let through without a password.)
    #[error("server asked for a password for user {user}, but the connection string gives none\nHINT: add a line for this server to ~/.pgpass (or the file PGPASSFILE names), set PGPASSWORD, or put it in the string from an environment variable: password=${{SOURCE_PASSWORD}}")]
    PasswordRequired { user: String },
    #[error("server requested an authentication method pgfanout does not support ({0}); configure pg_hba.conf for scram-sha-256, md5, password or trust")]
    UnsupportedAuth(&'static str),
    #[error("SCRAM authentication failed")]
    Scram(#[source] io::Error),
    #[error("pgfanout refused to authenticate to {target}: {refusal}")]
    AuthRefused {
        target: String,
        refusal: AuthRefusal,
    },
    #[error("{context}: {error}")]
    // Boxed: keeps every Result of the session small on the hot path.
    Server {
        context: String,
        error: Box<ServerError>,
    },
    #[error("connection to the server was lost")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("{target} is not what target_session_attrs={} asks for ({})", attrs.as_str(), crate::pgconn::not_target_reason(*attrs))]
    NotTarget {
        target: String,
        attrs: TargetSessionAttrs,
    },
    /// Several hosts, none of which would do: each one's failure, in the order tried.
    #[error("could not connect to any of the {} hosts: {}", .0.len(), AllHosts(.0))]
    AllHosts(Vec<SessionError>),
}

/// Each failure with its causes, one after another (the error has no single source).
struct AllHosts<'a>(&'a [SessionError]);

impl fmt::Display for AllHosts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{}", crate::report::Chain(e))?;
        }
        Ok(())
    }
}

impl Classify for SessionError {
    /// Connection-level trouble and server shutdowns are transient; authentication,
    /// permissions and bad requests are not.
    fn kind(&self) -> ErrorKind {
        match self {
            SessionError::Connect { .. } | SessionError::ConnectTimeout { .. } => {
                ErrorKind::Transient
            }
            SessionError::Io(_) => ErrorKind::Transient,
            // A failover can make a standby the primary.
            SessionError::NotTarget { .. } => ErrorKind::Transient,
            SessionError::AllHosts(errors) => {
                if errors.iter().any(|e| e.kind() == ErrorKind::Transient) {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Definite
                }
            }
            // 55006, object in use: a slot still held by a session that is going away.
            SessionError::Server { error, .. } if error.code == "55006" => ErrorKind::Transient,
            SessionError::Server { error, .. } => sqlstate_kind(&error.code),
            _ => ErrorKind::Definite,
        }
    }
}

impl SessionError {
    pub fn server_code(&self) -> Option<&str> {
        match self {
            SessionError::Server { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One row of a simple-query result, values in text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub values: Vec<Option<String>>,
}

impl Row {
    pub fn get(&self, i: usize) -> Option<&str> {
        self.values.get(i).and_then(|v| v.as_deref())
    }
}

/// A frame read while streaming.
#[derive(Debug)]
pub enum CopyFrame {
    Data(Bytes),
    /// The server ended the COPY (for example on a timeline switch or shutdown).
    Done,
}

pub struct Session {
    stream: Pin<Box<dyn Stream>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    target: String,
    transport: Transport,
    /// The server certificate's `tls-server-end-point` data, when encrypted and computable.
    end_point: Option<Vec<u8>>,
    /// Counted in the open connections while the session lives.
    _open: crate::telemetry::OpenConnection,
}

impl Session {
    /// Connects and authenticates. `replication` is the value of the `replication` startup
    /// parameter (`database` for a logical replication session), or `None` for plain SQL.
    /// With several hosts, tries each in order (as libpq) and settles on the first that
    /// connects and is what `target_session_attrs` asks for.
    pub async fn connect(
        info: &ConnInfo,
        replication: Option<&str>,
    ) -> Result<Session, SessionError> {
        let mut failures = Vec::new();
        for attempt in info.attempts() {
            match Self::connect_one(&attempt, replication).await {
                Ok(session) => return Ok(session),
                Err(e) if info.more_hosts.is_empty() => return Err(e),
                Err(e) => {
                    debug!(target = %attempt, error = %crate::report::Chain(&e), "host skipped; trying the next");
                    failures.push(e);
                }
            }
        }
        Err(SessionError::AllHosts(failures))
    }

    /// One attempt, to `info`'s first host only.
    async fn connect_one(
        info: &ConnInfo,
        replication: Option<&str>,
    ) -> Result<Session, SessionError> {
        let target = info.to_string();
        let connect = Self::connect_inner(info, replication, target.clone());
        match info.connect_timeout {
            Some(timeout) => tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| SessionError::ConnectTimeout { target, timeout })?,
            None => connect.await,
        }
    }

    async fn connect_inner(
        info: &ConnInfo,
        replication: Option<&str>,
        target: String,
    ) -> Result<Session, SessionError> {
        let connect_err = |source| SessionError::Connect {
            target: target.clone(),
            source,
        };
        // TCP with nodelay and keepalive, or a unix socket (never TLS there, as libpq).
        let socket = Socket::connect(info).await.map_err(connect_err)?;
        let (stream, transport, end_point): (Pin<Box<dyn Stream>>, _, _) =
            match (socket, &info.host) {
                (Socket::Tcp(tcp), Host::Tcp(host)) if info.sslmode != SslMode::Disable => {
                    Self::negotiate_tls(tcp, info, host, &target).await?
                }
                (Socket::Tcp(tcp), _) => (Box::pin(tcp), Transport::Tcp, None),
                (Socket::Unix(unix), _) => (Box::pin(unix), Transport::Unix, None),
            };
        let mut session = Session {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            target,
            transport,
            end_point,
            _open: crate::telemetry::OpenConnection::new(match replication {
                Some(_) => "replication",
                None => "sql",
            }),
        };
        session.startup(info, replication).await?;
        crate::pgconn::warn_if_plaintext(info, session.transport);
        if let Some((probe, disqualifies)) = info.target_session_attrs.probe() {
            let rows = session.simple_query(probe).await?;
            if rows.first().and_then(|r| r.get(0)) == Some(disqualifies) {
                return Err(SessionError::NotTarget {
                    target: session.target.clone(),
                    attrs: info.target_session_attrs,
                });
            }
        }
        Ok(session)
    }

    /// How this session travels (unix socket, TCP, TLS).
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// SSLRequest, then TLS when the server agrees: the stream, how it travels, and the
    /// certificate's channel binding data.
    async fn negotiate_tls(
        mut tcp: TcpStream,
        info: &ConnInfo,
        host: &str,
        target: &str,
    ) -> Result<(Pin<Box<dyn Stream>>, Transport, Option<Vec<u8>>), SessionError> {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await?;
        let answer = tcp.read_u8().await?;
        match answer {
            b'S' => {
                let connector = tls::connector(info)?;
                let name = tls::server_name(host)?;
                let stream =
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|source| SessionError::Tls {
                            target: target.to_owned(),
                            source,
                        })?;
                let end_point = tls::end_point_of(stream.get_ref().1);
                Ok((Box::pin(stream), Transport::Tls, end_point))
            }
            b'N' if info.sslmode == SslMode::Prefer => Ok((Box::pin(tcp), Transport::Tcp, None)),
            b'N' => Err(SessionError::TlsRefused {
                target: target.to_owned(),
                mode: info.sslmode,
            }),
            other => Err(SessionError::Protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            ))),
        }
    }

    async fn startup(
        &mut self,
        info: &ConnInfo,
        replication: Option<&str>,
    ) -> Result<(), SessionError> {
        // Fixed output formats make the text values the decoder and value parser see predictable.
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &info.user),
            ("database", &info.dbname),
            ("application_name", &info.application_name),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("IntervalStyle", "postgres"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
        ];
        if let Some(r) = replication {
            params.push(("replication", r));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)?;
        self.flush().await?;

        let policy = info.auth_policy();
        let link = Link {
            encrypted: self.transport == Transport::Tls,
            binding_data: self.end_point.is_some(),
        };
        let target = self.target.clone();
        let refused = |refusal| SessionError::AuthRefused {
            target: target.clone(),
            refusal,
        };
        // Each request is checked against the URL's rules before anything is sent back.
        let check = |request| policy.check(request, link).map_err(refused);
        let mut asked = false;
        let mut authenticated = false;
        let mut scram: Option<sasl::ScramSha256> = None;
        let mut scram_done = false;
        loop {
            match self.read_message().await? {
                backend::Message::AuthenticationOk => {
                    if !asked {
                        check(AuthRequest::NoneAsked)?;
                    }
                    if scram.is_some() && !scram_done {
                        return Err(SessionError::Protocol(
                            "the server ended authentication before SCRAM finished".into(),
                        ));
                    }
                    authenticated = true;
                }
                backend::Message::AuthenticationCleartextPassword => {
                    asked = true;
                    check(AuthRequest::Cleartext)?;
                    let pw = Self::password(info)?;
                    frontend::password_message(pw.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    asked = true;
                    check(AuthRequest::Md5)?;
                    let pw = Self::password(info)?;
                    let hash = md5_hash(info.user.as_bytes(), pw.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    asked = true;
                    let mut mechanisms = body.mechanisms();
                    let (mut has_scram, mut has_plus) = (false, false);
                    while let Some(m) = mechanisms.next()? {
                        has_scram |= m == sasl::SCRAM_SHA_256;
                        has_plus |= m == sasl::SCRAM_SHA_256_PLUS;
                    }
                    check(AuthRequest::Sasl {
                        plus_offered: has_plus,
                    })?;
                    if !has_scram && !has_plus {
                        return Err(SessionError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
                    }
                    let pw = Self::password(info)?;
                    // As libpq: bind to the TLS channel when both sides can; otherwise tell
                    // the server whether the client could have ('y': it could, so a server
                    // that offered PLUS and sees 'y' knows the offer was stripped on the way).
                    let end_point = self
                        .end_point
                        .clone()
                        .filter(|_| info.channel_binding != ChannelBinding::Disable);
                    let (mechanism, binding) = match end_point {
                        Some(data) if has_plus => (
                            sasl::SCRAM_SHA_256_PLUS,
                            sasl::ChannelBinding::tls_server_end_point(data),
                        ),
                        Some(_) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
                        None => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
                    };
                    if mechanism == sasl::SCRAM_SHA_256 && !has_scram {
                        return Err(SessionError::UnsupportedAuth(
                            "SCRAM-SHA-256-PLUS only, without channel binding data",
                        ));
                    }
                    let s = sasl::ScramSha256::new(pw.as_bytes(), binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf)?;
                    self.flush().await?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        SessionError::Protocol("SASL continue without SASL start".into())
                    })?;
                    s.update(body.data()).map_err(SessionError::Scram)?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        SessionError::Protocol("SASL final without SASL start".into())
                    })?;
                    // Verifies the server's signature: the server knew the password (and,
                    // with PLUS, saw the same TLS channel).
                    s.finish(body.data()).map_err(SessionError::Scram)?;
                    scram_done = true;
                }
                backend::Message::AuthenticationKerberosV5
                | backend::Message::AuthenticationGss
                | backend::Message::AuthenticationGssContinue(_) => {
                    check(AuthRequest::Gss)?;
                    return Err(SessionError::UnsupportedAuth("GSSAPI/Kerberos"));
                }
                backend::Message::AuthenticationSspi => {
                    check(AuthRequest::Sspi)?;
                    return Err(SessionError::UnsupportedAuth("SSPI"));
                }
                backend::Message::AuthenticationScmCredential => {
                    return Err(SessionError::UnsupportedAuth("SCM credentials"))
                }
                backend::Message::ErrorResponse(body) => {
                    return Err(SessionError::Server {
                        context: format!("connecting to {} as user {}", self.target, info.user),
                        error: Box::new(ServerError::parse(&body)),
                    })
                }
                backend::Message::ParameterStatus(_) | backend::Message::BackendKeyData(_) => {}
                backend::Message::NoticeResponse(body) => log_notice(&body),
                backend::Message::ReadyForQuery(_) if authenticated => return Ok(()),
                _ => {
                    return Err(SessionError::Protocol(
                        "unexpected message during startup".into(),
                    ))
                }
            }
        }
    }

    fn password(info: &ConnInfo) -> Result<&str, SessionError> {
        info.password
            .as_ref()
            .map(|p| p.expose())
            .ok_or_else(|| SessionError::PasswordRequired {
                user: info.user.clone(),
            })
    }

    /// Runs one simple query and returns its rows (of the last result set).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, SessionError> {
        debug!(query = sql, "simple query");
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::RowDescription(_) => rows.clear(),
                backend::Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut values = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(range) = ranges.next()? {
                        values.push(match range {
                            Some(r) => Some(
                                String::from_utf8_lossy(buf.get(r).ok_or_else(|| {
                                    SessionError::Protocol("DataRow value out of bounds".into())
                                })?)
                                .into_owned(),
                            ),
                            None => None,
                        });
                    }
                    rows.push(Row { values });
                }
                backend::Message::CommandComplete(_) | backend::Message::EmptyQueryResponse => {}
                backend::Message::NoticeResponse(body) => log_notice(&body),
                backend::Message::ParameterStatus(_) => {}
                backend::Message::ErrorResponse(body) => {
                    error.get_or_insert(ServerError::parse(&body));
                }
                backend::Message::ReadyForQuery(_) => {
                    return match error {
                        Some(error) => Err(SessionError::Server {
                            context: format!("running {}", first_words(sql)),
                            error: Box::new(error),
                        }),
                        None => Ok(rows),
                    };
                }
                backend::Message::CopyOutResponse(_) | backend::Message::CopyInResponse(_) => {
                    return Err(SessionError::Protocol(format!(
                        "{} started a COPY, which simple_query does not handle",
                        first_words(sql)
                    )))
                }
                _ => {
                    return Err(SessionError::Protocol(
                        "unexpected message in a query response".into(),
                    ))
                }
            }
        }
    }

    /// Sends `START_REPLICATION …` and waits for the server to enter CopyBoth mode.
    pub async fn start_copy_both(&mut self, command: &str) -> Result<(), SessionError> {
        debug!(command, "starting replication");
        frontend::query(command, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            self.fill_header().await?;
            let tag = self.rbuf[0];
            if tag == b'W' {
                // CopyBothResponse: not in postgres-protocol's backend parser; its body (format
                // codes) carries nothing we need.
                let len = frame_len(&self.rbuf)?;
                self.fill(len).await?;
                self.rbuf.advance(len);
                return Ok(());
            }
            match self.read_message().await? {
                backend::Message::ErrorResponse(body) => {
                    let error = ServerError::parse(&body);
                    // The server follows an error with ReadyForQuery; consume it so the session
                    // stays usable.
                    self.wait_ready().await?;
                    return Err(SessionError::Server {
                        context: format!("running {}", first_words(command)),
                        error: Box::new(error),
                    });
                }
                backend::Message::NoticeResponse(body) => log_notice(&body),
                backend::Message::ParameterStatus(_) => {}
                _ => {
                    return Err(SessionError::Protocol(
                        "unexpected answer to START_REPLICATION".into(),
                    ))
                }
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<(), SessionError> {
        loop {
            if let backend::Message::ReadyForQuery(_) = self.read_message().await? {
                return Ok(());
            }
        }
    }

    /// The next frame of the CopyBoth stream. Cancel-safe: a cancelled call loses no bytes.
    pub async fn next_copy_frame(&mut self) -> Result<CopyFrame, SessionError> {
        loop {
            if let Some(frame) = self.try_copy_frame()? {
                return Ok(frame);
            }
            self.read_more().await?;
        }
    }

    /// Whether a whole frame is already buffered (so the next call will not wait on the network).
    pub fn has_buffered_frame(&self) -> bool {
        match frame_len(&self.rbuf) {
            Ok(len) => self.rbuf.len() >= len,
            Err(_) => !self.rbuf.is_empty(),
        }
    }

    /// The next frame if one is already buffered; never waits.
    pub fn try_copy_frame(&mut self) -> Result<Option<CopyFrame>, SessionError> {
        loop {
            if self.rbuf.len() < 5 {
                return Ok(None);
            }
            let len = frame_len(&self.rbuf)?;
            if self.rbuf.len() < len {
                self.rbuf.reserve(len - self.rbuf.len());
                return Ok(None);
            }
            match self.rbuf[0] {
                // Hot path: split the frame off without copying; values stay slices of it.
                b'd' => {
                    let mut frame = self.rbuf.split_to(len).freeze();
                    if len > READ_CHUNK {
                        // The buffer was grown for this frame: let the frame have it, and move
                        // the few bytes after it to one of the usual size, so the session
                        // never keeps (nor reuses) a buffer that big.
                        let mut rest = BytesMut::with_capacity(READ_CHUNK.max(self.rbuf.len()));
                        rest.extend_from_slice(&self.rbuf);
                        self.rbuf = rest;
                    }
                    frame.advance(5);
                    return Ok(Some(CopyFrame::Data(frame)));
                }
                b'c' => {
                    self.rbuf.advance(len);
                    return Ok(Some(CopyFrame::Done));
                }
                _ => match backend::Message::parse(&mut self.rbuf)? {
                    Some(backend::Message::ErrorResponse(body)) => {
                        return Err(SessionError::Server {
                            context: "streaming changes".into(),
                            error: Box::new(ServerError::parse(&body)),
                        })
                    }
                    // Informational: look at the next buffered frame.
                    Some(backend::Message::NoticeResponse(body)) => log_notice(&body),
                    Some(backend::Message::ParameterStatus(_)) => {}
                    Some(_) => {
                        return Err(SessionError::Protocol(
                            "unexpected message while streaming".into(),
                        ))
                    }
                    None => return Ok(None),
                },
            }
        }
    }

    /// Sends a standby status update (`r`): how far the client has written, flushed and applied.
    pub async fn send_standby_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), SessionError> {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(write.0);
        body.put_u64(flush.0);
        body.put_u64(apply.0);
        body.put_i64(pg_now_micros());
        body.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(body.freeze())?.write(&mut self.wbuf);
        self.flush().await
    }

    /// Ends the session politely (CopyDone if streaming, then Terminate).
    pub async fn close(mut self, streaming: bool) -> Result<(), SessionError> {
        if streaming {
            frontend::copy_done(&mut self.wbuf);
        }
        frontend::terminate(&mut self.wbuf);
        self.flush().await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Cancel-safe: bytes leave `wbuf` as they are written, so a cancelled flush resumes where
    /// it stopped instead of resending or dropping part of a message.
    async fn flush(&mut self) -> Result<(), SessionError> {
        while !self.wbuf.is_empty() {
            if self.stream.write_buf(&mut self.wbuf).await? == 0 {
                return Err(SessionError::Io(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the server stopped accepting data",
                )));
            }
        }
        self.stream.flush().await?;
        Ok(())
    }

    async fn read_more(&mut self) -> Result<(), SessionError> {
        let spare = self.rbuf.capacity() - self.rbuf.len();
        // The rest of a frame being received: `try_copy_frame` made room for all of it, and
        // growing a buffer that holds most of a huge frame would copy it into one twice as big.
        let rest = match frame_len(&self.rbuf) {
            Ok(len) if self.rbuf.len() >= 5 => len.saturating_sub(self.rbuf.len()),
            _ => 0,
        };
        if spare < READ_CHUNK / 4 && !(rest > 0 && spare >= rest) {
            self.rbuf.reserve(READ_CHUNK);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(SessionError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        Ok(())
    }

    async fn fill(&mut self, len: usize) -> Result<(), SessionError> {
        while self.rbuf.len() < len {
            self.read_more().await?;
        }
        Ok(())
    }

    async fn fill_header(&mut self) -> Result<(), SessionError> {
        self.fill(5).await
    }

    async fn read_message(&mut self) -> Result<backend::Message, SessionError> {
        loop {
            if let Some(m) = backend::Message::parse(&mut self.rbuf)? {
                return Ok(m);
            }
            self.read_more().await?;
        }
    }
}

/// Total length of the message at the start of `buf` (tag byte included), once 5 bytes are in.
fn frame_len(buf: &[u8]) -> Result<usize, SessionError> {
    match backend::Header::parse(buf)? {
        Some(h) => Ok(h.len() as usize + 1),
        None => Ok(5),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn log_notice(body: &backend::NoticeResponseBody) {
    let mut fields = body.fields();
    let mut message = String::new();
    while let Ok(Some(f)) = fields.next() {
        if f.type_() == b'M' {
            message = String::from_utf8_lossy(f.value_bytes()).into_owned();
        }
    }
    warn!(notice = %message, "server notice");
}

/// Now, in microseconds since PostgreSQL's epoch.
fn pg_now_micros() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    since_unix - PG_EPOCH_OFFSET_MICROS
}
