//! Start-up: read the source catalog, compile every mapping and derive every destination's
//! target tables — all before the first change is routed, with every problem reported at once.

use std::sync::Arc;

use crate::change::Relation;
use crate::config::Tenants;
use crate::config::{Config, DestinationConfig, MappingConfig, StoreConfig};
use crate::fanout::route::{Destination, DestinationSet, MappingRoute, TenantRegistry};
use crate::pgconn::ConnInfo;
use crate::report::Chain;
use crate::sink::TargetTable;
use crate::source::catalog;
use tracing::error;

use super::router::{target_columns, MappingExpressions, Router, Routing, Tenancy};
use super::FanoutError;

/// One destination, ready to connect: its configuration and its target tables, in the order
/// of its mappings (the table index of its ops).
#[derive(Debug, Clone)]
pub struct DestinationPlan {
    pub config: DestinationConfig,
    pub tables: Vec<TargetTable>,
    /// Why the destination cannot run: one of its mappings does not compile against the
    /// source as it is now (a column it reads is gone). Its worker holds it `failed` with
    /// this; the tables of such a mapping are empty placeholders, never connected to.
    pub broken: Option<String>,
}

/// Everything routing and the writers need, built once per start.
pub struct Setup {
    pub routing: Arc<Routing>,
    pub registry: Arc<TenantRegistry>,
    /// Per mapping, compiled against the catalog's description of its source table; `None`
    /// for one that does not compile against it (see [`DestinationPlan::broken`]).
    pub compiled: Vec<Option<(Arc<Relation>, MappingRoute)>>,
    /// Per mapping, why it does not compile against the source (listed by `check`).
    pub broken: Vec<Option<String>>,
    pub destinations: Vec<DestinationPlan>,
    /// The source database, for reading unchanged TOAST values no destination holds
    /// (`fanout::toast`).
    pub source: ConnInfo,
}

impl Setup {
    /// Reads the source catalog (table descriptions, enum types, the tenant registry) and
    /// compiles the configuration against it.
    pub async fn load(cfg: &Config) -> Result<Setup, FanoutError> {
        let client =
            cfg.source
                .conn
                .connect_sql()
                .await
                .map_err(|source| FanoutError::Connect {
                    what: "the source database (for its catalog)".into(),
                    source,
                })?;
        let types = catalog::types(&client).await?;
        let (registry, tenant_attributes, tenancy) = match &cfg.tenants {
            None => (TenantRegistry::new(Vec::new()), Vec::new(), None),
            Some(t) => {
                let snapshot = catalog::tenants(&client, &t.query, t.table.as_ref()).await?;
                let mut registry = TenantRegistry::new(snapshot.attributes.clone());
                registry.load(snapshot.rows);
                let tenancy = match (&t.table, snapshot.key_column) {
                    (Some(table), Some(key_column)) => Some(Tenancy {
                        schema: table.schema.clone(),
                        name: table.name.clone(),
                        key_column,
                        attribute_columns: snapshot.attribute_columns,
                    }),
                    _ => None,
                };
                (registry, snapshot.attributes, tenancy)
            }
        };
        let expressions = cfg
            .mappings
            .iter()
            .enumerate()
            .map(|(i, m)| MappingExpressions::parse(i, m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| FanoutError::Setup {
                problems: vec![problem].into(),
            })?;
        let mut problems = Vec::new();
        let mut relations = Vec::with_capacity(cfg.mappings.len());
        for (i, m) in cfg.mappings.iter().enumerate() {
            match catalog::relation(&client, &m.source).await? {
                Some(rel) => relations.push(Some(Arc::new(rel))),
                None => {
                    problems.push(format!(
                        "mappings[{i}] ({}): source table {} does not exist",
                        m.name, m.source
                    ));
                    relations.push(None);
                }
            }
        }
        for (i, (m, rel)) in cfg.mappings.iter().zip(&relations).enumerate() {
            let Some(rel) = rel else { continue };
            for (j, c) in m.exclude.iter().enumerate() {
                if !rel.columns.iter().any(|rc| rc.name == *c) {
                    problems.push(format!(
                        "mappings[{i}].exclude[{j}] ({}): {} has no column {c:?}; remove it from exclude",
                        m.name, m.source
                    ));
                }
            }
            // With "*" the configuration could not tell whether a typed column is mapped.
            if m.all_columns {
                for (c, _) in &m.types {
                    if !rel.columns.iter().any(|rc| rc.name == *c) || m.exclude.contains(c) {
                        problems.push(format!(
                            "mappings[{i}].types.{c} ({}): {} has no column {c:?} this mapping maps; remove it from types",
                            m.name, m.source
                        ));
                    }
                }
            }
        }
        let keys: Vec<Vec<String>> = cfg
            .mappings
            .iter()
            .zip(&relations)
            .enumerate()
            .map(|(i, (m, rel))| match (&m.key, rel) {
                (Some(k), _) => k.clone(),
                (None, Some(rel)) => {
                    let key = default_key(m, &expressions[i], rel);
                    if key.is_empty() {
                        problems.push(format!(
                            "mappings[{i}] ({}): no target key: no replica-identity column of {} \
                             is mapped as a plain column; set `key`",
                            m.name, m.source
                        ));
                    }
                    key
                }
                (None, None) => Vec::new(),
            })
            .collect();
        let routing = Arc::new(Routing {
            mappings: cfg.mappings.clone(),
            expressions,
            keys,
            types,
            tenant_attributes,
            tenancy,
        });
        // A mapping that does not compile against the source as it is stops only its
        // destinations (the source may have changed under a running configuration); `check`
        // lists it as a problem.
        let mut compiled = Vec::with_capacity(cfg.mappings.len());
        let mut broken = Vec::with_capacity(cfg.mappings.len());
        for (m, rel) in relations.iter().enumerate() {
            let Some(rel) = rel else {
                compiled.push(None);
                broken.push(None);
                continue;
            };
            match routing.compile(m, rel, None) {
                Ok(route) => {
                    compiled.push(Some((rel.clone(), route)));
                    broken.push(None);
                }
                Err(e) => {
                    compiled.push(None);
                    broken.push(Some(Chain(&e).to_string()));
                }
            }
        }
        for (i, d) in cfg.destinations.iter().enumerate() {
            check_tenant_columns(&mut problems, i, d, &cfg.mappings, &routing.keys);
        }
        if !problems.is_empty() {
            return Err(FanoutError::Setup {
                problems: problems.into(),
            });
        }
        let destinations = cfg
            .destinations
            .iter()
            .map(|d| DestinationPlan {
                config: d.clone(),
                tables: d
                    .mappings
                    .iter()
                    .map(|&m| match &compiled[m] {
                        Some((rel, route)) => target_table(d, &cfg.mappings[m], rel, route),
                        // Never connected to (see `DestinationPlan::broken`).
                        None => target_table_shell(d, &cfg.mappings[m]),
                    })
                    .collect(),
                broken: d.mappings.iter().find_map(|&m| broken[m].clone()),
            })
            .collect();
        for (m, reason) in broken.iter().enumerate() {
            if let Some(reason) = reason {
                error!(mapping = %cfg.mappings[m].name, reason = %reason, "the mapping does not compile against its source table; its destinations stay stopped until it is fixed and pgfanout restarted");
            }
        }
        Ok(Setup {
            routing,
            registry: Arc::new(registry),
            compiled,
            broken,
            destinations,
            source: cfg.source.conn.clone(),
        })
    }

    /// The routing index of destinations `which` (all when `None`), with `tenant` narrowing
    /// each to that one tenant (replay of one tenant).
    pub fn destination_set(&self, which: Option<usize>, tenant: Option<&str>) -> DestinationSet {
        let list = self
            .destinations
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if which.is_some_and(|w| w != i) {
                    return Destination {
                        name: d.config.name.clone(),
                        tenants: Tenants::Some(Default::default()),
                        mappings: Vec::new(),
                    };
                }
                let tenants = match (tenant, &d.config.tenants) {
                    (None, t) => t.clone(),
                    (Some(t), Tenants::All) => Tenants::Some([t.to_owned()].into()),
                    (Some(t), Tenants::Some(set)) => {
                        Tenants::Some(set.iter().filter(|s| *s == t).cloned().collect())
                    }
                };
                Destination {
                    name: d.config.name.clone(),
                    tenants,
                    mappings: d.config.mappings.clone(),
                }
            })
            .collect();
        DestinationSet::new(list)
    }

    /// A router for destinations `which` (all when `None`); see [`Setup::destination_set`].
    pub fn router(&self, which: Option<usize>, tenant: Option<&str>) -> Router {
        Router::new(
            self.routing.clone(),
            self.registry.clone(),
            self.destination_set(which, tenant),
            &self.compiled,
        )
    }
}

/// The target key when none is configured: the mapped columns that are plain copies of the
/// source's replica-identity columns, in mapping order (with `columns = "*"`: the identity
/// columns not excluded, in the source's order).
fn default_key(cfg: &MappingConfig, m: &MappingExpressions, rel: &Relation) -> Vec<String> {
    if cfg.all_columns {
        return rel
            .columns
            .iter()
            .filter(|c| c.is_key && !cfg.exclude.contains(&c.name))
            .map(|c| c.name.clone())
            .collect();
    }
    m.columns
        .iter()
        .filter(|(_, e)| {
            e.as_column()
                .is_some_and(|c| rel.columns.iter().any(|rc| rc.name == c && rc.is_key))
        })
        .map(|(t, _)| t.clone())
        .collect()
}

/// The target table of mapping `m` in destination `d`: see [`target_columns`].
fn target_table(
    d: &DestinationConfig,
    m: &MappingConfig,
    rel: &Relation,
    route: &MappingRoute,
) -> TargetTable {
    TargetTable {
        columns: target_columns(m, rel, route),
        key: route.key.clone(),
        ..target_table_shell(d, m)
    }
}

/// Mapping `m`'s table in destination `d` without columns or key.
fn target_table_shell(d: &DestinationConfig, m: &MappingConfig) -> TargetTable {
    let (schema, soft_delete) = match &d.store {
        StoreConfig::Postgres(pg) => (pg.schema.clone(), pg.soft_delete),
        StoreConfig::ClickHouse(ch) => (ch.database.clone(), false),
    };
    TargetTable {
        schema,
        name: m.target.clone(),
        columns: Vec::new(),
        key: Vec::new(),
        version_column: d.version_column.clone(),
        soft_delete,
    }
}

/// A ClickHouse destination orders each table by its tenant columns, and a delete carries
/// only the key: so every tenant column must be part of every mapped table's key.
fn check_tenant_columns(
    problems: &mut Vec<String>,
    i: usize,
    d: &DestinationConfig,
    mappings: &[MappingConfig],
    keys: &[Vec<String>],
) {
    let StoreConfig::ClickHouse(ch) = &d.store else {
        return;
    };
    for &m in &d.mappings {
        for c in &ch.tenant_columns {
            if !keys[m].contains(c) {
                problems.push(format!(
                    "destinations[{i}] ({}): tenant column {c:?} is not part of the key of mapping {:?} (key: {}); add it to the mapping's key, so that a delete finds the sort key of the row it hides and a row moving between tenants leaves its old place",
                    d.name,
                    mappings[m].name,
                    keys[m].join(", ")
                ));
            }
        }
    }
}
