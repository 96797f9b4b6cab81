//! docker/compose.yaml without a Docker engine: the services, their healthchecks, the restart
//! policy, the published ports and the mounted files, read from the YAML; the configuration it
//! mounts loaded with the compose environment; and `pgfanout check` on that configuration
//! against private servers standing in for the containers (host names rewritten).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pgfanout_testkit::localch::LocalClickHouse;
use pgfanout_testkit::localpg::{LocalPostgres, Options};
use serde_yaml::Value;

/// The servers pgfanout needs; each must be healthy before it starts.
const SERVERS: [&str; 4] = ["source", "tenant-acme", "tenant-globex", "clickhouse"];
/// Where the image's command reads its configuration (docker/Dockerfile's CMD).
const CONFIG_IN_CONTAINER: &str = "/etc/pgfanout/pgfanout.toml";

fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker")
}

fn compose() -> Value {
    let path = docker_dir().join("compose.yaml");
    let text = std::fs::read_to_string(&path).expect("read docker/compose.yaml");
    serde_yaml::from_str(&text).expect("docker/compose.yaml is YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let s = &compose["services"][name];
    assert!(s.is_mapping(), "docker/compose.yaml has no service {name}");
    s
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{x:?}"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A service's environment as compose would pass it with nothing set on the host:
/// `${NAME:-default}` becomes the default.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(map) = service["environment"].as_mapping() {
        for (k, v) in map {
            let k = k.as_str().expect("environment key").to_owned();
            let v = match v {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
            };
            let v = match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                Some(inner) => match inner.split_once(":-") {
                    Some((_, default)) => default.to_owned(),
                    None => {
                        panic!("{k} = {v}: no default, so an unset host variable leaves it empty")
                    }
                },
                None => v,
            };
            out.insert(k, v);
        }
    }
    out
}

/// The host file a service mounts at `target` (`./file:target[:ro]`).
fn bind_source(service: &Value, target: &str) -> Option<PathBuf> {
    strings(&service["volumes"]).iter().find_map(|v| {
        let mut parts = v.split(':');
        let (src, dst) = (parts.next()?, parts.next()?);
        (dst == target && src.starts_with("./")).then(|| docker_dir().join(src))
    })
}

#[test]
fn the_stack_has_every_service_healthchecked_and_pgfanout_restarts_after_its_servers() {
    let compose = compose();
    let services: BTreeSet<String> = compose["services"]
        .as_mapping()
        .expect("services")
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = SERVERS
        .iter()
        .chain(&["pgfanout", "workload"])
        .map(|s| s.to_string())
        .collect();
    assert_eq!(services, expected);

    for name in &services {
        let test = strings(&service(&compose, name)["healthcheck"]["test"]);
        assert!(
            test.len() >= 2 && ["CMD", "CMD-SHELL"].contains(&test[0].as_str()),
            "{name} has no healthcheck command: {test:?}"
        );
    }
    let source = service(&compose, "source");
    assert!(
        strings(&source["command"])
            .iter()
            .any(|a| a == "wal_level=logical"),
        "the source runs without wal_level=logical"
    );

    let pgfanout = service(&compose, "pgfanout");
    assert_eq!(pgfanout["restart"].as_str(), Some("unless-stopped"));
    for server in SERVERS {
        assert_eq!(
            pgfanout["depends_on"][server]["condition"].as_str(),
            Some("service_healthy"),
            "pgfanout must wait for {server} to be healthy"
        );
    }
    // Its healthcheck asks the admin server's readiness, with a client the image installs.
    let probe = strings(&pgfanout["healthcheck"]["test"]);
    assert!(
        probe.iter().any(|a| a == "http://127.0.0.1:9187/ready"),
        "{probe:?}"
    );
    let dockerfile = std::fs::read_to_string(docker_dir().join("Dockerfile")).unwrap();
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    let installs = runtime
        .lines()
        .find(|l| l.contains("apt-get install"))
        .expect("the runtime image installs packages");
    assert!(
        installs.split_whitespace().any(|w| w == probe[1]),
        "the healthcheck runs {} but the runtime image does not install it: {installs}",
        probe[1]
    );
    assert!(dockerfile.contains(CONFIG_IN_CONTAINER));

    // Published host ports are unique.
    let mut seen = BTreeMap::new();
    for name in &services {
        for port in strings(&service(&compose, name)["ports"]) {
            let host = port
                .rsplit_once(':')
                .map_or(port.as_str(), |(h, _)| h)
                .to_owned();
            if let Some(other) = seen.insert(host.clone(), name.clone()) {
                panic!("host port {host} is published by both {other} and {name}");
            }
        }
    }

    // Every file a service mounts from docker/ exists.
    for name in &services {
        for v in strings(&service(&compose, name)["volumes"]) {
            if let Some(src) = v.split(':').next().filter(|s| s.starts_with("./")) {
                assert!(
                    docker_dir().join(src).is_file(),
                    "{name} mounts {src}, which docker/ does not have"
                );
            }
        }
    }
    assert!(
        bind_source(pgfanout, CONFIG_IN_CONTAINER).is_some(),
        "pgfanout does not mount its configuration at {CONFIG_IN_CONTAINER}"
    );

    // The build context leaves out what is large or private.
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .expect(".dockerignore");
    for entry in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

/// The configuration pgfanout's container mounts, and its environment.
fn mounted_config() -> (String, BTreeMap<String, String>) {
    let compose = compose();
    let pgfanout = service(&compose, "pgfanout");
    let path = bind_source(pgfanout, CONFIG_IN_CONTAINER).expect("the mounted configuration");
    (
        std::fs::read_to_string(&path).expect("read the mounted configuration"),
        environment(pgfanout),
    )
}

#[test]
fn the_mounted_config_loads_with_the_compose_environment_and_names_its_services() {
    let (text, env) = mounted_config();
    let config = pgfanout::config::Config::parse(
        &text,
        "docker/pgfanout.toml",
        &|name| env.get(name).cloned(),
        &pgfanout::cmd::StageRules,
    )
    .unwrap_or_else(|e| panic!("docker/pgfanout.toml is refused: {e:#?}"));
    let names: Vec<&str> = config
        .destinations
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, ["acme", "globex", "analytics"]);
    // The admin endpoint listens beyond the container's loopback, on the port compose publishes
    // and the healthcheck probes.
    let admin = config.admin.listen.expect("[admin] listen is on");
    assert!(
        admin.ip().is_unspecified(),
        "admin.listen {admin} is not reachable from outside the container"
    );
    let stack = compose();
    let pgfanout = service(&stack, "pgfanout");
    assert!(
        strings(&pgfanout["ports"])
            .iter()
            .any(|p| p.ends_with(&format!(":{}", admin.port()))),
        "compose does not publish admin.listen's port {}",
        admin.port()
    );
    assert!(
        strings(&pgfanout["healthcheck"]["test"])
            .iter()
            .any(|a| a.contains(&format!("127.0.0.1:{}/ready", admin.port()))),
        "the healthcheck does not probe admin.listen's port"
    );
    // Every host it connects to is a service of the stack, on the port the container serves.
    let compose = compose();
    let raw: toml::Value = toml::from_str(&text).unwrap();
    let mut urls = vec![raw["source"]["url"].as_str().unwrap().to_owned()];
    for d in raw["destinations"].as_array().unwrap() {
        urls.push(d["url"].as_str().unwrap().to_owned());
    }
    for u in urls {
        let url = url::Url::parse(&u).unwrap_or_else(|e| panic!("{u}: {e}"));
        let host = url.host_str().unwrap();
        let s = service(&compose, host);
        let port = url.port().unwrap().to_string();
        assert!(
            strings(&s["ports"])
                .iter()
                .any(|p| p.ends_with(&format!(":{port}"))),
            "{host} does not serve port {port}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgfanout_check_accepts_the_mounted_config_on_stand_in_servers() {
    let (text, mut env) = mounted_config();
    let pg = tokio::task::spawn_blocking(|| LocalPostgres::start(&Options::default()))
        .await
        .unwrap()
        .expect("start a private PostgreSQL");
    let ch = tokio::task::spawn_blocking(LocalClickHouse::start)
        .await
        .unwrap()
        .expect("start a private ClickHouse");
    // The roles and databases the postgres images make from their environment.
    let admin = pg.sql("postgres").await.unwrap();
    for statement in [
        "CREATE ROLE app LOGIN SUPERUSER",
        "CREATE ROLE tenant LOGIN",
        "CREATE DATABASE app OWNER app",
        "CREATE DATABASE acme OWNER tenant",
        "CREATE DATABASE globex OWNER tenant",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    let schema = std::fs::read_to_string(docker_dir().join("source-schema.sql")).unwrap();
    pg.sql("app")
        .await
        .unwrap()
        .batch_execute(&schema)
        .await
        .unwrap();

    // The containers' names become the private servers' addresses; the log goes to a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let here = format!("@127.0.0.1:{}/", pg.port());
    let mut rewritten = text.clone();
    for (from, to) in [
        ("@source:5432/", here.as_str()),
        ("@tenant-acme:5432/", here.as_str()),
        ("@tenant-globex:5432/", here.as_str()),
        ("http://clickhouse:8123", ch.url().as_str()),
        (
            "/var/lib/pgfanout/log",
            dir.path().join("log").to_str().unwrap(),
        ),
    ] {
        assert!(
            rewritten.contains(from),
            "docker/pgfanout.toml no longer has {from}"
        );
        rewritten = rewritten.replace(from, to);
    }
    let path = dir.path().join("pgfanout.toml");
    std::fs::write(&path, rewritten).unwrap();
    // The private ClickHouse's password user stands in for the image's.
    let (user, password) = LocalClickHouse::PASSWORD_USER;
    assert!(
        text.contains(&format!("user = \"{user}\"")),
        "the ClickHouse user changed"
    );
    env.insert("CLICKHOUSE_PASSWORD".into(), password.into());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["check", "--config"])
        .arg(&path)
        .envs(&env)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "pgfanout check refused docker/pgfanout.toml ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
