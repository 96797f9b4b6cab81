//! Routing: which destinations a row change concerns, and the row operations it becomes there.
//!
//! ```text
//!   SequencedChange (relation, op, seq)
//!        │  MappingRoute: is this the mapping's source table?           no ─▶ nothing
//!        ▼
//!   tenant key column ──▶ tenant id (new tuple; old tuple for deletes and tenant moves)
//!        │
//!        ▼  DestinationSet: tenant → destinations (+ the `*` ones) ∩ those with the mapping
//!   destinations ─────────────────────────────────────────── none ─▶ nothing (no evaluation)
//!        │
//!        ▼  TenantRegistry: tenant → attributes (`tenant.x` in expressions)
//!   CompiledMapping::eval ──matches──▶ Upsert { seq, cells }   ─┐
//!        │                                                     ├─▶ per destination:
//!        └──rejects──────────────────▶ Delete { seq, key }     ─┘   (destination, table, op)
//! ```
//!
//! Pure logic: no I/O and no state besides the two lookups. The dispatcher calls [`plan`] for
//! each change and each mapping of its table, and hands the resulting ops to the writers.
//!
//! **Rules.**
//! - The tenant key is read from the new tuple, and from the old tuple for deletes. An update
//!   whose old tuple carries a different tenant key *moves* the row: it is deleted from the old
//!   tenant's destinations and written to the new tenant's. A destination serving both tenants
//!   (a `*` destination) gets only the write when the target key did not change, so the row is
//!   never deleted and re-written under the same seq.
//! - An update whose old tuple yields a different target key (a primary-key change) deletes
//!   the old key first.
//! - A row the filter accepts is upserted; one it rejects is deleted from the target by its
//!   key. With REPLICA IDENTITY DEFAULT the old row is not known, so whether it matched cannot
//!   be decided: a rejected row is always deleted. That is safe because deletes are idempotent
//!   and seq-guarded (a destination never lets a change replace or delete a newer row; see
//!   [`crate::sink`]). With REPLICA IDENTITY FULL the delete is left out when the old row did
//!   not match either (a filter that cannot decide the old row counts as a match), and the
//!   new row's unchanged TOAST values are filled from the old row before evaluating.
//! - A TRUNCATE becomes [`Planned::Truncate`] for every destination that has the mapping,
//!   whatever tenants it serves; the writer removes its tenants' rows.
//! - A change of another table, or of a tenant no destination serves, produces nothing and
//!   costs a table-name comparison, a UTF-8 check of the tenant key and one hash lookup:
//!   destinations are looked up before anything is evaluated or allocated.
//! - A tenant the registry does not know evaluates with every attribute NULL: the tenancy row
//!   may arrive after the rows that reference it, and the mapping decides what a NULL means.
//! - Every op carries the change's seq.
//! - An upsert that still carries [`Cell::Unchanged`] after the old row filled what it could
//!   is [`Planned::Partial`]: with it goes the tuple it was evaluated from and the tenant's
//!   attributes ([`SourceRow`]), so that the destination's worker can re-read the missing
//!   values from the source and evaluate the same mapping again when the destination holds no
//!   copy of them (`fanout::toast`). One `SourceRow` is shared by every destination's op.
//!
//! Errors name tables and columns, never values.

// Per-change lookups: FxHash is several times cheaper than SipHash on short keys, and the
// keys (tenant ids, oids, mapping indexes) come from the source, not from an attacker.
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use crate::change::{
    Datum, OldTuple, Op, Relation, RowChange, SequencedChange, SnapshotScope, Tuple,
};
use crate::config::Tenants;
use crate::problems::Problems;
use crate::sink::{Batch, Cell, RowOp};
use crate::target::TableShape;
use crate::transform::{CompileError, CompiledMapping, EvalError, Expr, Filter};
use crate::value::PgType;

/// Index of a destination in the list given to [`DestinationSet::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestinationId(pub usize);

/// One destination as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub tenants: Tenants,
    /// Mapping ids ([`MappingSpec::id`]) this destination receives. The destination's target
    /// tables are these mappings' targets in this order: a mapping's position here is the
    /// table index of its ops (the order the writer's tables are given in).
    pub mappings: Vec<usize>,
}

/// Which destinations serve which tenant, indexed so that a lookup costs one hash probe and
/// touches only the destinations concerned, however many tenants and destinations there are.
#[derive(Debug, Clone, Default)]
pub struct DestinationSet {
    by_tenant: HashMap<Box<str>, Vec<DestinationId>>,
    all: Vec<DestinationId>,
    /// Per destination, its mapping ids in table order.
    mappings: Vec<Vec<usize>>,
    names: Vec<String>,
    /// Per mapping id, the destinations having it and the table index there.
    by_mapping: HashMap<usize, Vec<(DestinationId, usize)>>,
}

impl DestinationSet {
    pub fn new(destinations: Vec<Destination>) -> Self {
        let mut set = DestinationSet::default();
        for (i, d) in destinations.into_iter().enumerate() {
            let id = DestinationId(i);
            match d.tenants {
                Tenants::All => set.all.push(id),
                Tenants::Some(tenants) => {
                    for t in tenants {
                        set.by_tenant
                            .entry(t.into_boxed_str())
                            .or_default()
                            .push(id);
                    }
                }
            }
            for (table, &m) in d.mappings.iter().enumerate() {
                set.by_mapping.entry(m).or_default().push((id, table));
            }
            set.mappings.push(d.mappings);
            set.names.push(d.name);
        }
        set
    }

    pub fn name(&self, d: DestinationId) -> Option<&str> {
        self.names.get(d.0).map(String::as_str)
    }

    /// Whether a snapshot of `scope` is for destination `d`.
    pub fn in_scope(&self, d: DestinationId, scope: &SnapshotScope) -> bool {
        self.name(d).is_some_and(|n| scope.has_destination(n))
    }

    /// The destinations serving `tenant`: its own, then the `*` ones.
    pub fn destinations_for<'a>(
        &'a self,
        tenant: &str,
    ) -> impl Iterator<Item = DestinationId> + 'a {
        let own = self.by_tenant.get(tenant).map_or(&[][..], Vec::as_slice);
        own.iter().chain(&self.all).copied()
    }

    /// The destinations serving `tenant` that have mapping `mapping`, with the table index
    /// of the mapping's target there.
    pub fn serving<'a>(
        &'a self,
        mapping: usize,
        tenant: &str,
    ) -> impl Iterator<Item = (DestinationId, usize)> + 'a {
        self.destinations_for(tenant).filter_map(move |d| {
            let tables = self.mappings.get(d.0)?;
            tables.iter().position(|&m| m == mapping).map(|t| (d, t))
        })
    }

    /// Every destination that has mapping `mapping`, with its table index there.
    pub fn with_mapping(&self, mapping: usize) -> &[(DestinationId, usize)] {
        self.by_mapping.get(&mapping).map_or(&[], Vec::as_slice)
    }
}

/// Tenant id → attributes, in the fixed attribute order the mappings were compiled with
/// (the `tenant_attrs` of [`CompiledMapping::compile`]).
#[derive(Debug, Clone)]
pub struct TenantRegistry {
    attributes: Vec<String>,
    tenants: HashMap<Box<str>, Vec<Option<String>>>,
    /// Every attribute NULL: what an unknown tenant evaluates with.
    unknown: Vec<Option<String>>,
}

impl TenantRegistry {
    /// An empty registry for these attribute names.
    pub fn new(attributes: Vec<String>) -> Self {
        let unknown = vec![None; attributes.len()];
        TenantRegistry {
            attributes,
            tenants: HashMap::default(),
            unknown,
        }
    }

    /// The attribute names, in order.
    pub fn attribute_names(&self) -> &[String] {
        &self.attributes
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Replaces the contents with `rows` of (tenant id, attributes in order). Rows with too
    /// few attributes are padded with NULL, extra ones dropped.
    pub fn load(&mut self, rows: impl IntoIterator<Item = (String, Vec<Option<String>>)>) {
        self.tenants.clear();
        for (tenant, mut attrs) in rows {
            attrs.resize(self.attributes.len(), None);
            self.tenants.insert(tenant.into_boxed_str(), attrs);
        }
    }

    /// The attributes of `tenant`, `None` when it is unknown.
    pub fn attributes(&self, tenant: &str) -> Option<&[Option<String>]> {
        self.tenants.get(tenant).map(Vec::as_slice)
    }

    /// The attributes of `tenant`, all NULL when it is unknown.
    pub fn attributes_or_null(&self, tenant: &str) -> &[Option<String>] {
        self.attributes(tenant).unwrap_or(&self.unknown)
    }

    /// Applies a change of the tenancy table: `key` is the tenant id column, `attributes`
    /// the columns of the attributes, in order. Inserts and updates set the tenant (an update
    /// that changes the id removes the old one; an unchanged TOAST attribute keeps its value),
    /// deletes remove it, a truncate clears the registry.
    pub fn apply(
        &mut self,
        change: &RowChange,
        key: usize,
        attributes: &[usize],
    ) -> Result<(), RouteError> {
        let rel = &*change.relation;
        let op = change.op.name();
        match &change.op {
            Op::Insert { new } | Op::Update { new, .. } | Op::Snapshot { new, .. } => {
                let id = tenant_text(rel, new, key, op)?;
                let mut previous = None;
                if let Op::Update { old: Some(old), .. } = &change.op {
                    if let Datum::Text(old_id) = datum(rel, old.tuple(), key, op)? {
                        if old_id.as_ref() != id.as_bytes() {
                            let old_id = utf8(rel, old_id, key, op)?;
                            previous = self.tenants.remove(old_id);
                        }
                    }
                }
                if previous.is_none() {
                    previous = self.tenants.get(id).cloned();
                }
                let mut attrs = Vec::with_capacity(attributes.len());
                for (i, &col) in attributes.iter().enumerate() {
                    attrs.push(match datum(rel, new, col, op)? {
                        Datum::Null => None,
                        Datum::Text(b) => Some(utf8(rel, b, col, op)?.to_owned()),
                        Datum::UnchangedToast => {
                            previous.as_ref().and_then(|p| p.get(i).cloned().flatten())
                        }
                    });
                }
                attrs.resize(self.attributes.len(), None);
                self.tenants.insert(id.into(), attrs);
            }
            Op::Delete { old } => {
                let id = tenant_text(rel, old.tuple(), key, op)?;
                self.tenants.remove(id);
            }
            Op::Truncate { .. } => self.tenants.clear(),
            Op::SnapshotMark { .. } => {}
        }
        Ok(())
    }
}

/// What a [`MappingRoute`] is built from: the parts of a `[[mappings]]` entry.
#[derive(Debug, Clone, Copy)]
pub struct MappingSpec<'a> {
    /// The mapping's id, as listed in [`Destination::mappings`].
    pub id: usize,
    /// The mapping's name (snapshot scopes name mappings).
    pub name: &'a str,
    /// The source column holding the tenant id.
    pub tenant_key: &'a str,
    /// Target column = expression, in target column order.
    pub columns: &'a [(String, Expr)],
    pub filter: Option<&'a Filter>,
    /// The target key columns, each one of `columns`.
    pub key: &'a [String],
}

/// A mapping bound to its source relation, ready for [`plan`].
#[derive(Debug, Clone)]
pub struct MappingRoute {
    pub id: usize,
    pub name: String,
    pub schema: String,
    pub table: String,
    pub tenant_key: String,
    /// Index of the tenant key column in the relation compiled for.
    tenant_key_index: usize,
    pub mapping: CompiledMapping,
    /// The key columns alone, without the filter: the key of a row the filter rejects, or of
    /// an old tuple that carries only the replica identity.
    key_mapping: CompiledMapping,
    /// Target key column names, in key order.
    pub key: Vec<String>,
    /// Positions of the key columns in the mapping's output, in key order.
    pub key_positions: Vec<usize>,
}

/// A mapping that cannot be routed. Lists every problem at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("the mapping of {relation} cannot be routed:{problems}")]
    Problems {
        relation: String,
        problems: Problems,
    },
}

impl MappingRoute {
    /// Compiles `spec` against `relation` (see [`CompiledMapping::compile`] for `type_of` and
    /// `tenant_attrs`) and checks what routing needs: the tenant key column exists and is part
    /// of the replica identity (so deletes and tenant moves can be routed), and the target key
    /// is mapped and computed from replica-identity columns only (so a delete's old key tuple
    /// yields it).
    pub fn compile(
        spec: MappingSpec<'_>,
        relation: &Relation,
        type_of: &dyn Fn(u32) -> PgType,
        tenant_attrs: &[(&str, PgType)],
    ) -> Result<Self, SetupError> {
        let name = format!("{}.{}", relation.schema, relation.name);
        let mut problems = Vec::new();
        let tenant_key_index = relation
            .columns
            .iter()
            .position(|c| c.name == spec.tenant_key);
        match tenant_key_index.map(|i| &relation.columns[i]) {
            None => problems.push(format!(
                "tenant key column {} does not exist in {name}",
                spec.tenant_key
            )),
            Some(c) if !c.is_key => problems.push(format!(
                "tenant key column {} is not part of the replica identity of {name}, so deletes \
                 cannot be routed; add it to the primary key or set REPLICA IDENTITY FULL \
                 (ALTER TABLE {} REPLICA IDENTITY FULL)",
                spec.tenant_key,
                crate::sql::QualifiedName::new(&relation.schema, &relation.name).quoted()
            )),
            Some(_) => {}
        }
        if spec.key.is_empty() {
            problems.push("the target key is empty; name at least one mapped column".into());
        }
        let mut key_positions = Vec::with_capacity(spec.key.len());
        let mut key_columns = Vec::with_capacity(spec.key.len());
        for k in spec.key {
            let Some(pos) = spec.columns.iter().position(|(t, _)| t == k) else {
                problems.push(format!("target key column {k} is not a mapped column"));
                continue;
            };
            key_positions.push(pos);
            let expr = &spec.columns[pos].1;
            for src in expr.columns() {
                let identity = relation.columns.iter().any(|c| c.name == src && c.is_key);
                if !identity {
                    problems.push(format!(
                        "target key column {k} reads {src}, which is not part of the replica \
                         identity of {name}; deletes carry only the identity columns"
                    ));
                }
            }
            key_columns.push(spec.columns[pos].clone());
        }
        // One list with the expression problems too: `check` must show everything at once.
        let mapping = match CompiledMapping::compile(
            relation,
            type_of,
            tenant_attrs,
            spec.columns,
            spec.filter,
        ) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.extend(e.problems.iter().map(|p| p.to_string()));
                None
            }
        };
        let (Some(tenant_key_index), Some(mapping), true) =
            (tenant_key_index, mapping, problems.is_empty())
        else {
            return Err(SetupError::Problems {
                relation: name,
                problems: problems.into(),
            });
        };
        let key_mapping =
            CompiledMapping::compile(relation, type_of, tenant_attrs, &key_columns, None)?;
        Ok(MappingRoute {
            id: spec.id,
            name: spec.name.to_owned(),
            schema: relation.schema.clone(),
            table: relation.name.clone(),
            tenant_key: spec.tenant_key.to_owned(),
            tenant_key_index,
            mapping,
            key_mapping,
            key: spec.key.to_vec(),
            key_positions,
        })
    }

    fn is_source(&self, rel: &Relation) -> bool {
        rel.name == self.table && rel.schema == self.schema
    }
}

/// An operation for one destination table.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    Row(RowOp<'static>),
    /// An upsert with [`Cell::Unchanged`] cells, and what re-reading them from the source
    /// takes.
    Partial {
        op: RowOp<'static>,
        source: Arc<SourceRow>,
    },
    /// The source table was truncated: remove the rows of the destination's tenants.
    Truncate {
        seq: u64,
    },
    /// A snapshot of the source table is complete: remove the destination's rows whose
    /// version is below `below` (neither read by the snapshot nor changed since it began).
    Sweep {
        seq: u64,
        below: u64,
    },
    /// From change `seq` on, the mapping's rows have this shape: the destination brings its
    /// table to it before writing any op at or after `seq` (a barrier: see
    /// [`Planned::is_barrier`]).
    Schema {
        seq: u64,
        shape: Arc<TableShape>,
    },
    /// From change `seq` on the mapping no longer compiles against its source table: the
    /// destination writes what came before and stops (a barrier).
    Fail {
        seq: u64,
        mapping: Arc<str>,
        reason: Arc<str>,
    },
}

/// What evaluating an upsert again with its unchanged TOAST values read from the source takes:
/// the source row as the change carried it (the old row's values filled in), the mapping and
/// the tenant's attributes as they were at the change. Its datums are slices of the log record
/// (no copies); it lives as long as the batch holding the op.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    /// The mapping id ([`MappingRoute::id`]).
    pub mapping: usize,
    /// The source relation the tuple is of, as the change described it.
    pub relation: Arc<Relation>,
    /// The tuple evaluated, with [`Datum::UnchangedToast`] where values are missing.
    pub tuple: Tuple,
    /// The tenant's attributes, in the registry's order.
    pub attributes: Vec<Option<String>>,
}

/// A batch's ops whose unchanged values may have to be read from the source: (index into
/// [`Batch::ops`], what re-reading takes), in op order.
pub type PartialOps = Vec<(usize, Arc<SourceRow>)>;

impl Planned {
    pub fn seq(&self) -> u64 {
        match self {
            Planned::Row(op) | Planned::Partial { op, .. } => op.seq(),
            Planned::Truncate { seq }
            | Planned::Sweep { seq, .. }
            | Planned::Schema { seq, .. }
            | Planned::Fail { seq, .. } => *seq,
        }
    }

    /// Whether this is a schema barrier ([`Planned::Schema`], [`Planned::Fail`]): the ops
    /// before it must be written before it is acted on, and those after it only then. It is
    /// not added to a batch.
    pub fn is_barrier(&self) -> bool {
        matches!(self, Planned::Schema { .. } | Planned::Fail { .. })
    }

    /// Adds this operation on destination table `table` to `batch`; a partial upsert's source
    /// row goes to `partial`, under the op's index in the batch.
    pub fn add_to(self, table: usize, batch: &mut Batch<'static>, partial: &mut PartialOps) {
        match self {
            Planned::Row(op) => batch.ops.push((table, op)),
            Planned::Partial { op, source } => {
                partial.push((batch.ops.len(), source));
                batch.ops.push((table, op));
            }
            Planned::Truncate { seq } => {
                batch.truncate(table, seq);
            }
            // A truncate removes exactly the rows below its seq: the sweep's threshold.
            Planned::Sweep { below, .. } => {
                batch.truncate(table, below);
            }
            // Acted on by the caller between batches (see `is_barrier`).
            Planned::Schema { .. } | Planned::Fail { .. } => {}
        }
    }
}

/// [`plan`]'s output: `op` for table `table` (an index into the destination's mappings) of
/// `destination`.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub destination: DestinationId,
    pub table: usize,
    pub op: Planned,
}

/// Why the tenant key could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    Null,
    UnchangedToast,
    NotUtf8,
    /// The tuple has no such column: the relation changed since the mapping was compiled.
    Missing,
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyProblem::Null => "is NULL",
            KeyProblem::UnchangedToast => "is an unchanged TOAST value the change does not carry",
            KeyProblem::NotUtf8 => "is not valid UTF-8",
            KeyProblem::Missing => "is missing from the tuple",
        })
    }
}

/// A change that cannot be routed. Names tables and columns, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{op} of {table}: column {column} {problem}; a row without a tenant cannot be routed")]
    TenantKey {
        table: String,
        column: String,
        op: &'static str,
        problem: KeyProblem,
    },
    #[error("{op} of {table}: column {column} is not where the mapping was compiled to find it; the table changed, recompile the mapping")]
    RelationChanged {
        table: String,
        column: String,
        op: &'static str,
    },
    #[error("{op} of {table}: target key column {column} is not a text value (NULL or an unchanged TOAST value)")]
    KeyNotText {
        table: String,
        column: String,
        op: &'static str,
    },
    #[error(transparent)]
    Eval(#[from] EvalError),
}

fn qualified(rel: &Relation) -> String {
    format!("{}.{}", rel.schema, rel.name)
}

fn column_name(rel: &Relation, i: usize) -> String {
    rel.columns
        .get(i)
        .map_or_else(|| format!("#{i}"), |c| c.name.clone())
}

fn key_error(rel: &Relation, i: usize, op: &'static str, problem: KeyProblem) -> RouteError {
    RouteError::TenantKey {
        table: qualified(rel),
        column: column_name(rel, i),
        op,
        problem,
    }
}

fn datum<'t>(
    rel: &Relation,
    tuple: &'t Tuple,
    i: usize,
    op: &'static str,
) -> Result<&'t Datum, RouteError> {
    tuple
        .0
        .get(i)
        .ok_or_else(|| key_error(rel, i, op, KeyProblem::Missing))
}

fn utf8<'t>(
    rel: &Relation,
    b: &'t [u8],
    i: usize,
    op: &'static str,
) -> Result<&'t str, RouteError> {
    std::str::from_utf8(b).map_err(|_| key_error(rel, i, op, KeyProblem::NotUtf8))
}

/// The tenant id in column `i` of `tuple`; NULL, unchanged TOAST and non-UTF-8 are errors.
fn tenant_text<'t>(
    rel: &Relation,
    tuple: &'t Tuple,
    i: usize,
    op: &'static str,
) -> Result<&'t str, RouteError> {
    match datum(rel, tuple, i, op)? {
        Datum::Text(b) => utf8(rel, b, i, op),
        Datum::Null => Err(key_error(rel, i, op, KeyProblem::Null)),
        Datum::UnchangedToast => Err(key_error(rel, i, op, KeyProblem::UnchangedToast)),
    }
}

/// Appends to `out` what `change` means for the destinations of mapping `route`. Nothing when
/// the change is of another table or concerns no destination. See the module comment for
/// the rules.
pub fn plan(
    change: &SequencedChange,
    route: &MappingRoute,
    registry: &TenantRegistry,
    destinations: &DestinationSet,
    out: &mut Vec<Routed>,
) -> Result<(), RouteError> {
    let rel = &*change.change.relation;
    if !route.is_source(rel) {
        return Ok(());
    }
    let seq = change.seq;
    let op = change.change.op.name();
    if let Op::Truncate { .. } = change.change.op {
        out.extend(
            destinations
                .with_mapping(route.id)
                .iter()
                .map(|&(destination, table)| Routed {
                    destination,
                    table,
                    op: Planned::Truncate { seq },
                }),
        );
        return Ok(());
    }
    match &change.change.op {
        Op::SnapshotMark { scope, mark } => {
            if mark.sweep_below > 0 && scope.has_mapping(&route.name) {
                out.extend(
                    destinations
                        .with_mapping(route.id)
                        .iter()
                        .filter(|(d, _)| destinations.in_scope(*d, scope))
                        .map(|&(destination, table)| Routed {
                            destination,
                            table,
                            op: Planned::Sweep {
                                seq,
                                below: mark.sweep_below,
                            },
                        }),
                );
            }
            return Ok(());
        }
        Op::Snapshot { scope, .. } if !scope.has_mapping(&route.name) => return Ok(()),
        _ => {}
    }
    let tk = route.tenant_key_index;
    if rel.columns.get(tk).map(|c| c.name.as_str()) != Some(route.tenant_key.as_str()) {
        return Err(RouteError::RelationChanged {
            table: qualified(rel),
            column: route.tenant_key.clone(),
            op,
        });
    }
    let cx = Planner {
        route,
        rel,
        relation: &change.change.relation,
        op,
        seq,
        registry,
        destinations,
    };
    match &change.change.op {
        Op::Insert { new } => {
            let tenant = tenant_text(rel, new, tk, op)?;
            if destinations.serving(route.id, tenant).next().is_none() {
                return Ok(());
            }
            if let Some(cells) = cx.upsert_cells(new, tenant)? {
                let row = cx.upsert(cells, new, tenant);
                cx.emit(tenant, None, row, out);
            }
        }
        Op::Update { old, new } => cx.update(old.as_ref(), new, out)?,
        Op::Snapshot { new, scope } => {
            let tenant = tenant_text(rel, new, tk, op)?;
            if !scope.has_tenant(tenant)
                || !destinations
                    .serving(route.id, tenant)
                    .any(|(d, _)| destinations.in_scope(d, scope))
            {
                return Ok(());
            }
            if let Some(cells) = cx.upsert_cells(new, tenant)? {
                for (destination, table) in destinations.serving(route.id, tenant) {
                    if destinations.in_scope(destination, scope) {
                        out.push(Routed {
                            destination,
                            table,
                            op: Planned::Row(RowOp::Upsert {
                                seq,
                                cells: cells.clone(),
                            }),
                        });
                    }
                }
            }
        }
        Op::Delete { old } => {
            let tenant = tenant_text(rel, old.tuple(), tk, op)?;
            if destinations.serving(route.id, tenant).next().is_none() {
                return Ok(());
            }
            if let OldTuple::Full(t) = old {
                // Nothing to remove when the old row was filtered out; when that cannot be
                // decided (unchanged TOAST in the filter), delete anyway: deletes are
                // idempotent.
                let attrs = registry.attributes_or_null(tenant);
                if !route.mapping.matches(t, attrs).unwrap_or(true) {
                    return Ok(());
                }
            }
            let key = cx.key_cells(old.tuple(), tenant)?;
            cx.emit(tenant, None, Planned::Row(RowOp::Delete { seq, key }), out);
        }
        Op::Truncate { .. } | Op::SnapshotMark { .. } => {}
    }
    Ok(())
}

/// What one call of [`plan`] works with.
struct Planner<'a> {
    route: &'a MappingRoute,
    rel: &'a Relation,
    /// `rel`, shared (for [`SourceRow`]).
    relation: &'a Arc<Relation>,
    op: &'static str,
    seq: u64,
    registry: &'a TenantRegistry,
    destinations: &'a DestinationSet,
}

impl Planner<'_> {
    /// Pushes `row` for every destination of `tenant` with the mapping, except those that
    /// also serve `skip` (a tenant whose ops were already planned for them).
    fn emit(&self, tenant: &str, skip: Option<&str>, row: Planned, out: &mut Vec<Routed>) {
        // The last destination takes `row` itself: one copy per destination, not one more
        // (with one destination, none).
        let mut last = None;
        for (destination, table) in self.destinations.serving(self.route.id, tenant) {
            if let Some(skip) = skip {
                if self
                    .destinations
                    .serving(self.route.id, skip)
                    .any(|(d, _)| d == destination)
                {
                    continue;
                }
            }
            if let Some((destination, table)) = last.replace((destination, table)) {
                out.push(Routed {
                    destination,
                    table,
                    op: row.clone(),
                });
            }
        }
        if let Some((destination, table)) = last {
            out.push(Routed {
                destination,
                table,
                op: row,
            });
        }
    }

    /// The upsert of `cells`, evaluated from `tuple`: partial when a cell is unchanged (see
    /// [`SourceRow`]).
    fn upsert(&self, cells: Vec<Cell<'static>>, tuple: &Tuple, tenant: &str) -> Planned {
        let partial = cells.iter().any(|c| matches!(c, Cell::Unchanged));
        let op = RowOp::Upsert {
            seq: self.seq,
            cells,
        };
        if !partial {
            return Planned::Row(op);
        }
        Planned::Partial {
            op,
            source: Arc::new(SourceRow {
                mapping: self.route.id,
                relation: self.relation.clone(),
                tuple: tuple.clone(),
                attributes: self.registry.attributes_or_null(tenant).to_vec(),
            }),
        }
    }

    /// The mapped row when the filter accepts `tuple`.
    fn upsert_cells(
        &self,
        tuple: &Tuple,
        tenant: &str,
    ) -> Result<Option<Vec<Cell<'static>>>, RouteError> {
        let attrs = self.registry.attributes_or_null(tenant);
        let Some(row) = self.route.mapping.eval(tuple, attrs)? else {
            return Ok(None);
        };
        for (i, &pos) in self.route.key_positions.iter().enumerate() {
            if !row.get(pos).is_some_and(Cell::is_text) {
                return Err(self.key_not_text(i));
            }
        }
        // A huge value is shared with the log record it came from, not copied: every
        // destination's op holds the same buffer.
        Ok(Some(
            row.into_iter().map(|c| c.into_static(tuple)).collect(),
        ))
    }

    /// The target key of `tuple`, filter or not; `tuple` may carry only the replica identity.
    fn key_cells(&self, tuple: &Tuple, tenant: &str) -> Result<Vec<Cell<'static>>, RouteError> {
        let attrs = self.registry.attributes_or_null(tenant);
        let row = self
            .route
            .key_mapping
            .eval(tuple, attrs)?
            .unwrap_or_default();
        let mut key = Vec::with_capacity(row.len());
        for (i, cell) in row.into_iter().enumerate() {
            if !cell.is_text() {
                return Err(self.key_not_text(i));
            }
            key.push(cell.into_static(tuple));
        }
        Ok(key)
    }

    fn key_not_text(&self, i: usize) -> RouteError {
        RouteError::KeyNotText {
            table: qualified(self.rel),
            column: self.route.key.get(i).cloned().unwrap_or_default(),
            op: self.op,
        }
    }

    fn update(
        &self,
        old: Option<&OldTuple>,
        new: &Tuple,
        out: &mut Vec<Routed>,
    ) -> Result<(), RouteError> {
        let (rel, op, seq, tk) = (self.rel, self.op, self.seq, self.route.tenant_key_index);
        let id = self.route.id;
        let tenant = tenant_text(rel, new, tk, op)?;
        // The old tenant, when the old tuple carries one (the tenant key is part of the
        // replica identity, checked at compile). A NULL there means the old row had no
        // tenant: it was never routed, so there is nothing to remove.
        let mut old_routed = old.is_some();
        let old_tenant = match old.map(|o| datum(rel, o.tuple(), tk, op)).transpose()? {
            Some(Datum::Text(b)) => Some(utf8(rel, b, tk, op)?),
            Some(Datum::Null) => {
                old_routed = false;
                None
            }
            Some(Datum::UnchangedToast) => {
                return Err(key_error(rel, tk, op, KeyProblem::UnchangedToast))
            }
            None => None,
        };
        let moved_from = old_tenant.filter(|&o| o != tenant);
        let served_new = self.destinations.serving(id, tenant).next().is_some();
        let served_old =
            moved_from.is_some_and(|o| self.destinations.serving(id, o).next().is_some());
        if !served_new && !served_old {
            return Ok(());
        }

        // With the whole old row, fill unchanged TOAST values from it: the new tenant's
        // destinations may never have seen them, and expressions over several columns are
        // then exact.
        let merged;
        let new = match old {
            Some(OldTuple::Full(o))
                if new.0.iter().any(|d| matches!(d, Datum::UnchangedToast))
                    && o.0.len() == new.0.len() =>
            {
                merged = Tuple(
                    new.0
                        .iter()
                        .zip(&o.0)
                        .map(|(n, o)| match n {
                            Datum::UnchangedToast => o.clone(),
                            n => n.clone(),
                        })
                        .collect(),
                );
                &merged
            }
            _ => new,
        };

        let new_row = if served_new {
            self.upsert_cells(new, tenant)?
        } else {
            None
        };
        let new_key = match &new_row {
            Some(cells) => self
                .route
                .key_positions
                .iter()
                .map(|&p| cells[p].clone())
                .collect(),
            None => self.key_cells(new, tenant)?,
        };

        // The old row's key, when it may differ from the new one or the row moved.
        let old_tenant = moved_from.unwrap_or(tenant);
        let old_key = match old {
            Some(o) if old_routed => {
                // Whether the old row was in the targets: known with the whole old row (when
                // the filter cannot decide, assume it was); with only the key, assume it was —
                // a delete of an absent row is a no-op.
                let old_matched = match o {
                    OldTuple::Full(t) => self
                        .route
                        .mapping
                        .matches(t, self.registry.attributes_or_null(old_tenant))
                        .unwrap_or(true),
                    OldTuple::Key(_) => true,
                };
                if old_matched {
                    Some(self.key_cells(o.tuple(), old_tenant)?)
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(old_key) = old_key {
            if old_key != new_key || moved_from.is_some() {
                // A destination serving both tenants needs no delete when the key is the same:
                // the new op below replaces the row under the same seq.
                let skip = (old_key == new_key).then_some(tenant);
                let delete = Planned::Row(RowOp::Delete { seq, key: old_key });
                self.emit(old_tenant, skip, delete, out);
            }
        } else if new_row.is_none() && matches!(old, Some(OldTuple::Full(_))) {
            // Neither the old nor the new row matches: nothing to do.
            return Ok(());
        }

        if served_new {
            let row = match new_row {
                Some(cells) => self.upsert(cells, new, tenant),
                None => Planned::Row(RowOp::Delete { seq, key: new_key }),
            };
            self.emit(tenant, None, row, out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::change::{Column, ReplicaIdentity, SnapshotMark};
    use crate::lsn::Lsn;
    use crate::sink::text;
    use crate::transform::{parse_expr, parse_filter};
    use crate::value::Timestamp;

    const A: &str = "tenant-a";
    const B: &str = "tenant-b";
    const MAPPING: usize = 0;

    /// public.project_user (id int8, tenancy_id text, display_name text, is_anonymous bool),
    /// replica identity: the primary key (tenancy_id, id).
    fn relation(name: &str) -> Arc<Relation> {
        let col = |name: &str, type_oid, is_key| Column {
            name: name.into(),
            type_oid,
            type_modifier: -1,
            is_key,
        };
        Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col("id", 20, true),
                col("tenancy_id", 25, true),
                col("display_name", 25, false),
                col("is_anonymous", 16, false),
            ],
        })
    }

    fn route() -> MappingRoute {
        let columns: Vec<(String, Expr)> = [
            ("user_id", "id"),
            ("project_id", "tenant.project_id"),
            ("name", "display_name"),
        ]
        .iter()
        .map(|(t, e)| ((*t).to_owned(), parse_expr(e).unwrap()))
        .collect();
        let filter = parse_filter("is_anonymous = false").unwrap();
        let key = ["user_id".to_owned()];
        let spec = MappingSpec {
            name: "m",
            id: MAPPING,
            tenant_key: "tenancy_id",
            columns: &columns,
            filter: Some(&filter),
            key: &key,
        };
        MappingRoute::compile(
            spec,
            &relation("project_user"),
            &PgType::from_oid,
            &[("project_id", PgType::Text)],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn tenants(ts: &[&str]) -> Tenants {
        Tenants::Some(ts.iter().map(|t| (*t).to_owned()).collect())
    }

    /// 0: A's database, 1: B's, 2: a shared store (`*`) with the mapping as its second table,
    /// 3: another database of A without the mapping.
    fn destinations() -> DestinationSet {
        DestinationSet::new(vec![
            Destination {
                name: "d0".into(),
                tenants: tenants(&[A]),
                mappings: vec![MAPPING],
            },
            Destination {
                name: "d1".into(),
                tenants: tenants(&[B]),
                mappings: vec![MAPPING],
            },
            Destination {
                name: "d2".into(),
                tenants: Tenants::All,
                mappings: vec![5, MAPPING],
            },
            Destination {
                name: "d3".into(),
                tenants: tenants(&[A]),
                mappings: vec![7],
            },
        ])
    }

    fn registry() -> TenantRegistry {
        let mut r = TenantRegistry::new(vec!["project_id".into()]);
        r.load([
            (A.to_owned(), vec![Some("project-a".to_owned())]),
            (B.to_owned(), vec![Some("project-b".to_owned())]),
        ]);
        r
    }

    fn t(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn row(id: &str, tenant: &str, name: &str, anonymous: bool) -> Tuple {
        let anonymous = if anonymous { "t" } else { "f" };
        Tuple(vec![t(id), t(tenant), t(name), t(anonymous)])
    }

    fn key(id: &str, tenant: &str) -> OldTuple {
        OldTuple::Key(Tuple(vec![t(id), t(tenant), Datum::Null, Datum::Null]))
    }

    fn change_of(table: &str, seq: u64, op: Op) -> SequencedChange {
        SequencedChange {
            seq,
            change: RowChange {
                lsn: Lsn(seq),
                xid: 1,
                commit_time: Timestamp::from_pg_epoch_micros(0),
                relation: relation(table),
                op,
            },
        }
    }

    fn run_with(
        seq: u64,
        op: Op,
        registry: &TenantRegistry,
        dests: &DestinationSet,
    ) -> Result<Vec<Routed>, RouteError> {
        let mut out = Vec::new();
        plan(
            &change_of("project_user", seq, op),
            &route(),
            registry,
            dests,
            &mut out,
        )?;
        assert!(out.iter().all(|r| r.op.seq() == seq), "{out:?}");
        Ok(out)
    }

    fn run(seq: u64, op: Op) -> Vec<Routed> {
        run_with(seq, op, &registry(), &destinations()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn upsert(d: usize, table: usize, seq: u64, cells: &[Option<&str>]) -> Routed {
        Routed {
            destination: DestinationId(d),
            table,
            op: Planned::Row(RowOp::Upsert {
                seq,
                cells: cells
                    .iter()
                    .map(|c| c.map_or(Cell::Null, |s| text(s.to_owned())))
                    .collect(),
            }),
        }
    }

    fn delete(d: usize, table: usize, seq: u64, id: &str) -> Routed {
        Routed {
            destination: DestinationId(d),
            table,
            op: Planned::Row(RowOp::Delete {
                seq,
                key: vec![text(id.to_owned())],
            }),
        }
    }

    #[test]
    fn insert_goes_to_every_destination_serving_the_tenant() {
        let out = run(
            10,
            Op::Insert {
                new: row("7", A, "Ada", false),
            },
        );
        let cells = [Some("7"), Some("project-a"), Some("Ada")];
        assert_eq!(
            out,
            vec![upsert(0, 0, 10, &cells), upsert(2, 1, 10, &cells)]
        );
    }

    #[test]
    fn unserved_tenant_and_other_tables_produce_nothing() {
        let only_own = DestinationSet::new(vec![Destination {
            name: String::new(),
            tenants: tenants(&[A]),
            mappings: vec![MAPPING],
        }]);
        let insert = |tenant| Op::Insert {
            new: row("7", tenant, "x", false),
        };
        assert!(run_with(1, insert(B), &registry(), &only_own)
            .unwrap()
            .is_empty());
        assert!(
            run_with(2, Op::Delete { old: key("7", B) }, &registry(), &only_own)
                .unwrap()
                .is_empty()
        );

        let mut out = Vec::new();
        let other = change_of("audit_log", 3, insert(A));
        plan(&other, &route(), &registry(), &destinations(), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn unknown_tenant_evaluates_with_null_attributes() {
        let out = run(
            4,
            Op::Insert {
                new: row("7", "tenant-z", "Zed", false),
            },
        );
        assert_eq!(out, vec![upsert(2, 1, 4, &[Some("7"), None, Some("Zed")])]);
    }

    #[test]
    fn tenant_move_deletes_from_old_destinations_and_writes_to_new() {
        let out = run(
            20,
            Op::Update {
                old: Some(key("7", A)),
                new: row("7", B, "Ada", false),
            },
        );
        let cells = [Some("7"), Some("project-b"), Some("Ada")];
        // The shared store serves both tenants and the key is the same: only the upsert.
        assert_eq!(
            out,
            vec![
                delete(0, 0, 20, "7"),
                upsert(1, 0, 20, &cells),
                upsert(2, 1, 20, &cells)
            ]
        );
    }

    #[test]
    fn key_change_deletes_the_old_key() {
        let out = run(
            21,
            Op::Update {
                old: Some(key("6", A)),
                new: row("7", A, "Ada", false),
            },
        );
        let cells = [Some("7"), Some("project-a"), Some("Ada")];
        assert_eq!(
            out,
            vec![
                delete(0, 0, 21, "6"),
                delete(2, 1, 21, "6"),
                upsert(0, 0, 21, &cells),
                upsert(2, 1, 21, &cells)
            ]
        );
    }

    #[test]
    fn row_that_stops_matching_the_filter_is_deleted() {
        // REPLICA IDENTITY DEFAULT, key unchanged: no old tuple, so delete unconditionally.
        let out = run(
            30,
            Op::Update {
                old: None,
                new: row("7", A, "Ada", true),
            },
        );
        assert_eq!(out, vec![delete(0, 0, 30, "7"), delete(2, 1, 30, "7")]);
    }

    #[test]
    fn full_old_row_that_matched_neither_time_produces_nothing() {
        let out = run(
            31,
            Op::Update {
                old: Some(OldTuple::Full(row("7", A, "Ada", true))),
                new: row("7", A, "Ada B", true),
            },
        );
        assert!(out.is_empty(), "{out:?}");
        let out = run(
            32,
            Op::Delete {
                old: OldTuple::Full(row("7", A, "Ada", true)),
            },
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn full_old_row_fills_unchanged_toast() {
        let mut new = row("7", B, "", false);
        new.0[2] = Datum::UnchangedToast;
        let out = run(
            33,
            Op::Update {
                old: Some(OldTuple::Full(row("7", A, "Long bio", false))),
                new,
            },
        );
        let cells = [Some("7"), Some("project-b"), Some("Long bio")];
        assert_eq!(
            out,
            vec![
                delete(0, 0, 33, "7"),
                upsert(1, 0, 33, &cells),
                upsert(2, 1, 33, &cells)
            ]
        );
    }

    #[test]
    fn an_upsert_with_unchanged_toast_carries_what_reading_it_again_takes() {
        let mut new = row("7", A, "", false);
        new.0[2] = Datum::UnchangedToast;
        // REPLICA IDENTITY DEFAULT: the change does not carry the value.
        let out = run(
            40,
            Op::Update {
                old: None,
                new: new.clone(),
            },
        );
        assert_eq!(out.len(), 2, "{out:?}");
        let sources: Vec<&Arc<SourceRow>> = out
            .iter()
            .map(|r| match &r.op {
                Planned::Partial { op, source } => {
                    let cells = vec![text("7"), text("project-a"), Cell::Unchanged];
                    assert_eq!(op, &RowOp::Upsert { seq: 40, cells });
                    source
                }
                other => panic!("not partial: {other:?}"),
            })
            .collect();
        assert_eq!(sources[0].mapping, MAPPING);
        assert_eq!(sources[0].relation.name, "project_user");
        assert_eq!(sources[0].tuple, new);
        assert_eq!(sources[0].attributes, vec![Some("project-a".to_owned())]);
        // One source row, shared by every destination's op.
        assert!(Arc::ptr_eq(sources[0], sources[1]));
        // Adding it to a batch files the source row under the op's index.
        let mut batch = Batch::new(40);
        let mut partial = PartialOps::new();
        Planned::Row(RowOp::Delete {
            seq: 39,
            key: vec![text("1")],
        })
        .add_to(0, &mut batch, &mut partial);
        out[0].op.clone().add_to(0, &mut batch, &mut partial);
        assert_eq!(partial.len(), 1);
        assert_eq!(partial[0].0, 1);
        // A whole old row that lacks the value too (pgoutput sends FULL old rows with their
        // TOASTed values inlined, but the decoder accepts the marker there): still partial.
        let out = run(
            41,
            Op::Update {
                old: Some(OldTuple::Full(new.clone())),
                new: new.clone(),
            },
        );
        assert!(
            out.iter().all(|r| matches!(r.op, Planned::Partial { .. })),
            "{out:?}"
        );
        // An insert or an update carrying every value is a plain row.
        let out = run(
            42,
            Op::Update {
                old: None,
                new: row("7", A, "x", false),
            },
        );
        assert!(
            out.iter().all(|r| matches!(r.op, Planned::Row(_))),
            "{out:?}"
        );
    }

    #[test]
    fn old_row_without_tenant_is_not_deleted_anywhere() {
        let mut old = row("6", A, "Ada", false);
        old.0[1] = Datum::Null;
        let out = run(
            34,
            Op::Update {
                old: Some(OldTuple::Full(old)),
                new: row("7", A, "Ada", false),
            },
        );
        let cells = [Some("7"), Some("project-a"), Some("Ada")];
        assert_eq!(
            out,
            vec![upsert(0, 0, 34, &cells), upsert(2, 1, 34, &cells)]
        );
    }

    #[test]
    fn delete_removes_the_key_from_the_tenants_destinations() {
        let out = run(40, Op::Delete { old: key("7", A) });
        assert_eq!(out, vec![delete(0, 0, 40, "7"), delete(2, 1, 40, "7")]);
    }

    #[test]
    fn truncate_marks_every_destination_with_the_mapping() {
        let out = run(
            50,
            Op::Truncate {
                cascade: false,
                restart_identity: false,
            },
        );
        let mark = |d, table| Routed {
            destination: DestinationId(d),
            table,
            op: Planned::Truncate { seq: 50 },
        };
        assert_eq!(out, vec![mark(0, 0), mark(1, 0), mark(2, 1)]);
    }

    #[test]
    fn null_tenant_key_is_an_error_naming_table_and_column() {
        let mut new = row("7", A, "secret-name", false);
        new.0[1] = Datum::Null;
        let err = run_with(60, Op::Insert { new }, &registry(), &destinations()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("public.project_user"), "{msg}");
        assert!(msg.contains("column tenancy_id is NULL"), "{msg}");
        assert!(!msg.contains("secret-name"), "{msg}");

        let mut new = row("7", A, "x", false);
        new.0[1] = Datum::UnchangedToast;
        let err = run_with(61, Op::Insert { new }, &registry(), &destinations()).unwrap_err();
        assert!(matches!(
            err,
            RouteError::TenantKey {
                problem: KeyProblem::UnchangedToast,
                ..
            }
        ));
    }

    #[test]
    fn destination_lookup_uses_the_index() {
        let d = destinations();
        let ids = |t| d.destinations_for(t).map(|d| d.0).collect::<Vec<_>>();
        assert_eq!(ids(A), [0, 3, 2]);
        assert_eq!(ids(B), [1, 2]);
        assert_eq!(ids("nobody"), [2]);
        let serving = d.serving(MAPPING, A).collect::<Vec<_>>();
        assert_eq!(serving, [(DestinationId(0), 0), (DestinationId(2), 1)]);
        assert_eq!(d.with_mapping(7), [(DestinationId(3), 0)]);
        assert!(d.with_mapping(99).is_empty());
    }

    /// public.tenancy (id text, project_id text, branch_id text).
    fn tenancy_change(op: Op) -> RowChange {
        let col = |name: &str, is_key| Column {
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
            is_key,
        };
        RowChange {
            lsn: Lsn(1),
            xid: 1,
            commit_time: Timestamp::from_pg_epoch_micros(0),
            relation: Arc::new(Relation {
                oid: 2,
                schema: "public".into(),
                name: "tenancy".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    col("id", true),
                    col("project_id", false),
                    col("branch_id", false),
                ],
            }),
            op,
        }
    }

    #[test]
    fn registry_follows_the_tenancy_table() {
        let mut r = TenantRegistry::new(vec!["project_id".into(), "branch_id".into()]);
        r.load([(A.to_owned(), vec![Some("p1".to_owned())])]);
        assert_eq!(r.attributes(A), Some(&[Some("p1".to_owned()), None][..]));
        assert_eq!(r.attributes(B), None);
        assert_eq!(r.attributes_or_null(B), &[None, None]);

        let apply = |r: &mut TenantRegistry, op| r.apply(&tenancy_change(op), 0, &[1, 2]);
        let s = |v: &str| Some(v.to_owned());

        apply(
            &mut r,
            Op::Insert {
                new: Tuple(vec![t(B), t("p2"), t("b2")]),
            },
        )
        .unwrap();
        assert_eq!(r.attributes(B), Some(&[s("p2"), s("b2")][..]));

        // An unchanged TOAST attribute keeps its value.
        apply(
            &mut r,
            Op::Update {
                old: None,
                new: Tuple(vec![t(B), t("p3"), Datum::UnchangedToast]),
            },
        )
        .unwrap();
        assert_eq!(r.attributes(B), Some(&[s("p3"), s("b2")][..]));

        // An id change moves the entry.
        apply(
            &mut r,
            Op::Update {
                old: Some(OldTuple::Key(Tuple(vec![t(B), Datum::Null, Datum::Null]))),
                new: Tuple(vec![t("tenant-c"), t("p3"), Datum::UnchangedToast]),
            },
        )
        .unwrap();
        assert_eq!(r.attributes(B), None);
        assert_eq!(r.attributes("tenant-c"), Some(&[s("p3"), s("b2")][..]));

        apply(
            &mut r,
            Op::Delete {
                old: OldTuple::Key(Tuple(vec![t(A), Datum::Null, Datum::Null])),
            },
        )
        .unwrap();
        assert_eq!(r.attributes(A), None);
        assert_eq!(r.len(), 1);

        apply(
            &mut r,
            Op::Truncate {
                cascade: false,
                restart_identity: false,
            },
        )
        .unwrap();
        assert!(r.is_empty());

        let err = apply(
            &mut r,
            Op::Insert {
                new: Tuple(vec![Datum::Null, t("p"), t("b")]),
            },
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("public.tenancy: column id is NULL"),
            "{err}"
        );
    }

    #[test]
    fn compile_lists_every_routing_problem() {
        let columns = vec![("name".to_owned(), parse_expr("display_name").unwrap())];
        let key = ["name".to_owned(), "missing".to_owned()];
        let spec = MappingSpec {
            name: "m",
            id: 0,
            tenant_key: "display_name",
            columns: &columns,
            filter: None,
            key: &key,
        };
        let err = MappingRoute::compile(spec, &relation("project_user"), &PgType::from_oid, &[])
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("tenant key column display_name is not part of the replica identity"),
            "{msg}"
        );
        assert!(
            msg.contains("target key column name reads display_name"),
            "{msg}"
        );
        assert!(
            msg.contains("target key column missing is not a mapped column"),
            "{msg}"
        );
    }

    #[test]
    fn snapshot_rows_reach_only_their_scope_and_the_last_mark_sweeps() {
        let scope = |destinations: &[&str], tenants: Option<&[&str]>, mappings: &[&str]| {
            Arc::new(SnapshotScope {
                snapshot: 1,
                destinations: destinations.iter().map(|d| (*d).to_owned()).collect(),
                tenants: tenants.map(|t| t.iter().map(|x| (*x).to_owned()).collect()),
                mappings: mappings.iter().map(|m| (*m).to_owned()).collect(),
            })
        };
        let snap = |scope| Op::Snapshot {
            new: row("7", A, "Ann", false),
            scope,
        };
        // A's row for destinations d0 (A) and d1 (B): only d0 serves A.
        let out = run(10, snap(scope(&["d0", "d1"], None, &["m"])));
        assert_eq!(
            out,
            vec![upsert(
                0,
                0,
                10,
                &[Some("7"), Some("project-a"), Some("Ann")]
            )]
        );
        // The shared store (d2) too when named; not the others serving A.
        let out = run(11, snap(scope(&["d2"], None, &["m"])));
        assert_eq!(
            out,
            vec![upsert(
                2,
                1,
                11,
                &[Some("7"), Some("project-a"), Some("Ann")]
            )]
        );
        // Another tenant, another mapping, a filtered row: nothing.
        assert!(run(12, snap(scope(&["d0", "d2"], Some(&[B]), &["m"]))).is_empty());
        assert!(run(13, snap(scope(&["d0", "d2"], None, &["other"]))).is_empty());
        let anonymous = Op::Snapshot {
            new: row("8", A, "Bob", true),
            scope: scope(&["d0"], None, &["m"]),
        };
        assert!(run(14, anonymous).is_empty());
        // The table's last mark sweeps each named destination with the mapping, whatever its
        // tenants; a chunk's mark and a mark without a threshold do nothing.
        let mark = |sweep_below, table_done| Op::SnapshotMark {
            scope: scope(&["d1", "d2", "d3"], None, &["m"]),
            mark: SnapshotMark {
                sweep_below,
                table_done,
                ..SnapshotMark::default()
            },
        };
        assert_eq!(
            run(20, mark(5, true)),
            vec![
                Routed {
                    destination: DestinationId(1),
                    table: 0,
                    op: Planned::Sweep { seq: 20, below: 5 },
                },
                Routed {
                    destination: DestinationId(2),
                    table: 1,
                    op: Planned::Sweep { seq: 20, below: 5 },
                },
            ]
        );
        assert!(run(21, mark(0, true)).is_empty());
        assert!(run(22, mark(0, false)).is_empty());
        let mut batch = Batch::new(30);
        Planned::Sweep { seq: 20, below: 5 }.add_to(1, &mut batch, &mut PartialOps::new());
        assert_eq!(batch.truncates, vec![(1, 5)]);
    }
}
