//! [`PostgresSink`]: validates or creates the target tables, then applies batches in one
//! transaction with the destination's watermark.

use crate::binding::{ForeignLineage, Lineage};
use std::collections::HashMap;
use std::fmt;

use tokio_postgres::Client;

use super::ddl::{check_identifier, check_spec, create_table_sql, known_type_has_name, type_sql};
use super::error::{io_error, query_error, to_i64, PostgresError};
use super::plan::{plan, write, BatchPlan, TablePlan, WriteError, WriteFailure};
use super::statements::{statements, Prepared};
use crate::failpoint;
use crate::sink::{Batch, ColumnType, SinkError, TargetTable, DELETED_COLUMN, WATERMARK_TABLE};
use crate::sql::{quote_ident, QualifiedName};
use crate::target::type_holds;
use crate::value::PgType;
use tracing::info;

/// What [`PostgresSink::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Written; the watermark is now the batch's `last_seq`.
    Applied,
    /// The watermark was already at or beyond the batch's `last_seq`; nothing was written.
    AlreadyApplied { watermark: u64 },
}

/// Writes batches into one PostgreSQL database. The watermark table lives in `schema`.
pub struct PostgresSink {
    pub(super) client: Client,
    pub(super) schema: String,
    pub(super) tables: Vec<Prepared>,
    /// Further connections a batch is written over, each its share of the keys (parallel
    /// apply, see [`apply`](Self::apply)); empty: the batch connection writes everything.
    partitions: Vec<ApplyConnection>,
    /// Whether the next batch looks for partition rows a crashed batch left ahead of the
    /// watermark (see [`apply`](Self::apply)).
    look_ahead: bool,
    /// The numbering the watermark counts: written with it, and a watermark of another is
    /// refused (see `crate::binding`). `None` writes and checks none (tests, older callers).
    lineage: Option<Lineage>,
}

impl fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSink")
            .field("schema", &self.schema)
            .field("tables", &self.tables.len())
            .finish()
    }
}

impl PostgresSink {
    /// A sink over an open connection (see [`crate::pgconn::ConnInfo::connect_sql`]).
    /// `schema` holds the watermark table.
    pub fn new(client: Client, schema: impl Into<String>) -> Self {
        PostgresSink {
            client,
            schema: schema.into(),
            tables: Vec::new(),
            partitions: Vec::new(),
            look_ahead: true,
            lineage: None,
        }
    }

    /// Adds a connection that writes a share of every batch's keys (after
    /// [`ensure_tables`](Self::ensure_tables): it prepares the same statements).
    pub async fn add_apply_connection(&mut self, client: Client) -> Result<(), PostgresError> {
        let mut tables = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            tables.push(prepare_on(&client, t.spec.clone(), t.casts.clone()).await?);
        }
        self.partitions.push(ApplyConnection { client, tables });
        Ok(())
    }

    /// How many connections write a batch.
    pub fn apply_connections(&self) -> usize {
        self.partitions.len() + 1
    }

    /// From now on, write `lineage` with the watermark and refuse a watermark of another.
    pub fn bind_lineage(&mut self, lineage: Lineage) {
        self.lineage = Some(lineage);
    }

    /// The lineage stored with `destination`'s watermark (`None`: none yet, or one written
    /// before lineages existed).
    pub async fn lineage(&self, destination: &str) -> Result<Option<String>, PostgresError> {
        let wm = self.watermark_table();
        let row = self
            .client
            .query_opt(
                &format!("SELECT lineage FROM {} WHERE destination = $1", wm.quoted()),
                &[&destination],
            )
            .await
            .map_err(|e| query_error("reading the watermark", Some(destination), Some(&wm), e))?;
        Ok(row.and_then(|r| r.get(0)))
    }

    fn watermark_table(&self) -> QualifiedName {
        QualifiedName::new(&self.schema, WATERMARK_TABLE)
    }

    /// What can be told from the configuration alone — identifiers, the table specs — for
    /// both the writer's start ([`Self::ensure_tables`]) and `check` ([`Self::check_tables`]).
    fn check_specs(&self, tables: &[TargetTable]) -> Result<(), PostgresError> {
        let mut problems = Vec::new();
        check_identifier(&mut problems, "watermark schema", &self.schema);
        for t in tables {
            check_spec(&mut problems, t);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PostgresError::Schema {
                problems: problems.into(),
            })
        }
    }

    /// Makes `tables` the tables batches refer to (by index). With `create`, creates missing
    /// schemas and tables from the specification; then checks every table against the catalog —
    /// columns present with compatible types, the version (and soft-delete) column, the key a
    /// primary key or unique index — and reports every problem at once. Also creates the
    /// watermark table.
    pub async fn ensure_tables(
        &mut self,
        tables: &[TargetTable],
        create: bool,
    ) -> Result<(), PostgresError> {
        self.check_specs(tables)?;
        let wm = self.watermark_table();
        let mut ddl = Vec::new();
        if create {
            let mut schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
            schemas.push(&self.schema);
            schemas.sort_unstable();
            schemas.dedup();
            for s in schemas {
                ddl.push(format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(s)));
            }
            for t in tables {
                ddl.push(create_table_sql(t));
            }
        } else if !self.schema_exists(&self.schema).await? {
            return Err(PostgresError::Schema {
                problems: vec![format!(
                    "schema {} does not exist (it holds the watermark table {WATERMARK_TABLE}); create it or set create_tables = true",
                    quote_ident(&self.schema)
                )]
                .into(),
            });
        }
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {} (destination text PRIMARY KEY, seq bigint NOT NULL, \
             updated_at timestamptz NOT NULL DEFAULT now(), lineage text)",
            wm.quoted()
        ));
        // Watermark tables created before lineages existed.
        ddl.push(format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS lineage text",
            wm.quoted()
        ));
        for stmt in &ddl {
            self.client
                .batch_execute(stmt)
                .await
                .map_err(|e| query_error("creating destination tables", None, None, e))?;
        }
        if create {
            // A table from before the source changed (pgfanout was not running): its new
            // columns and widened types, as a running destination would have added them. What
            // is not a widening is left to the check below to report.
            for t in tables {
                if let Ok(actions) = self.align_actions(t, t, false).await? {
                    let actions: Vec<String> = actions.into_iter().map(|(_, a)| a).collect();
                    if !actions.is_empty() {
                        let name = t.qualified_name();
                        info!(table = %name, actions = %actions.join(", "), "changing the target table to follow the source");
                        self.client
                            .batch_execute(&format!(
                                "ALTER TABLE {} {}",
                                name.quoted(),
                                actions.join(", ")
                            ))
                            .await
                            .map_err(|e| {
                                query_error("changing the target table", None, Some(&name), e)
                            })?;
                    }
                }
            }
        }

        let mut problems = Vec::new();
        let mut checked = Vec::new();
        for t in tables {
            if let Some(c) = self.check_table(&mut problems, t, &[]).await? {
                checked.push(c);
            }
        }
        if !problems.is_empty() {
            return Err(PostgresError::Schema {
                problems: problems.into(),
            });
        }
        let mut prepared = Vec::with_capacity(checked.len());
        for (spec, casts) in checked {
            prepared.push(self.prepare(spec, casts).await?);
        }
        self.tables = prepared;
        Ok(())
    }

    /// The `ALTER TABLE` actions that bring `next`'s table from what it is to `next` (see
    /// [`crate::sink::Writer::evolve`]); `Ok(Err((column, reason)))` for a change pgfanout
    /// does not make. A table that does not exist needs none (creating it is not this).
    async fn align_actions(
        &self,
        prev: &TargetTable,
        next: &TargetTable,
        drop_gone: bool,
    ) -> Result<Result<Vec<(String, String)>, (String, String)>, PostgresError> {
        let name = next.qualified_name();
        let catalog = |e| query_error("reading the catalog", None, Some(&name), e);
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), \
                 a.attnotnull FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&name.quoted()],
            )
            .await
            .map_err(catalog)?;
        if rows.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let mut actual: HashMap<String, (u32, String, bool)> = HashMap::with_capacity(rows.len());
        for r in &rows {
            actual.insert(
                r.try_get(0).map_err(catalog)?,
                (
                    r.try_get(1).map_err(catalog)?,
                    r.try_get(2).map_err(catalog)?,
                    r.try_get(3).map_err(catalog)?,
                ),
            );
        }
        let mut actions = Vec::new();
        for c in &next.columns {
            let col = quote_ident(&c.name);
            let Some((typid, typname, _)) = actual.get(&c.name) else {
                if next.key.contains(&c.name) {
                    return Ok(Err((
                        c.name.clone(),
                        format!("key column {col} does not exist in the target; pgfanout does not add key columns: add it (and the primary key) yourself, then run `pgfanout destination resume`"),
                    )));
                }
                actions.push((
                    c.name.clone(),
                    format!("ADD COLUMN {col} {}", type_sql(&c.ty)),
                ));
                continue;
            };
            // A configured type name is the user's: the table check compares it.
            let ColumnType::Known(want) = &c.ty else {
                continue;
            };
            let have = PgType::from_oid(*typid);
            if type_holds(&have, want) {
                continue;
            }
            if type_holds(want, &have) && known_type_has_name(want) {
                actions.push((
                    c.name.clone(),
                    format!("ALTER COLUMN {col} TYPE {}", want.name()),
                ));
                continue;
            }
            let was = prev.columns.iter().find(|p| p.name == c.name);
            let from = was.map_or_else(|| typname.clone(), |p| type_sql(&p.ty).to_owned());
            return Ok(Err((
                c.name.clone(),
                format!(
                    "the source column's type changed from {from} to {}, which is not a widening pgfanout applies (the target column is {typname}); change the target column yourself (ALTER TABLE {} ALTER COLUMN {col} TYPE {} USING …), then run `pgfanout destination resume`",
                    want.name(),
                    name.quoted(),
                    want.name()
                ),
            )));
        }
        for c in &prev.columns {
            if next.columns.iter().any(|n| n.name == c.name) {
                continue;
            }
            let Some((_, _, not_null)) = actual.get(&c.name) else {
                continue;
            };
            let col = quote_ident(&c.name);
            if drop_gone {
                actions.push((c.name.clone(), format!("DROP COLUMN {col}")));
            } else if *not_null {
                actions.push((c.name.clone(), format!("ALTER COLUMN {col} DROP NOT NULL")));
            }
        }
        Ok(Ok(actions))
    }

    /// See [`crate::sink::Writer::evolve`]: one `ALTER TABLE` with every action (PostgreSQL's
    /// DDL is transactional: all or nothing), then the table is checked and its statements
    /// prepared again on every connection.
    pub async fn evolve(
        &mut self,
        table: usize,
        prev: &TargetTable,
        next: &TargetTable,
        drop_gone: bool,
        alter: bool,
    ) -> Result<(), SinkError> {
        let name = next.qualified_name();
        let refuse = |column: &str, reason: String| SinkError::SchemaChange {
            table: name.to_string(),
            column: column.to_owned(),
            reason,
        };
        let actions: Vec<String> = self
            .align_actions(prev, next, drop_gone)
            .await?
            .map_err(|(column, reason)| refuse(&column, reason))?
            .into_iter()
            .map(|(_, action)| action)
            .collect();
        if !actions.is_empty() {
            let sql = format!("ALTER TABLE {} {}", name.quoted(), actions.join(", "));
            if !alter {
                return Err(refuse(
                    next.columns.first().map_or("", |c| c.name.as_str()),
                    format!(
                        "the source's schema changed and the target needs `{sql}`; create_tables = false, so pgfanout does not change tables: run it yourself (or set create_tables = true), then `pgfanout destination resume`"
                    ),
                ));
            }
            info!(table = %name, actions = %actions.join(", "), "changing the target table to follow the source");
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| query_error("changing the target table", None, Some(&name), e))?;
        }
        let mut specs: Vec<TargetTable> = self.tables.iter().map(|t| t.spec.clone()).collect();
        if let Some(t) = specs.get_mut(table) {
            *t = next.clone();
        }
        self.ensure_tables(&specs, false).await?;
        for p in &mut self.partitions {
            let mut tables = Vec::with_capacity(self.tables.len());
            for t in &self.tables {
                tables.push(prepare_on(&p.client, t.spec.clone(), t.casts.clone()).await?);
            }
            p.tables = tables;
        }
        Ok(())
    }

    /// What [`ensure_tables`](Self::ensure_tables) would report, without changing anything
    /// (`pgfanout check`): the same checks of every existing table; a missing table or schema
    /// is a problem only when it would not be created, and the watermark table, when it
    /// exists, must have what the batch transaction writes (or could be created: the role may
    /// create in its schema). Every problem at once.
    pub async fn check_tables(
        &self,
        tables: &[TargetTable],
        create: bool,
    ) -> Result<(), PostgresError> {
        self.check_specs(tables)?;
        let mut problems = Vec::new();
        // Schemas the writer would create or create in, each checked once.
        let mut may_create: Vec<&str> = Vec::new();
        if !self.schema_exists(&self.schema).await? {
            if create {
                may_create.push(&self.schema);
            } else {
                problems.push(format!(
                    "schema {} does not exist (it holds the watermark table {WATERMARK_TABLE}); create it or set create_tables = true",
                    quote_ident(&self.schema)
                ));
            }
        } else {
            self.check_watermark_table(&mut problems).await?;
        }
        for t in tables {
            if create && !self.table_exists(t).await? {
                if !may_create.contains(&t.schema.as_str()) {
                    may_create.push(&t.schema);
                }
                continue;
            }
            // What the writer's start aligns by itself (columns the source gained or widened
            // while pgfanout was stopped) is no problem.
            let aligned: Vec<String> = if create {
                match self.align_actions(t, t, false).await? {
                    Ok(actions) => actions.into_iter().map(|(c, _)| c).collect(),
                    Err(_) => Vec::new(),
                }
            } else {
                Vec::new()
            };
            self.check_table(&mut problems, t, &aligned).await?;
        }
        for schema in may_create {
            self.check_may_create_in(&mut problems, schema).await?;
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PostgresError::Schema {
                problems: problems.into(),
            })
        }
    }

    /// Whether this role may create tables in `schema`, or create `schema` when it is
    /// missing (what `create_tables` does at start).
    async fn check_may_create_in(
        &self,
        problems: &mut Vec<String>,
        schema: &str,
    ) -> Result<(), PostgresError> {
        let row = self
            .client
            .query_one(
                "SELECT n.oid IS NULL, current_database()::text, \
                        CASE WHEN n.oid IS NULL THEN has_database_privilege(current_database(), 'CREATE') \
                             ELSE has_schema_privilege(n.oid, 'CREATE') END \
                 FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = $1",
                &[&schema],
            )
            .await
            .map_err(|e| query_error("reading the catalog", None, None, e))?;
        let missing: bool = row.get(0);
        let database: String = row.get(1);
        let allowed: bool = row.get(2);
        if allowed {
            return Ok(());
        }
        let schema = quote_ident(schema);
        problems.push(if missing {
            format!(
                "schema {schema} does not exist and this role may not create it (no CREATE on database {}); GRANT CREATE ON DATABASE {} TO the destination's user, or create the schema and its tables",
                quote_ident(&database),
                quote_ident(&database)
            )
        } else {
            format!(
                "tables pgfanout would create in schema {schema} cannot be created: this role has no CREATE on it; GRANT CREATE ON SCHEMA {schema} TO the destination's user, or create the tables and set create_tables = false"
            )
        });
        Ok(())
    }

    async fn table_exists(&self, t: &TargetTable) -> Result<bool, PostgresError> {
        let name = t.qualified_name();
        let row = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(|e| query_error("reading the catalog", None, Some(&name), e))?;
        Ok(row.get(0))
    }

    /// The watermark table as the batch transaction uses it (`INSERT … ON CONFLICT
    /// (destination)`), or, when it does not exist yet, the right to create it.
    async fn check_watermark_table(&self, problems: &mut Vec<String>) -> Result<(), PostgresError> {
        let wm = self.watermark_table();
        let catalog = |e| query_error("reading the catalog", None, Some(&wm), e);
        let row = self
            .client
            .query_one(
                "SELECT c.oid, has_schema_privilege(n.oid, 'CREATE') \
                 FROM pg_namespace n LEFT JOIN pg_class c \
                   ON c.relnamespace = n.oid AND c.relname = $2 AND c.relkind IN ('r', 'p') \
                 WHERE n.nspname = $1",
                &[&self.schema, &WATERMARK_TABLE],
            )
            .await
            .map_err(catalog)?;
        let oid: Option<u32> = row.try_get(0).map_err(catalog)?;
        let can_create: bool = row.try_get(1).map_err(catalog)?;
        let Some(oid) = oid else {
            if !can_create {
                problems.push(format!(
                    "table {} does not exist and this role may not create it (no CREATE on schema {}); GRANT CREATE ON SCHEMA {} TO the destination's user, or create it: CREATE TABLE {} (destination text PRIMARY KEY, seq bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), lineage text)",
                    wm.quoted(),
                    quote_ident(&self.schema),
                    quote_ident(&self.schema),
                    wm.quoted()
                ));
            }
            return Ok(());
        };
        let rows = self
            .client
            .query(
                "SELECT attname::text, atttypid FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await
            .map_err(catalog)?;
        let mut have = HashMap::new();
        for r in &rows {
            let name: String = r.try_get(0).map_err(catalog)?;
            let typid: u32 = r.try_get(1).map_err(catalog)?;
            have.insert(name, PgType::from_oid(typid));
        }
        for (col, ty, decl) in [
            ("destination", PgType::Text, "text"),
            ("seq", PgType::Int8, "bigint"),
        ] {
            match have.get(col) {
                Some(t) if *t == ty => {}
                Some(_) => problems.push(format!(
                    "column {}.{} must be {decl}; drop the table {} and let pgfanout create it (it restarts each destination from seq 0, replaying the log)",
                    wm.quoted(),
                    quote_ident(col),
                    wm.quoted()
                )),
                None => problems.push(format!(
                    "column {}.{} does not exist; drop the table {} and let pgfanout create it",
                    wm.quoted(),
                    quote_ident(col),
                    wm.quoted()
                )),
            }
        }
        let unique: bool = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
                   ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                 WHERE i.indrelid = $1 AND i.indisunique AND i.indnkeyatts = 1 \
                   AND i.indpred IS NULL AND a.attname = 'destination')",
                &[&oid],
            )
            .await
            .map_err(catalog)?
            .get(0);
        if !unique && have.contains_key("destination") {
            problems.push(format!(
                "table {} has no primary key or unique index on (destination); add one (ALTER TABLE {} ADD PRIMARY KEY (destination))",
                wm.quoted(),
                wm.quoted()
            ));
        }
        Ok(())
    }

    async fn schema_exists(&self, schema: &str) -> Result<bool, PostgresError> {
        let row = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&schema],
            )
            .await
            .map_err(|e| query_error("reading the catalog", None, None, e))?;
        Ok(row.get(0))
    }

    /// Compares one table with the catalog; returns the spec and the cast types when it fits.
    /// Columns in `aligned` are not checked (the writer's start adds or widens them).
    async fn check_table(
        &self,
        problems: &mut Vec<String>,
        t: &TargetTable,
        aligned: &[String],
    ) -> Result<Option<(TargetTable, Vec<String>)>, PostgresError> {
        let name = t.qualified_name();
        let catalog = |e| query_error("reading the catalog", None, Some(&name), e);
        let rel = self
            .client
            .query_opt(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(catalog)?;
        let Some(rel) = rel else {
            problems.push(format!(
                "table {} does not exist; create it or set create_tables = true",
                name.quoted()
            ));
            return Ok(None);
        };
        let oid: u32 = rel.get(0);
        let rows = self
            .client
            .query(
                "SELECT attname::text, atttypid, format_type(atttypid, NULL) FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await
            .map_err(catalog)?;
        let mut actual: HashMap<String, (u32, String)> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let name: String = r.try_get(0).map_err(catalog)?;
            actual.insert(
                name,
                (
                    r.try_get(1).map_err(catalog)?,
                    r.try_get(2).map_err(catalog)?,
                ),
            );
        }
        let before = problems.len();
        let col_ref = |c: &str| format!("{}.{}", name.quoted(), quote_ident(c));
        let mut casts = Vec::with_capacity(t.columns.len());
        for c in t.columns.iter().filter(|c| !aligned.contains(&c.name)) {
            let Some((typid, typname)) = actual.get(&c.name) else {
                problems.push(format!(
                    "column {} does not exist; add it (ALTER TABLE {} ADD COLUMN {} {}) or remove it from the mapping",
                    col_ref(&c.name),
                    name.quoted(),
                    quote_ident(&c.name),
                    type_sql(&c.ty)
                ));
                continue;
            };
            let fits = match &c.ty {
                // A widened column holds the narrower values of older changes.
                ColumnType::Known(ty) => type_holds(&PgType::from_oid(*typid), ty),
                ColumnType::Named(sql) => self.resolve_type(sql, &name).await? == Some(*typid),
            };
            if !fits {
                problems.push(format!(
                    "column {} has type {typname} but the mapping writes {}; change the column's type or the mapping's type for it",
                    col_ref(&c.name),
                    type_sql(&c.ty)
                ));
            }
            casts.push(typname.clone());
        }
        let mut special = vec![(t.version_column.as_str(), PgType::Int8, "bigint NOT NULL")];
        if t.soft_delete {
            special.push((
                DELETED_COLUMN,
                PgType::Bool,
                "boolean NOT NULL DEFAULT false",
            ));
        }
        for (col, ty, decl) in special {
            match actual.get(col) {
                None => problems.push(format!(
                    "column {} does not exist; add it (ALTER TABLE {} ADD COLUMN {} {decl}) or set create_tables = true on a new table",
                    col_ref(col),
                    name.quoted(),
                    quote_ident(col)
                )),
                Some((typid, typname)) if PgType::from_oid(*typid) != ty => problems.push(format!(
                    "column {} has type {typname} but must be {decl}",
                    col_ref(col)
                )),
                Some(_) => {}
            }
        }
        if problems.len() == before {
            let unique: bool = self
                .client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_index i \
                       WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate \
                         AND i.indpred IS NULL AND i.indexprs IS NULL \
                         AND i.indnkeyatts = cardinality($2::text[]) \
                         AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) \
                                FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
                                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                               WHERE k.n <= i.indnkeyatts) \
                           = (SELECT array_agg(x ORDER BY x) FROM unnest($2::text[]) AS x))",
                    &[&oid, &t.key],
                )
                .await
                .map_err(catalog)?
                .get(0);
            if !unique {
                let key: Vec<String> = t.key.iter().map(|k| quote_ident(k)).collect();
                problems.push(format!(
                    "table {} has no primary key or unique index on exactly ({}); add one (ALTER TABLE {} ADD PRIMARY KEY ({})) or change the mapping's key",
                    name.quoted(),
                    key.join(", "),
                    name.quoted(),
                    key.join(", ")
                ));
            }
        }
        if problems.len() == before {
            // Writes would fail at the first batch (42501) and stop the destination: say so
            // before any change is taken.
            let missing: Vec<String> = self
                .client
                .query_one(
                    "SELECT array_remove(ARRAY[ \
                       CASE WHEN has_table_privilege($1::oid, 'SELECT') THEN NULL ELSE 'SELECT' END, \
                       CASE WHEN has_table_privilege($1::oid, 'INSERT') THEN NULL ELSE 'INSERT' END, \
                       CASE WHEN has_table_privilege($1::oid, 'UPDATE') THEN NULL ELSE 'UPDATE' END, \
                       CASE WHEN has_table_privilege($1::oid, 'DELETE') THEN NULL ELSE 'DELETE' END], NULL)",
                    &[&oid],
                )
                .await
                .map_err(catalog)?
                .try_get(0)
                .map_err(catalog)?;
            if !missing.is_empty() {
                problems.push(format!(
                    "this role lacks {} on table {}; GRANT {} ON {} TO the destination's user",
                    missing.join(", "),
                    name.quoted(),
                    missing.join(", "),
                    name.quoted()
                ));
            }
        }
        Ok((problems.len() == before).then(|| (t.clone(), casts)))
    }

    /// The oid of a configured type name, None when the server knows no such type.
    async fn resolve_type(
        &self,
        sql: &str,
        table: &QualifiedName,
    ) -> Result<Option<u32>, PostgresError> {
        match self
            .client
            .query_one("SELECT to_regtype($1)::oid", &[&sql])
            .await
        {
            Ok(row) => Ok(row.get(0)),
            // Before PostgreSQL 16, to_regtype raises on a syntax error instead of NULL.
            Err(e) if e.code().is_some_and(|c| c.code().starts_with("42")) => Ok(None),
            Err(e) => Err(query_error("resolving a type name", None, Some(table), e)),
        }
    }

    async fn prepare(
        &self,
        spec: TargetTable,
        casts: Vec<String>,
    ) -> Result<Prepared, PostgresError> {
        prepare_on(&self.client, spec, casts).await
    }

    /// The last seq applied to `destination`; 0 when it has applied nothing yet.
    pub async fn watermark(&self, destination: &str) -> Result<u64, PostgresError> {
        self.read_watermark(destination, "").await
    }

    /// [`watermark`](Self::watermark) once the batch transaction in flight for `destination`,
    /// if any, has ended: it holds the watermark row locked from its first statement (see
    /// [`apply`](Self::apply)), and `FOR SHARE` waits for that lock. So every batch whose
    /// statements ran before this call is counted, committed or not when the call began.
    pub async fn settled_watermark(&self, destination: &str) -> Result<u64, PostgresError> {
        self.read_watermark(destination, " FOR SHARE").await
    }

    async fn read_watermark(&self, destination: &str, lock: &str) -> Result<u64, PostgresError> {
        let wm = self.watermark_table();
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT seq FROM {} WHERE destination = $1{lock}",
                    wm.quoted()
                ),
                &[&destination],
            )
            .await
            .map_err(|e| query_error("reading the watermark", Some(destination), Some(&wm), e))?;
        match row {
            None => Ok(0),
            Some(r) => watermark_value(destination, &wm, r.get(0)),
        }
    }

    /// Applies `batch` for `destination` together with its watermark. A batch whose
    /// `last_seq` is not beyond the watermark is skipped.
    ///
    /// **Parallel apply.** With further apply connections, a batch of at least
    /// [`PARALLEL_MIN_ROWS`] rows without truncates or key changes is split by [`partition_of`](super::plan::partition_of) its rows' keys: only the
    /// order of one key's changes matters under the version guard. Connection 0 runs the batch
    /// transaction: it locks the destination's watermark row first (so `settled_watermark`, and
    /// with it `replay`, waits for the whole batch), writes its share, waits until every other
    /// connection has written its share and committed it together with that connection's own
    /// row (`<destination> #partition p/n`), and then moves the watermark and commits. So the
    /// watermark never passes a row that is not committed, and a crash between the commits
    /// leaves partition rows ahead of the watermark: the next batch over those seqs first drops
    /// the rows a partition already committed (by the layout `n` those rows were written
    /// with, whatever the connections are now), so no change is written twice — re-writing an
    /// older upsert after a newer delete that left no row would bring the row back.
    pub async fn apply(
        &mut self,
        destination: &str,
        batch: &Batch<'_>,
    ) -> Result<ApplyOutcome, PostgresError> {
        let mut plan = plan(destination, &self.tables, batch)?;
        let last_seq = to_i64(destination, "(batch)", batch.last_seq)?;
        let wm = self.watermark_table();
        let wm_ref = &wm;
        let wm_err = |what| move |e| query_error(what, Some(destination), Some(wm_ref), e);
        let lineage = self.lineage.map(|l| l.to_string());
        let n = self.partitions.len() + 1;
        let failed: Result<(), Failed>;
        let parts: Vec<BatchPlan<'_, '_>>;
        {
            let tx = self
                .client
                .transaction()
                .await
                .map_err(wm_err("starting the batch transaction"))?;
            let locked = tx
                .query_one(
                    &format!(
                        "INSERT INTO {} AS w (destination, seq) VALUES ($1, 0) \
                         ON CONFLICT (destination) DO UPDATE SET seq = w.seq RETURNING seq, lineage",
                        wm.quoted()
                    ),
                    &[&destination],
                )
                .await
                .map_err(wm_err("locking the watermark"))?;
            let current = watermark_value(destination, &wm, locked.get(0))?;
            let stored: Option<String> = locked.get(1);
            if let (Some(ours), Some(stored)) = (self.lineage, stored) {
                if stored != ours.to_string() {
                    return Err(PostgresError::ForeignLineage(Box::new(ForeignLineage {
                        destination: destination.to_owned(),
                        stored,
                        ours,
                    })));
                }
            }
            if batch.last_seq <= current {
                tx.rollback()
                    .await
                    .map_err(wm_err("ending the batch transaction"))?;
                return Ok(ApplyOutcome::AlreadyApplied { watermark: current });
            }
            // Partitions a crashed batch committed beyond the watermark: their rows are written.
            // Looked for at a session's first batch, after a failed one and while some were
            // found; a batch that commits leaves none of its own behind.
            let look = std::mem::replace(&mut self.look_ahead, true);
            let ahead: Vec<(usize, usize, i64)> = if !look {
                Vec::new()
            } else {
                tx.query(
                    &format!(
                        "SELECT destination, seq FROM {} \
                         WHERE left(destination, length($1)) = $1 AND seq > $2",
                        wm.quoted()
                    ),
                    &[&format!("{destination}{PARTITION_ROW}"), &(current as i64)],
                )
                .await
                .map_err(wm_err("reading the partition watermarks"))?
                .iter()
                .filter_map(|r| parse_partition_row(destination, r.get(0), r.get(1)))
                .collect()
            };
            if !ahead.is_empty() {
                let mut layouts: Vec<usize> = ahead.iter().map(|a| a.0).collect();
                layouts.sort_unstable();
                layouts.dedup();
                plan.retain(&self.tables, &layouts, |n, p, seq| {
                    !ahead
                        .iter()
                        .any(|&(an, ap, at)| an == n && ap == p && seq <= at)
                });
            }
            let rows: usize = plan
                .tables
                .iter()
                .map(|t| t.upserts.len() + t.deletes.len())
                .sum();
            if n == 1 || rows < PARALLEL_MIN_ROWS || !plan.splittable() {
                failed = write(&tx, &self.tables, &plan)
                    .await
                    .map_err(|f| Failed::Write(0, f));
                parts = vec![plan];
            } else {
                parts = plan.split(&self.tables, n);
                let (own, others) = (&parts[0], &parts[1..]);
                let lineage = &lineage;
                let shares = self.partitions.iter_mut().zip(others).enumerate().map(
                    |(i, (conn, part))| async move {
                        let p = i + 1;
                        let row = partition_row(destination, p, n);
                        let other = |what| {
                            move |e| Failed::Other(query_error(what, Some(destination), Some(wm_ref), e))
                        };
                        let tx = conn
                            .client
                            .transaction()
                            .await
                            .map_err(other("starting a partition transaction"))?;
                        write(&tx, &conn.tables, part)
                            .await
                            .map_err(|f| Failed::Write(p, f))?;
                        tx.execute(
                            &format!(
                                "INSERT INTO {} AS w (destination, seq, lineage) VALUES ($1, $2, $3) \
                                 ON CONFLICT (destination) DO UPDATE \
                                 SET seq = excluded.seq, updated_at = now(), lineage = excluded.lineage",
                                wm_ref.quoted()
                            ),
                            &[&row, &last_seq, lineage],
                        )
                        .await
                        .map_err(other("advancing a partition watermark"))?;
                        tx.commit().await.map_err(other("committing a partition"))
                    },
                );
                let (own, others) = tokio::join!(
                    write(&tx, &self.tables, own),
                    futures_util::future::join_all(shares)
                );
                failed = own
                    .map_err(|f| Failed::Write(0, f))
                    .and_then(|()| others.into_iter().collect::<Result<Vec<()>, _>>().map(drop))
                    .and_then(|()| {
                        // Every other share committed; the watermark not moved yet.
                        failpoint::hit(failpoint::PG_BETWEEN_PARTITIONS).map_err(|e| {
                            Failed::Other(io_error(
                                "committing the batch",
                                Some(destination),
                                Some(wm_ref),
                                e,
                            ))
                        })
                    });
            }
            if failed.is_ok() {
                // Rows written, watermark not moved: an error here rolls the batch back
                // (dropping `tx`), a crash leaves nothing committed.
                failpoint::hit(failpoint::PG_AFTER_DATA_BEFORE_WATERMARK).map_err(|e| {
                    io_error(
                        "advancing the watermark",
                        Some(destination),
                        Some(wm_ref),
                        e,
                    )
                })?;
                tx.execute(
                    &format!(
                        "UPDATE {} SET seq = $2, updated_at = now(), lineage = coalesce($3, lineage) \
                         WHERE destination = $1 AND seq < $2",
                        wm.quoted()
                    ),
                    &[&destination, &last_seq, &lineage],
                )
                .await
                .map_err(wm_err("advancing the watermark"))?;
                tx.commit().await.map_err(wm_err("committing the batch"))?;
                self.look_ahead = !ahead.is_empty();
                return Ok(ApplyOutcome::Applied);
            }
            let _ = tx.rollback().await;
        }
        match failed {
            Err(Failed::Write(part, failure)) => {
                Err(self.write_error(destination, &parts[part], failure).await)
            }
            Err(Failed::Other(e)) => Err(e),
            Ok(()) => unreachable!("an applied batch returned above"),
        }
    }

    /// The ops of `batch` (indexes into its ops) whose unchanged cells this destination knows
    /// no copy of, so that writing them would leave those columns NULL: upserts that still
    /// carry [`crate::sink::Cell::Unchanged`] once collapsed with the batch's earlier ops of
    /// their key, and whose key (the old key, for a row whose key changed) has no live row in
    /// the target, or whose key the batch deleted before. One statement per table with such
    /// upserts; none for a batch without them.
    pub async fn unknown_unchanged(
        &self,
        destination: &str,
        batch: &Batch<'_>,
    ) -> Result<Vec<usize>, PostgresError> {
        let plan = plan(destination, &self.tables, batch)?;
        let mut unknown = Vec::new();
        for p in &plan.tables {
            let t = &self.tables[p.table];
            let mut probe = Vec::new();
            for u in &p.upserts {
                if !u
                    .cells
                    .iter()
                    .any(|c| matches!(c, crate::sink::Cell::Unchanged))
                {
                    continue;
                }
                if u.after_delete && u.moved_from.is_none() {
                    unknown.push(u.op);
                } else {
                    probe.push(u);
                }
            }
            if probe.is_empty() {
                continue;
            }
            let keys: Vec<Vec<Option<&str>>> = (0..t.key_idx.len())
                .map(|j| {
                    probe
                        .iter()
                        .map(|u| match &u.moved_from {
                            Some(old) => old[j].as_str(),
                            None => u.cells[t.key_idx[j]].as_str(),
                        })
                        .collect()
                })
                .collect();
            let index: Vec<i32> = (0..probe.len())
                .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
                .collect();
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                Vec::with_capacity(keys.len() + 1);
            params.extend(
                keys.iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)),
            );
            params.push(&index);
            let rows = self.client.query(&t.missing, &params).await.map_err(|e| {
                query_error(
                    "finding rows without a copy of their unchanged values",
                    Some(destination),
                    Some(&t.name),
                    e,
                )
            })?;
            for row in rows {
                let i: i32 = row.try_get(0).map_err(|e| {
                    query_error(
                        "finding rows without a copy of their unchanged values",
                        Some(destination),
                        Some(&t.name),
                        e,
                    )
                })?;
                if let Some(u) = usize::try_from(i).ok().and_then(|i| probe.get(i)) {
                    unknown.push(u.op);
                }
            }
        }
        unknown.sort_unstable();
        Ok(unknown)
    }

    /// Writes `batch` for `destination` in one transaction without reading, locking or moving
    /// its watermark: for re-applying history at or below the watermark, which
    /// [`apply`](Self::apply) would skip. The batch's changes and truncates are written exactly
    /// as `apply` writes them, so the `_seq` guard still keeps every newer row as it is.
    pub async fn replay(
        &mut self,
        destination: &str,
        batch: &Batch<'_>,
    ) -> Result<(), PostgresError> {
        let plan = plan(destination, &self.tables, batch)?;
        let tx_err = |what| move |e| query_error(what, Some(destination), None, e);
        let tx = self
            .client
            .transaction()
            .await
            .map_err(tx_err("starting the replay transaction"))?;
        if let Err(failure) = write(&tx, &self.tables, &plan).await {
            let _ = tx.rollback().await;
            return Err(self.write_error(destination, &plan, failure).await);
        }
        tx.commit()
            .await
            .map_err(tx_err("committing the replayed batch"))?;
        Ok(())
    }

    /// The error for a failed [`write`], once its transaction is gone: after a data exception
    /// in a table's row changes, with the column whose values do not fit and the seq of the
    /// first change that carries such a value (PostgreSQL names neither for 22001, 22003,
    /// 22P02 …).
    async fn write_error(
        &mut self,
        destination: &str,
        plan: &BatchPlan<'_, '_>,
        failure: WriteFailure,
    ) -> PostgresError {
        let table = &self.tables[failure.table].name;
        let error = match failure.error {
            WriteError::Server(e) => e,
            WriteError::Io(e) => return io_error(failure.what, Some(destination), Some(table), e),
        };
        let data_error = error.code().is_some_and(|c| c.code().starts_with("22"));
        let mut err = query_error(failure.what, Some(destination), Some(table), error);
        if let (true, Some(rows)) = (data_error, failure.rows) {
            if let PostgresError::Query { at, .. } = &mut err {
                if let Some((column, seq)) =
                    self.find_bad_value(failure.table, &plan.tables[rows]).await
                {
                    at.column = Some(column);
                    at.seq = u64::try_from(seq).ok();
                }
            }
        }
        err
    }

    /// After a data exception: the first column (in table order) with a value its column
    /// refuses, and the lowest seq of a change carrying one. Runs on the failure path only,
    /// outside the failed transaction, in a transaction of its own that it rolls back: a
    /// temporary table with the target's column types (typmods included: `varchar(5)`,
    /// `numeric(4,1)`) takes each column's values exactly as the write statements cast and
    /// assign them; the failing column's changes are then bisected by seq under savepoints.
    /// The values travel as parameters and never appear in a message. None when no single
    /// column explains it or the probe itself fails.
    async fn find_bad_value(
        &mut self,
        table: usize,
        plan: &TablePlan<'_, '_>,
    ) -> Option<(String, i64)> {
        let t = &self.tables[table];
        // Every value the statements cast, by change: upserts' cells and deletes' key cells.
        let mut changes: Vec<(i64, Vec<Option<&str>>)> = plan
            .upserts
            .iter()
            .map(|u| (u.seq, u.cells.iter().map(|c| c.as_str()).collect()))
            .chain(plan.deletes.iter().map(|d| {
                let mut cells = vec![None; t.spec.columns.len()];
                for (j, &i) in t.key_idx.iter().enumerate() {
                    cells[i] = d.key[j].as_str();
                }
                (d.seq, cells)
            }))
            .collect();
        changes.sort_by_key(|(seq, _)| *seq);
        let columns: Vec<String> = t
            .spec
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let probe = "pg_temp.pgfanout_probe";
        let tx = self.client.transaction().await.ok()?;
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE pgfanout_probe ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA",
            columns.join(", "),
            t.name.quoted()
        ))
        .await
        .ok()?;
        let inserts: Vec<String> = (0..columns.len())
            .map(|i| {
                format!(
                    "INSERT INTO {probe} ({}) SELECT CAST(v AS {}) FROM unnest($1::text[]) AS u(v)",
                    columns[i], t.casts[i]
                )
            })
            .collect();
        let column_values = |i: usize, n: usize| -> Vec<Option<&str>> {
            changes[..n].iter().map(|(_, cells)| cells[i]).collect()
        };
        let mut found = None;
        // (A failed probe returns early; dropping the transaction rolls it back.)
        for (i, insert) in inserts.iter().enumerate() {
            if !probe_fails(&tx, insert, &column_values(i, changes.len())).await? {
                continue;
            }
            // The shortest prefix (by seq) that fails ends with the first offending change.
            let (mut ok, mut bad) = (0, changes.len());
            while bad - ok > 1 {
                let mid = ok + (bad - ok) / 2;
                if probe_fails(&tx, insert, &column_values(i, mid)).await? {
                    bad = mid;
                } else {
                    ok = mid;
                }
            }
            found = Some((t.spec.columns[i].name.clone(), changes[bad - 1].0));
            break;
        }
        let _ = tx.rollback().await;
        found
    }
}

/// Whether `insert` of `values` fails with a data exception; rolled back either way. None
/// when the probe fails otherwise.
async fn probe_fails(
    tx: &tokio_postgres::Transaction<'_>,
    insert: &str,
    values: &[Option<&str>],
) -> Option<bool> {
    tx.batch_execute("SAVEPOINT probe").await.ok()?;
    let result = tx.execute(insert, &[&values]).await;
    tx.batch_execute("ROLLBACK TO SAVEPOINT probe").await.ok()?;
    match result {
        Ok(_) => Some(false),
        Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => Some(true),
        Err(_) => None,
    }
}

pub(super) fn watermark_value(
    destination: &str,
    table: &QualifiedName,
    value: i64,
) -> Result<u64, PostgresError> {
    u64::try_from(value).map_err(|_| PostgresError::BadWatermark {
        destination: destination.to_owned(),
        table: table.clone(),
        value,
    })
}

/// A connection of parallel apply with its own prepared statements.
struct ApplyConnection {
    client: Client,
    tables: Vec<Prepared>,
}

/// The statements of `spec` prepared on `client`.
async fn prepare_on(
    client: &Client,
    spec: TargetTable,
    casts: Vec<String>,
) -> Result<Prepared, PostgresError> {
    let name = spec.qualified_name();
    let key_idx: Vec<usize> = spec
        .key
        .iter()
        .map(|k| {
            spec.columns
                .iter()
                .position(|c| &c.name == k)
                .expect("key columns were checked against the columns")
        })
        .collect();
    let sql = statements(&spec, &key_idx, &casts);
    let prep = |e| query_error("preparing statements", None, Some(&name), e);
    let upsert = client.prepare(&sql.upsert).await.map_err(prep)?;
    let missing = client.prepare(&sql.missing).await.map_err(prep)?;
    let keep = match &sql.keep {
        Some(s) => Some(client.prepare(s).await.map_err(prep)?),
        None => None,
    };
    let carry = match &sql.carry {
        Some(s) => Some(client.prepare(s).await.map_err(prep)?),
        None => None,
    };
    let delete = client.prepare(&sql.delete).await.map_err(prep)?;
    let truncate = client.prepare(&sql.truncate).await.map_err(prep)?;
    Ok(Prepared {
        spec,
        name,
        key_idx,
        casts,
        upsert,
        missing,
        keep,
        carry,
        delete,
        truncate,
    })
}

/// The watermark row of apply connection `p` of `n` (p ≥ 1; connection 0's is the
/// destination's own row).
fn partition_row(destination: &str, p: usize, n: usize) -> String {
    format!("{destination}{PARTITION_ROW}{p}/{n}")
}

/// A batch of fewer rows is written by connection 0 alone: splitting it would cost more
/// round trips and commits than its rows take to write.
const PARALLEL_MIN_ROWS: usize = 128;

/// What follows the destination's name in its partition rows' names.
const PARTITION_ROW: &str = " #partition ";

/// `(n, p, seq)` of a partition row's name and seq, None for another row.
fn parse_partition_row(destination: &str, name: &str, seq: i64) -> Option<(usize, usize, i64)> {
    let rest = name
        .strip_prefix(destination)?
        .strip_prefix(PARTITION_ROW)?;
    let (p, n) = rest.split_once('/')?;
    Some((n.parse().ok()?, p.parse().ok()?, seq))
}

/// How a batch's write failed: a statement of share `.0` of the batch (its column is worth
/// finding), or anything else.
enum Failed {
    Write(usize, WriteFailure),
    Other(PostgresError),
}
