//! The admin endpoint of `pgfanout run` (src/admin), against a running daemon: `/metrics`
//! moves as changes flow and shows a failed destination's lag and state, `/ready` turns 503
//! when a destination fails while `/health` stays 200, `/status` is what `pgfanout status
//! --json` prints, and the status page, rendered by headless Chromium, shows what `/status`
//! says (a screenshot is kept under target/test-artifacts/).

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;

const TENANT_A: &str = "tenant-a";
const TENANT_B: &str = "tenant-b";

const SOURCE_SCHEMA: &str = "
    CREATE TABLE tenancy (id text PRIMARY KEY);
    CREATE TABLE items (tenant text NOT NULL, id int NOT NULL, name text, PRIMARY KEY (tenant, id));
    INSERT INTO tenancy VALUES ('tenant-a'), ('tenant-b');";

/// A free port on the loopback interface (free when asked; the daemon binds it soon after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A source database, two tenant databases (destinations `a` and `b`, one tenant each), and
/// the configuration with the admin endpoint on `port`.
struct Setup {
    source: tokio_postgres::Client,
    db: String,
    a: String,
    config: PathBuf,
    port: u16,
}

async fn setup(prefix: &str, dir: &Path) -> Setup {
    let db = fresh_db(&format!("{prefix}_src")).await;
    let source = sql(&db).await;
    source.batch_execute(SOURCE_SCHEMA).await.unwrap();
    let a = fresh_db(&format!("{prefix}_a")).await;
    let b = fresh_db(&format!("{prefix}_b")).await;
    let port = free_port();
    let destination = |name: &str, target: &str, tenant: &str| {
        format!(
            "[[destinations]]\nname = \"{name}\"\nkind = \"postgres\"\nurl = {}\n\
             tenants = [\"{tenant}\"]\nmappings = [\"items\"]\nflush_interval = \"50ms\"\n",
            toml_str(&url_on(server(), target))
        )
    };
    let config = dir.join("pgfanout.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = {}\nslot = \"s_{db}\"\n\
             tables = [\"public.tenancy\", \"public.items\"]\nstatus_interval = \"100ms\"\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\n\
             [state]\ncheckpoint_interval = \"200ms\"\n\
             [snapshot]\nmode = \"never\"\nauto_resync = false\n\
             [admin]\nlisten = \"127.0.0.1:{port}\"\n\
             [tenants]\nquery = \"SELECT id AS tenant FROM public.tenancy\"\n\
             [[mappings]]\nname = \"items\"\nsource = \"public.items\"\ntenant_key = \"tenant\"\n\
             target = \"items\"\nkey = [\"id\"]\n\
             [mappings.columns]\nid = \"id\"\nname = \"name\"\n\n{}\n{}",
            toml_str(&url_on(server(), &db)),
            toml_str(&dir.join("log").display().to_string()),
            destination("a", &a, TENANT_A),
            destination("b", &b, TENANT_B),
        ),
    )
    .unwrap();
    Setup {
        source,
        db,
        a,
        config,
        port,
    }
}

/// `GET path` on the admin endpoint: the status code and the body; `None` while nothing
/// listens yet.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        Some((code, body.to_owned()))
    })
    .await
    .unwrap()
}

async fn get_ok(port: u16, path: &str) -> (u16, String) {
    wait_for(&format!("the admin endpoint to answer {path}"), || {
        get(port, path)
    })
    .await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The value of the series `name` whose labels include `labels`, from Prometheus text.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let found: Vec<(&str, &str)> = rest
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((k, v.trim_end_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|l| found.contains(l))
                .then(|| value.parse().unwrap())
        })
}

async fn insert(source: &tokio_postgres::Client, tenant: &str, ids: std::ops::Range<i32>) {
    source
        .execute(
            "INSERT INTO items SELECT $1, g, 'item ' || g FROM generate_series($2::int, $3::int) g",
            &[&tenant, &ids.start, &(ids.end - 1)],
        )
        .await
        .unwrap();
}

/// Waits until `/metrics` satisfies `check`; returns the text.
async fn wait_metrics(port: u16, what: &str, check: impl Fn(&str) -> bool) -> String {
    wait_for(what, || async {
        let (code, text) = get(port, "/metrics").await?;
        (code == 200 && check(&text)).then_some(text)
    })
    .await
}

/// Drops destination `a`'s target table and writes a change for it: its writer gets 42P01,
/// which retrying cannot fix, and holds it `failed`. Waits until `/ready` says so.
async fn fail_destination_a(s: &Setup) -> Value {
    sql(&s.a)
        .await
        .batch_execute("DROP TABLE items")
        .await
        .unwrap();
    insert(&s.source, TENANT_A, 100..101).await;
    wait_for("/ready to turn 503 for the failed destination", || async {
        let (code, body) = get(s.port, "/ready").await?;
        (code == 503).then(|| json(&body))
    })
    .await
}

/// Everything but the leaves' values: objects as their keys, arrays as their elements.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        _ => Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_stream_and_ready_turns_503_when_a_destination_fails() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup("adm_metrics", dir.path()).await;
    let mut daemon = Daemon::start(&s.config);
    wait_streaming(&mut daemon, &s.source, &s.db).await;
    // The slot streams a moment before the pipeline has started the fan-out and says so.
    let body = wait_for("/ready to turn 200 once the pipeline streams", || async {
        let (code, body) = get(s.port, "/ready").await?;
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(json(&body)["ready"], true);

    // Changes flow: received, logged and applied move together.
    insert(&s.source, TENANT_A, 1..11).await;
    insert(&s.source, TENANT_B, 1..6).await;
    let text = wait_metrics(s.port, "both destinations to apply 15 changes", |t| {
        metric(
            t,
            "pgfanout_destination_applied_seq",
            &[("destination", "a")],
        ) >= Some(15.0)
            && metric(
                t,
                "pgfanout_destination_applied_seq",
                &[("destination", "b")],
            ) >= Some(15.0)
    })
    .await;
    let last_seq = metric(&text, "pgfanout_changelog_last_seq", &[]).unwrap();
    assert!(last_seq >= 15.0, "{text}");
    for name in [
        "pgfanout_source_changes_received_total",
        "pgfanout_changelog_changes_logged_total",
    ] {
        assert!(metric(&text, name, &[]) >= Some(15.0), "{name}: {text}");
    }
    assert!(metric(&text, "pgfanout_source_received_bytes_total", &[]) > Some(0.0));
    assert!(metric(&text, "pgfanout_changelog_size_bytes", &[]) > Some(0.0));
    assert!(
        metric(
            &text,
            "pgfanout_open_connections",
            &[("kind", "replication")]
        ) >= Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "pgfanout_destination_batch_rows_count",
            &[("destination", "a")]
        ) >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "pgfanout_destination_state",
            &[("destination", "a"), ("state", "streaming")]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "pgfanout_streaming", &[]), Some(1.0));
    // Per-tenant series for tenants with a destination of their own.
    assert!(
        metric(
            &text,
            "pgfanout_tenant_lag_changes",
            &[("destination", "a"), ("tenant", TENANT_A)]
        )
        .is_some(),
        "{text}"
    );

    // More changes: the values move on.
    insert(&s.source, TENANT_B, 6..11).await;
    let text = wait_metrics(s.port, "destination b to apply 5 more", |t| {
        metric(
            t,
            "pgfanout_destination_applied_seq",
            &[("destination", "b")],
        ) >= Some(last_seq + 5.0)
    })
    .await;
    assert!(metric(&text, "pgfanout_changelog_last_seq", &[]) >= Some(last_seq + 5.0));
    assert!(metric(&text, "pgfanout_source_changes_received_total", &[]) >= Some(last_seq + 5.0));

    // Destination a fails: not ready, still healthy, its state and lag shown.
    let ready = fail_destination_a(&s).await;
    assert_eq!(ready["ready"], false);
    let reasons = ready["reasons"].to_string();
    assert!(reasons.contains("\\\"a\\\""), "{reasons}");
    let (code, body) = get_ok(s.port, "/health").await;
    assert_eq!(code, 200, "{body}");
    let health = json(&body);
    let tasks: Vec<&str> = health["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for task in ["stream", "fanout-dispatch", "fanout-reporter"] {
        assert!(tasks.contains(&task), "{task} in {health}");
    }
    insert(&s.source, TENANT_B, 11..13).await;
    let text = wait_metrics(s.port, "a failed, behind, and b caught up", |t| {
        let last = metric(t, "pgfanout_changelog_last_seq", &[]).unwrap_or(0.0);
        metric(
            t,
            "pgfanout_destination_state",
            &[("destination", "a"), ("state", "failed")],
        ) == Some(1.0)
            && metric(
                t,
                "pgfanout_destination_applied_seq",
                &[("destination", "b")],
            ) == Some(last)
    })
    .await;
    let last = metric(&text, "pgfanout_changelog_last_seq", &[]).unwrap();
    let a_applied = metric(
        &text,
        "pgfanout_destination_applied_seq",
        &[("destination", "a")],
    )
    .unwrap();
    assert!(a_applied < last, "{text}");
    assert_eq!(
        metric(
            &text,
            "pgfanout_destination_lag_changes",
            &[("destination", "a")]
        ),
        Some(last - a_applied),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "pgfanout_destination_lag_changes",
            &[("destination", "b")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "pgfanout_destination_state",
            &[("destination", "a"), ("state", "streaming")]
        ),
        Some(0.0)
    );
    assert!(
        metric(
            &text,
            "pgfanout_destination_errors_total",
            &[("destination", "a"), ("disposition", "stop_destination")]
        ) >= Some(1.0),
        "{text}"
    );

    // /status is `pgfanout status --json`, in structure and in what it says.
    let (code, body) = get_ok(s.port, "/status").await;
    assert_eq!(code, 200, "{body}");
    let served = json(&body);
    let out = cli(&["status", "--json"], &s.config).await;
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shape(&served), shape(&printed));
    for (x, y) in served["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .zip(printed["destinations"].as_array().unwrap())
    {
        for field in ["name", "state", "watermark"] {
            assert_eq!(x[field], y[field], "{field}: {x} vs {y}");
        }
    }
    assert_eq!(served["log"]["last_seq"], printed["log"]["last_seq"]);
    assert!(daemon.stop().success());
}

/// The text of the first element after `anchor` in `dom` that has `data-field="field"`.
fn field_after<'a>(dom: &'a str, anchor: &str, field: &str) -> &'a str {
    let start = dom
        .find(anchor)
        .unwrap_or_else(|| panic!("{anchor} not on the page:\n{dom}"));
    let rest = &dom[start..];
    let at = rest
        .find(&format!("data-field=\"{field}\""))
        .unwrap_or_else(|| panic!("{field} after {anchor}"));
    let rest = &rest[at..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap() + open;
    &rest[open..close]
}

fn chromium(args: &[&str], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): scripts/install-deps.sh installs Debian's package")
        });
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_status_says_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup("adm_page", dir.path()).await;
    let mut daemon = Daemon::start(&s.config);
    wait_streaming(&mut daemon, &s.source, &s.db).await;
    insert(&s.source, TENANT_A, 1..21).await;
    insert(&s.source, TENANT_B, 1..31).await;
    // Both apply what there is first, so the page shows a failed destination behind by what
    // came after.
    wait_metrics(
        s.port,
        "both destinations to apply the first 50 changes",
        |t| {
            ["a", "b"].iter().all(|d| {
                metric(t, "pgfanout_destination_applied_seq", &[("destination", d)]) >= Some(50.0)
            })
        },
    )
    .await;
    fail_destination_a(&s).await;
    insert(&s.source, TENANT_B, 31..41).await;
    // Settled: every change is in the log (50, a's failing one, b's 10 more), b caught up
    // with it, a held failed behind it.
    let status = wait_for("b to catch up and a to show failed in /status", || async {
        let (code, body) = get(s.port, "/status").await?;
        let v = json(&body);
        let d = v["destinations"].as_array()?;
        let last = v["log"]["last_seq"].as_u64()?;
        (code == 200
            && last >= 61
            && d.iter().any(|d| d["name"] == "a" && d["state"] == "failed")
            && d.iter()
                .any(|d| d["name"] == "b" && d["watermark"].as_u64() == Some(last)))
        .then_some(v)
    })
    .await;

    let (code, body) = get_ok(s.port, "/history").await;
    assert_eq!(code, 200);
    let history = json(&body);
    let tenants: Vec<(String, Value)> = history["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap().to_owned(), d["tenants"].clone()))
        .collect();
    assert_eq!(
        tenants,
        [
            ("a".to_owned(), serde_json::json!([TENANT_A])),
            ("b".to_owned(), serde_json::json!([TENANT_B]))
        ]
    );

    let url = format!("http://127.0.0.1:{}/", s.port);
    let dom_url = url.clone();
    let out = tokio::task::spawn_blocking(move || chromium(&["--dump-dom"], &dom_url))
        .await
        .unwrap();
    let dom = String::from_utf8(out.stdout).unwrap();
    assert!(dom.contains("id=\"updated\""), "{dom}");
    assert!(
        dom.contains("data-state=\"ok\""),
        "the page refreshed: {dom}"
    );
    assert!(dom.contains("data-ready=\"false\""), "{dom}");
    for d in status["destinations"].as_array().unwrap() {
        let name = d["name"].as_str().unwrap();
        let anchor = format!("data-destination=\"{name}\"");
        assert_eq!(
            field_after(&dom, &anchor, "state"),
            d["state"].as_str().unwrap()
        );
        assert_eq!(
            field_after(&dom, &anchor, "watermark"),
            d["watermark"].to_string()
        );
        assert_eq!(
            field_after(&dom, &anchor, "lag_changes"),
            d["lag_changes"].to_string()
        );
        // The sparkline has the samples the daemon kept (one now, one every 10 s).
        let row = &dom[dom.find(&anchor).unwrap()..];
        let samples = &row[row.find("data-samples=\"").expect("a sparkline") + 14..];
        let samples: usize = samples[..samples.find('"').unwrap()].parse().unwrap();
        assert!(samples >= 1, "{name}: {samples} samples");
    }
    assert_eq!(
        field_after(&dom, "id=\"log\"", "last_seq"),
        status["log"]["last_seq"].to_string()
    );
    assert_eq!(
        field_after(&dom, "id=\"slot\"", "name"),
        status["slot"]["name"].as_str().unwrap()
    );
    assert_eq!(
        field_after(&dom, &format!("data-tenant=\"{TENANT_B}\""), "destination"),
        "b"
    );

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let shot = format!("--screenshot={}", png.display());
    tokio::task::spawn_blocking(move || chromium(&[&shot, "--window-size=1280,1000"], &url))
        .await
        .unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG at {}", png.display());
    println!("status page screenshot: {}", png.display());
    assert!(daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_logged_naming_the_key_and_run_streams_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup("adm_busy", dir.path()).await;
    let taken = std::net::TcpListener::bind(("127.0.0.1", s.port)).unwrap();
    let log = dir.path().join("run.log");
    let mut daemon = Daemon::start_logging(&s.config, "warn", &log);
    wait_streaming(&mut daemon, &s.source, &s.db).await;
    insert(&s.source, TENANT_B, 1..3).await;
    wait_for("the change to reach the log", || async {
        (log_last_seq(&dir.path().join("log")).await >= 2).then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("admin.listen"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{}", s.port)), "{text}");
    drop(taken);
    assert!(daemon.stop().success());
}
