//! Ordinary SQL connections (tokio-postgres) with the URL's TLS and authentication rules.
//!
//! ```text
//!   socket (ours: TCP with keepalive, or unix) ─▶ StartupGuard ─▶ tokio-postgres
//!        'S' to the SSLRequest ─▶ rustls (GuardedTls) ─▶ StartupGuard ─┘ (channel binding data)
//! ```
//!
//! tokio-postgres enforces `channel_binding` itself but has no `require_auth`. So pgfanout
//! opens the socket and hands it to the driver through a [`StartupGuard`]: until the server
//! says `AuthenticationOk`, the guard passes the server's messages on only whole and only once
//! [`AuthPolicy::check`] allowed them. A request the rules refuse never reaches the driver;
//! in its place the driver reads an error response (SQLSTATE 28000) naming the rule, so the
//! password or its hash is never sent, and the error is a definite one, as a refused login
//! is. (A pre-flight connection asking the server which method it wants would not do: the
//! next connection, which carries the password, may be answered differently.) After
//! `AuthenticationOk` the guard only forwards bytes.
//!
//! The guard also records whether the session is encrypted, for the warning about passwords
//! on unencrypted connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

use super::auth::{AuthPolicy, AuthRefusal, AuthRequest, Link};
use super::tls::{self, TlsConfigError};
use super::{ConnInfo, Host, PgError, SslMode, TargetSessionAttrs};
use crate::disposition::{pg_error_kind, Classify, ErrorKind};

/// Most of an authentication request's body the guard reads before deciding (a SASL mechanism
/// list is a few dozen bytes); the rest of a longer one (a GSSAPI token) is passed on unread.
const MAX_AUTH_BODY: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SqlConnectError {
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// Every failure of the attempt itself, the client's own refusals included (those carry
    /// SQLSTATE 28000, see the module comment).
    #[error("could not connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: PgError,
    },
    #[error("{target} is not what target_session_attrs={} asks for ({})", attrs.as_str(), not_target_reason(*attrs))]
    NotTarget {
        target: String,
        attrs: TargetSessionAttrs,
    },
    /// Several hosts, none of which would do: each one's failure, in the order tried.
    #[error("could not connect to any of the {} hosts: {}", .0.len(), AllHosts(.0))]
    AllHosts(Vec<SqlConnectError>),
}

/// Why a server that answered was passed over, in words.
pub fn not_target_reason(attrs: TargetSessionAttrs) -> &'static str {
    match attrs {
        TargetSessionAttrs::Primary => "it is a standby, in recovery",
        _ => "it accepts no writes: a standby, or default_transaction_read_only is on",
    }
}

/// Each failure with its causes, one after another (the error has no single source).
struct AllHosts<'a>(&'a [SqlConnectError]);

impl std::fmt::Display for AllHosts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{}", crate::report::Chain(e))?;
        }
        Ok(())
    }
}

impl Classify for SqlConnectError {
    /// A refused, lost or timed-out connection is transient; a TLS configuration that cannot
    /// be built, a refused password, an authentication method the URL does not allow or an
    /// unknown database is not.
    fn kind(&self) -> ErrorKind {
        match self {
            SqlConnectError::Connect { source, .. } => pg_error_kind(source.inner()),
            SqlConnectError::Tls(_) => ErrorKind::Definite,
            // A failover can make a standby the primary.
            SqlConnectError::NotTarget { .. } => ErrorKind::Transient,
            SqlConnectError::AllHosts(errors) => {
                if errors.iter().any(|e| e.kind() == ErrorKind::Transient) {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Definite
                }
            }
        }
    }
}

impl SqlConnectError {
    /// The driver error, when the failure came from the connection attempt itself.
    pub fn pg_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            SqlConnectError::Connect { source, .. } => Some(source.inner()),
            SqlConnectError::Tls(_) | SqlConnectError::NotTarget { .. } => None,
            SqlConnectError::AllHosts(errors) => errors.iter().rev().find_map(|e| e.pg_error()),
        }
    }
}

/// How an open connection travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unix,
    /// TCP without TLS.
    Tcp,
    Tls,
}

/// A connected socket: TCP or unix.
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    /// Connects to `info`'s server: a unix socket, or TCP with `TCP_NODELAY` and keepalive (as
    /// libpq and tokio-postgres do), trying each address the name resolves to.
    pub async fn connect(info: &ConnInfo) -> io::Result<Socket> {
        match &info.host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", info.port));
                Ok(Socket::Unix(UnixStream::connect(path).await?))
            }
            Host::Tcp(host) => {
                let mut last = None;
                for addr in tokio::net::lookup_host((host.as_str(), info.port)).await? {
                    let socket = if addr.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    socket.set_keepalive(true)?;
                    match socket.connect(addr).await {
                        Ok(tcp) => {
                            tcp.set_nodelay(true)?;
                            return Ok(Socket::Tcp(tcp));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{host} resolves to no address"),
                    )
                }))
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl ConnInfo {
    /// Opens an ordinary SQL connection (tokio-postgres) with this URL's TLS settings (the
    /// same rustls setup as the replication session; never TLS over a unix socket, as libpq),
    /// `channel_binding` and `require_auth`. The connection runs in a background task that
    /// ends when the client is dropped. Warns once if a password goes over an unencrypted
    /// TCP connection.
    pub async fn connect_sql(&self) -> Result<tokio_postgres::Client, SqlConnectError> {
        Ok(self.connect_sql_observed().await?.0)
    }

    /// [`ConnInfo::connect_sql`], also telling how the connection travels. With several
    /// hosts, tries each in order (as libpq) and settles on the first that connects and is
    /// what `target_session_attrs` asks for.
    pub async fn connect_sql_observed(
        &self,
    ) -> Result<(tokio_postgres::Client, Transport), SqlConnectError> {
        let mut failures = Vec::new();
        for attempt in self.attempts() {
            match attempt.connect_sql_one().await {
                Ok(open) => return Ok(open),
                Err(e) if self.more_hosts.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!(target = %attempt, error = %crate::report::Chain(&e), "host skipped; trying the next");
                    failures.push(e);
                }
            }
        }
        Err(SqlConnectError::AllHosts(failures))
    }

    /// One attempt, to this connection info's first host only.
    async fn connect_sql_one(
        &self,
    ) -> Result<(tokio_postgres::Client, Transport), SqlConnectError> {
        use tokio_postgres::config::SslMode as PgSslMode;
        let target = self.to_string();
        let connect_err = |source: tokio_postgres::Error| SqlConnectError::Connect {
            target: target.clone(),
            source: source.into(),
        };
        let mut config = self.sql_config();
        let tls_host = match &self.host {
            Host::Tcp(h) if self.sslmode != SslMode::Disable => Some(h.as_str()),
            _ => None,
        };
        config.ssl_mode(match (tls_host, self.sslmode) {
            (None, _) => PgSslMode::Disable,
            (Some(_), SslMode::Prefer) => PgSslMode::Prefer,
            (Some(_), _) => PgSslMode::Require,
        });
        let tls = match tls_host {
            Some(host) => Some(GuardedTls {
                connector: tls::connector(self)?,
                name: tls::server_name(host)?,
                policy: self.auth_policy(),
                watch: Arc::default(),
            }),
            None => None,
        };
        let watch = tls.as_ref().map(|t| t.watch.clone()).unwrap_or_default();
        let first = if tls.is_some() {
            Phase::SslAnswer
        } else {
            Phase::Watching
        };
        // The socket opens when the driver first writes, so that its failure is the driver's
        // I/O error (transient), as every caller classifies it.
        let socket = LazySocket::Connecting(Box::pin(connect_socket(self.clone())));
        let guard = StartupGuard::new(
            socket,
            first,
            self.auth_policy(),
            watch.clone(),
            false,
            None,
        );
        let client = match tls {
            Some(tls) => {
                let (client, connection) =
                    config.connect_raw(guard, tls).await.map_err(connect_err)?;
                drive(connection);
                client
            }
            None => {
                let (client, connection) = config
                    .connect_raw(guard, tokio_postgres::NoTls)
                    .await
                    .map_err(connect_err)?;
                drive(connection);
                client
            }
        };
        let transport = match (&self.host, lock(&watch).tls) {
            (Host::Unix(_), _) => Transport::Unix,
            (Host::Tcp(_), true) => Transport::Tls,
            (Host::Tcp(_), false) => Transport::Tcp,
        };
        super::plaintext::warn_if_exposed(self, transport);
        if let Some((probe, disqualifies)) = self.target_session_attrs.probe() {
            let answer = client.simple_query(probe).await.map_err(connect_err)?;
            let value = answer.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            });
            if value.as_deref() == Some(disqualifies) {
                return Err(SqlConnectError::NotTarget {
                    target,
                    attrs: self.target_session_attrs,
                });
            }
        }
        Ok((client, transport))
    }
}

/// Runs a tokio-postgres connection until its client is dropped or the server goes away.
fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    let open = crate::telemetry::OpenConnection::new("sql");
    tokio::spawn(async move {
        let _open = open;
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "SQL connection ended");
        }
    });
}

/// [`Socket::connect`] within `connect_timeout` (which, as in tokio-postgres, bounds opening
/// the socket).
async fn connect_socket(info: ConnInfo) -> io::Result<Socket> {
    match info.connect_timeout {
        Some(timeout) => tokio::time::timeout(timeout, Socket::connect(&info))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {}s (connect_timeout)", timeout.as_secs()),
                ))
            }),
        None => Socket::connect(&info).await,
    }
}

type SocketFuture = Pin<Box<dyn Future<Output = io::Result<Socket>> + Send>>;

/// A socket that connects on first use.
enum LazySocket {
    Connecting(SocketFuture),
    Open(Socket),
}

impl LazySocket {
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut Socket>> {
        if let LazySocket::Connecting(f) = self {
            let socket = match f.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r?,
            };
            *self = LazySocket::Open(socket);
        }
        match self {
            LazySocket::Open(s) => Poll::Ready(Ok(s)),
            LazySocket::Connecting(_) => Poll::Pending,
        }
    }
}

impl AsyncRead for LazySocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().poll_open(cx) {
            Poll::Ready(Ok(s)) => Pin::new(s).poll_read(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for LazySocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().poll_open(cx) {
            Poll::Ready(Ok(s)) => Pin::new(s).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LazySocket::Open(s) => Pin::new(s).poll_flush(cx),
            LazySocket::Connecting(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LazySocket::Open(s) => Pin::new(s).poll_shutdown(cx),
            LazySocket::Connecting(_) => Poll::Ready(Ok(())),
        }
    }
}

/// What the guards of one connection learnt.
#[derive(Debug, Default)]
struct Watch {
    /// The server accepted the SSLRequest.
    tls: bool,
}

fn lock(watch: &Mutex<Watch>) -> std::sync::MutexGuard<'_, Watch> {
    // A guard never panics while holding the lock; a poisoned one still holds valid data.
    watch.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The next byte answers the SSLRequest: `S` hands the stream to TLS (whose own guard
    /// watches the startup), `N` continues in plaintext.
    SslAnswer,
    /// Before `AuthenticationOk`: whole messages, each checked.
    Watching,
    /// The client refused; it has been handed the error response, then end of stream.
    Refused,
    /// After `AuthenticationOk` (or under TLS, for the plaintext stream below it).
    Passive,
}

/// The stream tokio-postgres reads during startup (see the module comment). Cancel-safe:
/// bytes move from the socket to `pending`, from there (checked) to `ready`, and from there
/// to the reader, each step complete before it returns.
pub struct StartupGuard<S> {
    inner: S,
    phase: Phase,
    policy: AuthPolicy,
    link: Link,
    /// Read from the server, not yet checked (at most an incomplete message while watching).
    pending: BytesMut,
    /// Checked, to be handed to the reader.
    ready: BytesMut,
    /// Bytes of the current message still to be passed on unread: the rest of a message that
    /// is not an authentication request, or of an over-long one.
    skip: usize,
    /// An authentication request came before `AuthenticationOk`.
    asked: bool,
    watch: Arc<Mutex<Watch>>,
    /// `tls-server-end-point` data for SCRAM-SHA-256-PLUS, when this guard is above TLS.
    end_point: Option<Vec<u8>>,
}

impl<S> StartupGuard<S> {
    /// `encrypted`: this guard reads from TLS; `end_point`: the certificate's channel binding
    /// data, when it has some.
    fn new(
        inner: S,
        phase: Phase,
        policy: AuthPolicy,
        watch: Arc<Mutex<Watch>>,
        encrypted: bool,
        end_point: Option<Vec<u8>>,
    ) -> Self {
        StartupGuard {
            inner,
            phase,
            policy,
            link: Link {
                encrypted,
                binding_data: end_point.is_some(),
            },
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            skip: 0,
            asked: false,
            watch,
            end_point,
        }
    }

    /// Moves what `pending` allows to `ready`, as far as the phase lets it.
    fn advance(&mut self) {
        loop {
            match self.phase {
                Phase::Passive => {
                    let rest = self.pending.split();
                    self.ready.unsplit(rest);
                    return;
                }
                Phase::Refused => {
                    self.pending.clear();
                    return;
                }
                Phase::SslAnswer => {
                    let Some(&answer) = self.pending.first() else {
                        return;
                    };
                    self.ready.put_u8(answer);
                    self.pending.advance(1);
                    if answer == b'N' {
                        self.phase = Phase::Watching;
                    } else {
                        // 'S': what follows is TLS, watched above it. Anything else is a
                        // protocol error the driver reports.
                        lock(&self.watch).tls = answer == b'S';
                        self.phase = Phase::Passive;
                    }
                }
                Phase::Watching if self.skip > 0 => {
                    if self.pending.is_empty() {
                        return;
                    }
                    let n = self.skip.min(self.pending.len());
                    let passed = self.pending.split_to(n);
                    self.ready.unsplit(passed);
                    self.skip -= n;
                }
                Phase::Watching => {
                    let Some(header) = self.pending.get(..5) else {
                        return;
                    };
                    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                    let Some(body) = (len as usize).checked_sub(4) else {
                        // Malformed: the driver reports it; nothing after it can be framed.
                        self.phase = Phase::Passive;
                        continue;
                    };
                    if header[0] != b'R' {
                        self.skip = 5 + body;
                        continue;
                    }
                    let head = 5 + body.min(MAX_AUTH_BODY);
                    if self.pending.len() < head {
                        return;
                    }
                    let message = self.pending.split_to(head);
                    self.skip = 5 + body - head;
                    match self.inspect(&message) {
                        Inspected::Pass => self.ready.unsplit(message),
                        Inspected::Authenticated => {
                            self.ready.unsplit(message);
                            self.phase = Phase::Passive;
                        }
                        Inspected::Refuse(refusal) => {
                            self.ready.extend_from_slice(&refusal_response(&refusal));
                            self.phase = Phase::Refused;
                        }
                    }
                }
            }
        }
    }

    fn inspect(&mut self, message: &[u8]) -> Inspected {
        if message.first() != Some(&b'R') {
            return Inspected::Pass;
        }
        let body = &message[5..];
        let Some(code) = body.get(..4) else {
            return Inspected::Pass; // malformed: the driver reports it
        };
        let request = match u32::from_be_bytes([code[0], code[1], code[2], code[3]]) {
            0 if self.asked => return Inspected::Authenticated,
            0 => AuthRequest::NoneAsked,
            3 => AuthRequest::Cleartext,
            5 => AuthRequest::Md5,
            10 => AuthRequest::Sasl {
                plus_offered: body[4..].split(|&b| b == 0).any(|m| {
                    m == postgres_protocol::authentication::sasl::SCRAM_SHA_256_PLUS.as_bytes()
                }),
            },
            2 | 7 => AuthRequest::Gss,
            9 => AuthRequest::Sspi,
            // SASL and GSS continuations, and codes the driver rejects itself.
            _ => return Inspected::Pass,
        };
        self.asked = true;
        match self.policy.check(request, self.link) {
            Ok(()) if request == AuthRequest::NoneAsked => Inspected::Authenticated,
            Ok(()) => Inspected::Pass,
            Err(refusal) => Inspected::Refuse(refusal),
        }
    }
}

enum Inspected {
    Pass,
    Authenticated,
    Refuse(AuthRefusal),
}

/// The error response the driver reads in place of a refused request: FATAL, SQLSTATE 28000
/// (invalid authorization specification), the refusal as message and hint.
fn refusal_response(refusal: &AuthRefusal) -> BytesMut {
    let text = refusal.to_string();
    let (message, hint) = match text.split_once("\nHINT: ") {
        Some((m, h)) => (m.to_owned(), Some(h.to_owned())),
        None => (text, None),
    };
    let message = format!("pgfanout refused to authenticate: {message}");
    let mut fields = BytesMut::new();
    let mut field = |tag: u8, value: &str| {
        fields.put_u8(tag);
        // A NUL would end the field early; none of our texts has one.
        fields.extend_from_slice(value.replace('\0', " ").as_bytes());
        fields.put_u8(0);
    };
    field(b'S', "FATAL");
    field(b'V', "FATAL");
    field(b'C', "28000");
    field(b'M', &message);
    if let Some(h) = &hint {
        field(b'H', h);
    }
    fields.put_u8(0);
    let mut out = BytesMut::with_capacity(fields.len() + 5);
    out.put_u8(b'E');
    out.put_u32(fields.len() as u32 + 4);
    out.unsplit(fields);
    out
}

impl<S: AsyncRead + Unpin> AsyncRead for StartupGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Passive if this.pending.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                Phase::Refused => return Poll::Ready(Ok(())), // end of stream
                _ => {}
            }
            // Read more from the server into `pending`.
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // End of stream: hand on what is left; the driver reports the rest.
                    this.phase = Phase::Passive;
                    let rest = this.pending.split();
                    this.ready.unsplit(rest);
                    if this.ready.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.pending.extend_from_slice(read.filled());
                    this.advance();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StartupGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for StartupGuard<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match &self.end_point {
            Some(data) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(data.clone()),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

/// rustls for tokio-postgres, with a [`StartupGuard`] above it and the certificate's
/// `tls-server-end-point` data for SCRAM-SHA-256-PLUS.
struct GuardedTls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    policy: AuthPolicy,
    watch: Arc<Mutex<Watch>>,
}

type TlsFuture<S> = Pin<
    Box<dyn Future<Output = io::Result<StartupGuard<tokio_rustls::client::TlsStream<S>>>> + Send>,
>;

impl<S> tokio_postgres::tls::TlsConnect<S> for GuardedTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = StartupGuard<tokio_rustls::client::TlsStream<S>>;
    type Error = io::Error;
    type Future = TlsFuture<S>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self.connector.connect(self.name, stream).await?;
            let end_point = tls::end_point_of(stream.get_ref().1);
            lock(&self.watch).tls = true;
            Ok(StartupGuard::new(
                stream,
                Phase::Watching,
                self.policy,
                self.watch,
                true,
                end_point,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgconn::auth::{ChannelBinding, RequireAuth};
    use tokio::io::AsyncReadExt;

    fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + extra.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }

    fn policy(require_auth: Option<&str>) -> AuthPolicy {
        AuthPolicy {
            channel_binding: ChannelBinding::Prefer,
            require_auth: require_auth.map(|r| RequireAuth::parse(r).unwrap()),
            has_password: true,
        }
    }

    /// What the driver reads of `server` arriving through a socket in `chunk`-byte pieces.
    async fn through_guard(server: &[u8], chunk: usize, require_auth: &str) -> Vec<u8> {
        let (mut srv, cli) = tokio::io::duplex(64);
        let mut guard = StartupGuard::new(
            cli,
            Phase::Watching,
            policy(Some(require_auth)),
            Arc::default(),
            false,
            None,
        );
        let server = server.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in server.chunks(chunk) {
                if srv.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let mut seen = Vec::new();
        guard.read_to_end(&mut seen).await.unwrap();
        writer.abort();
        seen
    }

    /// The same without a socket: `server` fed to the guard in `chunk`-byte pieces, then the
    /// end of the stream (which hands on what is left).
    fn fed(server: &[u8], chunk: usize, policy: AuthPolicy) -> Vec<u8> {
        let mut g = StartupGuard::new((), Phase::Watching, policy, Arc::default(), false, None);
        let mut out = Vec::new();
        for piece in server.chunks(chunk.max(1)) {
            g.pending.extend_from_slice(piece);
            g.advance();
            out.extend_from_slice(&g.ready.split());
        }
        if g.phase != Phase::Refused {
            out.extend_from_slice(&g.pending);
        }
        out
    }

    fn refused(seen: &[u8]) -> bool {
        seen.first() == Some(&b'E') && String::from_utf8_lossy(seen).contains("28000")
    }

    #[tokio::test]
    async fn allowed_requests_pass_byte_for_byte_in_any_split() {
        let mut server = auth(5, b"salt");
        server.extend(auth(0, b""));
        server.extend(b"S\0\0\0\x08abcd"); // ParameterStatus after AuthenticationOk
        for chunk in [1, 2, 3, 7, 100] {
            assert_eq!(
                through_guard(&server, chunk, "md5").await,
                server,
                "chunk {chunk}"
            );
        }
        // Other messages and a long authentication message (a GSSAPI continuation) pass
        // unread past their start.
        let mut server = b"N\0\0\0\x0anotice".to_vec();
        server.extend(auth(10, b"SCRAM-SHA-256\0\0"));
        server.extend(auth(8, &[7; 3000]));
        server.extend(auth(12, b"v=final"));
        server.extend(auth(0, b""));
        for chunk in [1, 5, 999, 5000] {
            assert_eq!(fed(&server, chunk, policy(Some("scram-sha-256"))), server);
        }
    }

    #[tokio::test]
    async fn a_refused_request_never_reaches_the_driver() {
        let server = auth(3, b"");
        for chunk in [1, 4, 100] {
            let seen = through_guard(&server, chunk, "scram-sha-256").await;
            assert!(refused(&seen), "an error response instead");
            let text = String::from_utf8_lossy(&seen);
            assert!(text.contains("require_auth=scram-sha-256"), "{text}");
            assert!(!seen.windows(server.len()).any(|w| w == server));
        }
        // Trust: AuthenticationOk without a request is the method "none".
        assert!(refused(
            &through_guard(&auth(0, b""), 3, "scram-sha-256").await
        ));
        assert!(!refused(
            &through_guard(&auth(0, b""), 3, "!password").await
        ));
        // A refusal after other messages: those pass, the request does not.
        let mut server = b"N\0\0\0\x0anotice".to_vec();
        server.extend(auth(5, b"salt"));
        let seen = fed(&server, 3, policy(Some("scram-sha-256")));
        assert!(seen.starts_with(b"N\0\0\0\x0anotice"));
        assert!(refused(&seen[11..]));
    }

    #[tokio::test]
    async fn sasl_mechanisms_are_read_for_channel_binding() {
        let mut g = StartupGuard::new(
            tokio::io::empty(),
            Phase::Watching,
            AuthPolicy {
                channel_binding: ChannelBinding::Require,
                require_auth: None,
                has_password: true,
            },
            Arc::default(),
            true,
            Some(vec![1; 32]),
        );
        let plus = auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert!(matches!(g.inspect(&plus), Inspected::Pass));
        let plain = auth(10, b"SCRAM-SHA-256\0\0");
        assert!(matches!(g.inspect(&plain), Inspected::Refuse(_)));
    }

    proptest::proptest! {
        /// Without rules the guard changes nothing, whatever the bytes and however they
        /// arrive; and it never panics.
        #[test]
        fn without_rules_any_bytes_pass_unchanged(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            chunk in 1usize..64,
        ) {
            proptest::prop_assert_eq!(fed(&bytes, chunk, policy(None)), bytes);
        }

        #[test]
        fn with_rules_any_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            chunk in 1usize..64,
        ) {
            let _ = fed(&bytes, chunk, policy(Some("scram-sha-256")));
        }
    }
}
