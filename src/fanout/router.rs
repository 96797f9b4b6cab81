//! Log records → per-destination operations, for one set of destinations.
//!
//! A [`Router`] owns what [`crate::fanout::route::plan`] needs and keeps it current as the log goes
//! by: mappings compiled against the relation each change carries (recompiled when a source
//! table's description changes — one that fails stops only the mapping's destinations,
//! through a `Planned::Fail` barrier), and the
//! tenant registry, updated from the tenancy table's own changes. The dispatcher has one
//! router for every destination; a destination catching up on its own, and `replay`, build
//! one for that destination alone.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use crate::change::{Relation, SequencedChange};
use crate::config::{MappingConfig, OnDropColumn};
use crate::fanout::route::{
    self, DestinationSet, MappingRoute, MappingSpec, Planned, Routed, TenantRegistry,
};
use crate::source::TypeRegistry;
use crate::target::{ColumnType, TableShape, TargetColumn};
use crate::transform::{parse_expr, parse_filter, Expr, Filter};
use crate::value::PgType;

use super::FanoutError;
use tracing::warn;

/// A mapping's column expressions and filter, parsed from the configuration's text.
#[derive(Debug, Clone)]
pub struct MappingExpressions {
    pub columns: Vec<(String, Expr)>,
    pub filter: Option<Filter>,
}

impl MappingExpressions {
    /// Parses `m`'s texts. Loading the configuration already checked them
    /// (`transform::check_expression`); an error here names the key all the same.
    pub fn parse(i: usize, m: &MappingConfig) -> Result<Self, String> {
        let columns = m
            .columns
            .iter()
            .map(|(name, text)| {
                parse_expr(text).map(|e| (name.clone(), e)).map_err(|e| {
                    format!("mappings[{i}].columns.{name}: cannot parse the expression {e}")
                })
            })
            .collect::<Result<_, _>>()?;
        let filter = m
            .filter
            .as_deref()
            .map(parse_filter)
            .transpose()
            .map_err(|e| format!("mappings[{i}].filter: cannot parse the filter {e}"))?;
        Ok(MappingExpressions { columns, filter })
    }
}

/// The tenancy table whose changes keep the registry current.
#[derive(Debug, Clone)]
pub struct Tenancy {
    pub schema: String,
    pub name: String,
    pub key_column: String,
    pub attribute_columns: Vec<String>,
}

/// What every router of one run shares: the mappings as configured, with their resolved
/// target keys, and how to type columns and tenant attributes.
#[derive(Debug)]
pub struct Routing {
    pub mappings: Vec<MappingConfig>,
    /// Per mapping, its column expressions and filter, parsed once.
    pub expressions: Vec<MappingExpressions>,
    /// Per mapping, the target key (configured, or derived from the source's replica
    /// identity at start).
    pub keys: Vec<Vec<String>>,
    pub types: TypeRegistry,
    /// Tenant attribute names (all typed text: the registry holds text).
    pub tenant_attributes: Vec<String>,
    pub tenancy: Option<Tenancy>,
}

impl Routing {
    /// Compiles mapping `m` against `relation`.
    pub fn compile(
        &self,
        m: usize,
        relation: &Relation,
        seq: Option<u64>,
    ) -> Result<MappingRoute, FanoutError> {
        let mapping = &self.mappings[m];
        let attrs: Vec<(&str, PgType)> = self
            .tenant_attributes
            .iter()
            .map(|a| (a.as_str(), PgType::Text))
            .collect();
        // `columns = "*"`: the relation's columns as they are now.
        let all: Vec<(String, Expr)>;
        let columns = if mapping.all_columns {
            all = relation
                .columns
                .iter()
                .filter(|c| !mapping.exclude.contains(&c.name))
                .map(|c| (c.name.clone(), Expr::column(&c.name)))
                .collect();
            &all
        } else {
            &self.expressions[m].columns
        };
        let spec = MappingSpec {
            id: m,
            name: &mapping.name,
            tenant_key: &mapping.tenant_key,
            columns,
            filter: self.expressions[m].filter.as_ref(),
            key: &self.keys[m],
        };
        MappingRoute::compile(spec, relation, &|oid| self.types.pg_type(oid), &attrs).map_err(
            |source| FanoutError::Mapping {
                mapping: mapping.name.clone(),
                seq,
                source,
            },
        )
    }
}

/// A mapping and the relation it was last compiled for.
#[derive(Debug)]
struct Slot {
    mapping: usize,
    compiled: Option<(Arc<Relation>, MappingRoute)>,
    /// The target shape last sent to the mapping's destinations; `None` until this router's
    /// first change of the table (each router announces the shape it routes with once, so a
    /// destination catching up with a router of its own is told too).
    shape: Option<Arc<TableShape>>,
    /// The relation the mapping failed to compile for (its destinations were told to stop).
    failed: Option<Arc<Relation>>,
}

/// Where the tenancy table's key and attribute columns are in one relation description.
#[derive(Debug)]
struct TenancyColumns {
    relation: Arc<Relation>,
    key: usize,
    attributes: Vec<usize>,
}

pub struct Router {
    routing: Arc<Routing>,
    /// Shared with the other routers until a tenancy change arrives (copy on write).
    registry: Arc<TenantRegistry>,
    destinations: DestinationSet,
    slots: Vec<Slot>,
    /// Relation oid → the slots whose source it is (resolved by name on first sight).
    by_oid: HashMap<u32, Vec<usize>>,
    tenancy_oid: Option<u32>,
    tenancy_columns: Option<TenancyColumns>,
}

impl Router {
    /// A router for `destinations`. `compiled` holds mappings already compiled against the
    /// catalog's relations (reused while the log's descriptions match them).
    pub fn new(
        routing: Arc<Routing>,
        registry: Arc<TenantRegistry>,
        destinations: DestinationSet,
        compiled: &[Option<(Arc<Relation>, MappingRoute)>],
    ) -> Self {
        let slots = compiled
            .iter()
            .enumerate()
            .map(|(mapping, c)| Slot {
                mapping,
                compiled: c.clone(),
                shape: None,
                failed: None,
            })
            .collect();
        Router {
            routing,
            registry,
            destinations,
            slots,
            by_oid: HashMap::default(),
            tenancy_oid: None,
            tenancy_columns: None,
        }
    }

    /// Appends what `change` means for this router's destinations to `out`.
    pub fn route(
        &mut self,
        change: &SequencedChange,
        out: &mut Vec<Routed>,
    ) -> Result<(), FanoutError> {
        let rel = &change.change.relation;
        if !self.by_oid.contains_key(&rel.oid) {
            self.resolve(rel);
        }
        if self.tenancy_oid == Some(rel.oid) {
            self.update_registry(change)?;
        }
        let Some(slots) = self.by_oid.get(&rel.oid) else {
            return Ok(());
        };
        // First every mapping's schema barrier, then the change's ops: a barrier at seq S
        // must precede every op at S for the destination (`Planned::is_barrier`).
        for &s in slots {
            recompile(
                &mut self.slots[s],
                &self.routing,
                &self.destinations,
                change,
                out,
            );
        }
        self.plan(change, slots, out)
    }

    fn plan(
        &self,
        change: &SequencedChange,
        slots: &[usize],
        out: &mut Vec<Routed>,
    ) -> Result<(), FanoutError> {
        for &s in slots {
            let slot = &self.slots[s];
            let Some((_, route)) = &slot.compiled else {
                continue;
            };
            let before = out.len();
            match route::plan(change, route, &self.registry, &self.destinations, out) {
                Ok(()) => {}
                // A row without a tenant belongs to no destination.
                Err(route::RouteError::TenantKey {
                    problem: route::KeyProblem::Null,
                    ..
                }) => out.truncate(before),
                Err(source) => {
                    return Err(FanoutError::Route {
                        seq: change.seq,
                        mapping: self.routing.mappings[slot.mapping].name.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    fn resolve(&mut self, rel: &Relation) {
        let slots = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                let src = &self.routing.mappings[s.mapping].source;
                src.schema == rel.schema && src.name == rel.name
            })
            .map(|(i, _)| i)
            .collect();
        self.by_oid.insert(rel.oid, slots);
        if let Some(t) = &self.routing.tenancy {
            if t.schema == rel.schema && t.name == rel.name {
                self.tenancy_oid = Some(rel.oid);
            }
        }
    }

    fn update_registry(&mut self, change: &SequencedChange) -> Result<(), FanoutError> {
        let rel = &change.change.relation;
        let Some(tenancy) = &self.routing.tenancy else {
            return Ok(());
        };
        let stale = self
            .tenancy_columns
            .as_ref()
            .is_none_or(|c| !(Arc::ptr_eq(&c.relation, rel) || *c.relation == **rel));
        if stale {
            let find = |name: &str| rel.columns.iter().position(|c| c.name == name);
            let missing = || FanoutError::TenancyColumns {
                seq: change.seq,
                table: format!("{}.{}", rel.schema, rel.name),
            };
            let key = find(&tenancy.key_column).ok_or_else(missing)?;
            let attributes = tenancy
                .attribute_columns
                .iter()
                .map(|c| find(c).ok_or_else(missing))
                .collect::<Result<_, _>>()?;
            self.tenancy_columns = Some(TenancyColumns {
                relation: rel.clone(),
                key,
                attributes,
            });
        }
        let Some(cols) = &self.tenancy_columns else {
            return Ok(());
        };
        match Arc::make_mut(&mut self.registry).apply(&change.change, cols.key, &cols.attributes) {
            Ok(()) => Ok(()),
            // A tenancy row without an id names no tenant.
            Err(route::RouteError::TenantKey {
                problem: route::KeyProblem::Null,
                ..
            }) => Ok(()),
            Err(source) => Err(FanoutError::Route {
                seq: change.seq,
                mapping: "[tenants]".into(),
                source,
            }),
        }
    }
}

/// The columns of mapping `m`'s target compiled for `rel`: one per mapped column, typed as
/// configured or as the expression's type, NOT NULL for key columns.
pub(super) fn target_columns(
    m: &MappingConfig,
    rel: &Relation,
    route: &MappingRoute,
) -> Vec<TargetColumn> {
    route
        .mapping
        .output_types()
        .iter()
        .zip(route.mapping.pass_through())
        .map(|((name, ty), source)| {
            let ty = m
                .types
                .iter()
                .find(|(c, _)| c == name)
                .map_or_else(|| ColumnType::Known(ty.clone()), |(_, t)| t.clone());
            let mut c = TargetColumn::new(name.clone(), ty, !route.key.contains(name));
            c.typmod = source
                .and_then(|i| rel.columns.get(i))
                .map(|c| c.type_modifier)
                .filter(|&t| t >= 0);
            c
        })
        .collect()
}

/// Keeps `slot` compiled for the change's relation. A new target shape (or this
/// router's first change of the table) becomes a [`Planned::Schema`] for each destination
/// with the mapping; a mapping that no longer compiles a [`Planned::Fail`] for them, once
/// per relation (they stop; the other destinations go on).
fn recompile(
    slot: &mut Slot,
    routing: &Routing,
    destinations: &DestinationSet,
    change: &SequencedChange,
    out: &mut Vec<Routed>,
) {
    let rel = &change.change.relation;
    let same = |r: &Arc<Relation>| Arc::ptr_eq(r, rel) || **r == **rel;
    if slot.failed.as_ref().is_some_and(same) {
        return;
    }
    let current = slot.compiled.as_ref().is_some_and(|(r, _)| same(r));
    if current {
        if let Some((r, _)) = &mut slot.compiled {
            // Same description, new allocation: remember it so the next check is a
            // pointer comparison.
            if !Arc::ptr_eq(r, rel) {
                *r = rel.clone();
            }
        }
        if slot.shape.is_some() {
            return;
        }
    } else {
        match routing.compile(slot.mapping, rel, Some(change.seq)) {
            Ok(route) => {
                slot.compiled = Some((rel.clone(), route));
                slot.failed = None;
            }
            Err(e) => {
                let mapping = &routing.mappings[slot.mapping];
                let reason = match &e {
                    FanoutError::Mapping { source, .. } => source.to_string(),
                    e => e.to_string(),
                };
                warn!(mapping = %mapping.name, seq = change.seq, reason = %reason, "the mapping no longer compiles against its source table; its destinations stop");
                slot.compiled = None;
                slot.shape = None;
                slot.failed = Some(rel.clone());
                let (name, reason): (Arc<str>, Arc<str>) =
                    (mapping.name.as_str().into(), reason.into());
                for &(destination, table) in destinations.with_mapping(slot.mapping) {
                    out.push(Routed {
                        destination,
                        table,
                        op: Planned::Fail {
                            seq: change.seq,
                            mapping: name.clone(),
                            reason: reason.clone(),
                        },
                    });
                }
                return;
            }
        }
    }
    let Some((rel, route)) = &slot.compiled else {
        return;
    };
    let mapping = &routing.mappings[slot.mapping];
    let shape = TableShape {
        mapping: mapping.name.clone(),
        columns: target_columns(mapping, rel, route),
        key: route.key.clone(),
        drop_gone: mapping.on_drop_column == OnDropColumn::Drop,
    };
    if slot.shape.as_deref() == Some(&shape) {
        return;
    }
    let shape = Arc::new(shape);
    slot.shape = Some(shape.clone());
    for &(destination, table) in destinations.with_mapping(slot.mapping) {
        out.push(Routed {
            destination,
            table,
            op: Planned::Schema {
                seq: change.seq,
                shape: shape.clone(),
            },
        });
    }
}
