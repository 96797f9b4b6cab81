//! The admin endpoint of `pgfanout run`: health, readiness, metrics, status and a status page.
//!
//! ```text
//!   stages ──metrics facade──▶ Prometheus recorder ──render──▶ GET /metrics
//!   stages ──telemetry::live (heartbeats, streaming, destinations)──▶ /health, /ready, /history
//!   cmd::status (what `pgfanout status --json` prints) ──────────────▶ /status
//!   page.html (embedded; fetches /status, /ready, /history) ─────────▶ /
//! ```
//!
//! It runs on a thread of its own with its own runtime: a scrape, a slow status query or a
//! slow client never delays the stream on the main thread. HTTP is hyper's (HTTP/1.1). The
//! address is `[admin] listen` (loopback by default, `"off"` for none). An address that
//! cannot be bound is logged as an error and `run` streams on without the endpoint: the
//! pipeline's availability does not depend on its monitoring (a healthcheck against it then
//! fails, which says the same).

mod history;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::{Config, Tenants};
use crate::pipeline::{RunError, RunOptions, RunSummary};
use crate::report::Chain;
use crate::telemetry::{self, live};
use history::History;

/// The status page: one file, no build step.
const PAGE: &str = include_str!("page.html");
/// How often the recorder drains its histograms' buffers.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin.listen: cannot listen on {addr}\nHINT: another process (another pgfanout?) may use the port; set [admin] listen to a free address, or \"off\"")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder")]
    Recorder(#[source] metrics_exporter_prometheus::BuildError),
    #[error("cannot start the admin endpoint's thread")]
    Thread(#[source] std::io::Error),
}

/// `pgfanout run` with its admin endpoint: [`crate::pipeline::run`] on this runtime, the
/// endpoint on its own thread while it runs.
pub async fn run(
    cfg: &Config,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    let server = match cfg.admin.listen {
        None => None,
        Some(addr) => match Server::start(cfg, addr) {
            Ok(s) => Some(s),
            Err(e) => {
                error!(error = %Chain(&e), "the admin endpoint is not served; streaming on without it");
                None
            }
        },
    };
    let result = crate::pipeline::run(cfg, opts, shutdown).await;
    if let Some(s) = server {
        s.stop().await;
    }
    result
}

/// The endpoint's thread.
struct Server {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Binds `addr` first (so a port in use is known before streaming), installs the metrics
    /// recorder, and serves on a thread of its own.
    fn start(cfg: &Config, addr: SocketAddr) -> Result<Server, AdminError> {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| AdminError::Bind { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        let metrics = install_recorder()?;
        let (stop, stop_rx) = watch::channel(false);
        let app = Arc::new(App {
            cfg: cfg.clone(),
            metrics,
            history: Mutex::new(History::default()),
        });
        // Built here, so that a failure is returned like any other start-up error.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Thread)?;
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || runtime.block_on(serve(app, listener, stop_rx)))
            .map_err(AdminError::Thread)?;
        info!(address = %bound, "admin endpoint: /health /ready /metrics /status /history and the status page at /");
        Ok(Server { stop, thread })
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

fn install_recorder() -> Result<PrometheusHandle, AdminError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(telemetry::DEST_BATCH_ROWS.into()),
            telemetry::BATCH_ROWS_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(telemetry::DEST_BATCH_SECONDS.into()),
                telemetry::BATCH_SECONDS_BUCKETS,
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(AdminError::Recorder)?;
    telemetry::describe();
    metrics::gauge!(telemetry::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(telemetry::STREAMING).set(0.0);
    Ok(handle)
}

/// What the handlers share.
struct App {
    cfg: Config,
    metrics: PrometheusHandle,
    history: Mutex<History>,
}

async fn serve(app: Arc<App>, listener: std::net::TcpListener, mut stop: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            error!(error = %Chain(&e), "the admin endpoint is not served");
            return;
        }
    };
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    let mut sample = tokio::time::interval(history::CHECK_EVERY);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = upkeep.tick() => app.metrics.run_upkeep(),
            _ = sample.tick() => {
                let views = live::destinations();
                app.history.lock().unwrap_or_else(|e| e.into_inner()).sample(&views);
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %Chain(&e), "admin endpoint: accepting a connection failed");
                        continue;
                    }
                };
                let app = app.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(handle(&app, req).await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        debug!(%peer, error = %e, "admin endpoint: connection ended with an error");
                    }
                });
            }
        }
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Reply {
    reply(status, "application/json", body.to_string())
}

async fn handle(app: &App, req: Request<Incoming>) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n",
        );
    }
    match req.uri().path() {
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/health" => health(),
        "/ready" => ready(),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(),
        ),
        "/status" => status(app).await,
        "/history" => history(app),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; try / /health /ready /metrics /status /history\n",
        ),
    }
}

/// 200 while every long-lived task beats; 503 naming the stale ones.
fn health() -> Reply {
    let tasks = live::tasks();
    let stale: Vec<&str> = tasks
        .iter()
        .filter(|t| t.stale)
        .map(|t| t.name.as_str())
        .collect();
    let code = if stale.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_reply(
        code,
        &json!({
            "status": if stale.is_empty() { "ok" } else { "stale" },
            "stale": stale,
            "tasks": tasks,
        }),
    )
}

/// Why the daemon is not ready: not streaming (start-up's checks not passed yet, or starting
/// over), or a destination held `failed`.
fn not_ready() -> Vec<String> {
    let mut reasons = Vec::new();
    if let Err(why) = live::streaming() {
        reasons.push(why);
    }
    for d in live::destinations() {
        if d.state == "failed" {
            reasons.push(format!(
                "destination {:?} is failed (`pgfanout status` says why)",
                d.name
            ));
        }
    }
    reasons
}

fn ready() -> Reply {
    let reasons = not_ready();
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_reply(
        code,
        &json!({ "ready": reasons.is_empty(), "reasons": reasons }),
    )
}

/// What `pgfanout status --json` prints.
async fn status(app: &App) -> Reply {
    match crate::cmd::status::status(&app.cfg).await {
        Ok(s) => match serde_json::to_value(&s) {
            Ok(v) => json_reply(StatusCode::OK, &v),
            Err(e) => json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "error": Chain(&e).to_string() }),
            ),
        },
        Err(e) => json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": Chain(&e).to_string() }),
        ),
    }
}

/// The lag history per destination, and the tenants each destination lists.
fn history(app: &App) -> Reply {
    let rings = app.history.lock().unwrap_or_else(|e| e.into_inner());
    let destinations: Vec<serde_json::Value> = app
        .cfg
        .destinations
        .iter()
        .map(|d| {
            let tenants = match &d.tenants {
                Tenants::All => json!("*"),
                Tenants::Some(list) => {
                    let mut list: Vec<&String> = list.iter().collect();
                    list.sort();
                    json!(list)
                }
            };
            let samples = rings.rings().get(&d.name);
            json!({ "name": d.name, "tenants": tenants, "samples": samples })
        })
        .collect();
    json_reply(
        StatusCode::OK,
        &json!({
            "sample_every_seconds": history::SAMPLE_EVERY.as_secs(),
            "keep_seconds": history::KEEP.as_secs(),
            "destinations": destinations,
        }),
    )
}
