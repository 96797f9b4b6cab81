//! The demo's world: a private PostgreSQL holding the source database and the two tenant
//! databases, a private ClickHouse when one is installed, the source schema with some rows,
//! and the configuration that maps it all.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgfanout_testkit::localch::{LocalChError, LocalClickHouse};
use pgfanout_testkit::localpg::{LocalPgError, LocalPostgres, Options};

/// A tenancy of the source: its id (the tenant key) and its project.
pub struct Tenant {
    pub id: &'static str,
    pub project: &'static str,
}

pub const TENANTS: [Tenant; 3] = [
    Tenant {
        id: "00000000-0000-0000-0000-00000000000a",
        project: "acme",
    },
    Tenant {
        id: "00000000-0000-0000-0000-00000000000b",
        project: "globex",
    },
    Tenant {
        id: "00000000-0000-0000-0000-00000000000c",
        project: "initech",
    },
];

pub const SOURCE_DB: &str = "app";
/// The ClickHouse database of the shared destination.
pub const CH_DATABASE: &str = "analytics";

/// The source's tables and its tenancies: the same file the compose stack's source runs
/// (docker/source-schema.sql), so the demo and the stack cannot drift apart.
const SCHEMA: &str = include_str!("../../../docker/source-schema.sql");

/// Users (each with a channel) every tenant has before pgfanout starts: the initial snapshot
/// copies them.
const SEED_USERS: u32 = 40;

/// The mappings every destination takes: the tenant's project as the lead key column, e-mail
/// addresses lower-cased, anonymous users left out.
const MAPPINGS: &str = r#"
[tenants]
query = "SELECT id AS tenant, project_id FROM public.tenancy"
table = "public.tenancy"

[[mappings]]
name = "users"
source = "public.users"
tenant_key = "tenancy_id"
target = "users"
key = ["project_id", "id"]
filter = "is_anonymous = false"
[mappings.columns]
project_id = "tenant.project_id"
id = "id"
email = "lower(email)"
display_name = "display_name"

[[mappings]]
name = "contact_channels"
source = "public.contact_channels"
tenant_key = "tenancy_id"
target = "contact_channels"
key = ["project_id", "id"]
[mappings.columns]
project_id = "tenant.project_id"
id = "id"
user_id = "user_id"
kind = "kind"
value = "value"
is_verified = "is_verified"
"#;

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot start the demo's PostgreSQL")]
    Postgres(#[from] LocalPgError),
    #[error("ClickHouse is installed but its private server did not start")]
    ClickHouse(#[source] LocalChError),
    #[error("setting up the demo's databases failed")]
    Sql(#[from] tokio_postgres::Error),
    #[error("writing the demo's configuration {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a server start-up task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("finding a free loopback port for the status page")]
    AdminPort(#[source] std::io::Error),
}

/// Where a destination writes.
pub enum Store {
    /// A database on the demo's PostgreSQL.
    Postgres { database: String },
    /// [`CH_DATABASE`] on the demo's ClickHouse.
    ClickHouse,
}

/// One configured destination and the tenants it serves.
pub struct Destination {
    pub name: String,
    pub store: Store,
    pub tenants: Vec<&'static Tenant>,
}

impl Destination {
    pub fn kind(&self) -> &'static str {
        match self.store {
            Store::Postgres { .. } => "postgres",
            Store::ClickHouse => "clickhouse",
        }
    }

    /// The projects of its tenants.
    pub fn projects(&self) -> Vec<String> {
        self.tenants.iter().map(|t| t.project.to_owned()).collect()
    }
}

pub struct Stack {
    pub pg: LocalPostgres,
    pub ch: Option<Arc<LocalClickHouse>>,
    pub destinations: Vec<Destination>,
    /// Where the daemon serves its status page and metrics: a free loopback port, so that a
    /// demo never collides with a pgfanout already on the default 9187.
    pub admin: std::net::SocketAddr,
}

/// Starts the servers (ClickHouse only when installed; `None` and the reason otherwise),
/// creates the databases, the source schema and its first rows.
pub async fn start() -> Result<(Stack, Option<String>), StackError> {
    let pg = tokio::task::spawn_blocking(|| LocalPostgres::start(&Options::default()));
    let ch = tokio::task::spawn_blocking(LocalClickHouse::start);
    let pg = pg.await??;
    let (ch, skipped) = match ch.await? {
        Ok(ch) => (Some(Arc::new(ch)), None),
        Err(LocalChError::NoBinary) => (
            None,
            Some("ClickHouse is not installed (clickhouse-server not found): the demo runs without the shared analytics destination; scripts/install-deps.sh installs it".to_owned()),
        ),
        Err(e) => return Err(StackError::ClickHouse(e)),
    };
    pg.create_database(SOURCE_DB).await?;
    let source = pg.sql(SOURCE_DB).await?;
    source.batch_execute(SCHEMA).await?;
    for t in &TENANTS {
        source
            .execute(
                "WITH u AS (
                     INSERT INTO users (tenancy_id, email, display_name, is_anonymous)
                     SELECT $1::text::uuid, 'Seed' || g || '.' || $2 || '@Example.com',
                            'Seed user ' || g, g % 9 = 0
                     FROM generate_series(1, $3::int) g RETURNING tenancy_id, id)
                 INSERT INTO contact_channels (tenancy_id, user_id, kind, value)
                 SELECT tenancy_id, id, 'email', 'seed' || id || '@example.com' FROM u",
                &[&t.id, &t.project, &(SEED_USERS as i32)],
            )
            .await?;
    }
    let mut destinations = Vec::new();
    for t in &TENANTS[..2] {
        let database = format!("tenant_{}", t.project);
        pg.create_database(&database).await?;
        destinations.push(Destination {
            name: database.clone(),
            store: Store::Postgres { database },
            tenants: vec![t],
        });
    }
    if ch.is_some() {
        destinations.push(Destination {
            name: "analytics".into(),
            store: Store::ClickHouse,
            tenants: TENANTS.iter().collect(),
        });
    }
    // Bound and released at once: the daemon binds it again a moment later.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(StackError::AdminPort)?;
    Ok((
        Stack {
            pg,
            ch,
            destinations,
            admin,
        },
        skipped,
    ))
}

impl Stack {
    /// An SQL connection to `database` on the demo's PostgreSQL.
    pub async fn sql(
        &self,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.pg.sql(database).await
    }

    /// Writes the configuration for `pgfanout run` into `dir`; returns its path.
    pub fn write_config(&self, dir: &Path) -> Result<PathBuf, StackError> {
        let path = dir.join("pgfanout.toml");
        let mut text = format!(
            "# Written by `pgfanout demo`: one source, a database per tenant, a shared ClickHouse.\n\
             [source]\nurl = {}\nslot = \"pgfanout_demo\"\n\
             tables = [\"public.tenancy\", \"public.users\", \"public.contact_channels\"]\n\
             status_interval = \"1s\"\n\n\
             [log]\ndir = {}\n\n\
             [state]\ncheckpoint_interval = \"1s\"\n\n\
             [snapshot]\nmode = \"initial\"\n\n\
             [admin]\nlisten = {}\n{MAPPINGS}",
            toml_str(&self.pg.socket_url(SOURCE_DB)),
            toml_str(&dir.join("log").display().to_string()),
            toml_str(&self.admin.to_string()),
        );
        for d in &self.destinations {
            let tenants: Vec<String> = d.tenants.iter().map(|t| toml_str(t.id)).collect();
            text.push_str(&format!(
                "\n[[destinations]]\nname = {}\nkind = \"{}\"\n",
                toml_str(&d.name),
                d.kind()
            ));
            match &d.store {
                Store::Postgres { database } => text.push_str(&format!(
                    "url = {}\ntenants = [{}]\nmappings = [\"users\", \"contact_channels\"]\n\
                     flush_interval = \"100ms\"\n",
                    toml_str(&self.pg.socket_url(database)),
                    tenants.join(", ")
                )),
                Store::ClickHouse => {
                    let url = self.ch.as_ref().map(|c| c.url()).unwrap_or_default();
                    text.push_str(&format!(
                        "url = {}\ndatabase = \"{CH_DATABASE}\"\ntenants = \"*\"\n\
                         mappings = [\"users\", \"contact_channels\"]\n\
                         tenant_columns = [\"project_id\"]\nflush_interval = \"200ms\"\n",
                        toml_str(&url)
                    ))
                }
            }
        }
        std::fs::write(&path, text).map_err(|source| StackError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
