//! The PostgreSQL destination writer: target tables created or validated from their
//! specification, batches applied in one transaction with set-based, seq-guarded statements.
//!
//! Per table, four statements are prepared once by [`PostgresSink::ensure_tables`]; the row
//! statements bind one `text[]` per column and one `int8[]` of seqs, so a batch costs a few
//! statements whatever its size, and values travel as text and are cast on the server to the
//! column's type as the catalog reports it:
//!
//! ```text
//! upsert:  INSERT INTO t (cols…, _seq) SELECT CAST(u.v0 AS type0), …, u.s
//!            FROM unnest($1::text[], …, $n::int8[]) AS u(v0, …, s)
//!          ON CONFLICT (key) DO UPDATE SET col = excluded.col, …, _seq = excluded._seq
//!            WHERE t._seq < excluded._seq
//! keep:    UPDATE t SET col = CASE WHEN u.k0 THEN t.col ELSE CAST(u.v0 AS type0) END, …
//!            FROM unnest(… text[] …, … bool[] "unchanged" …, int8[]) AS u(…)
//!            WHERE t.key = u.key AND t._seq < u.s           (rows with Cell::Unchanged only,
//!                                                            run before upsert)
//! delete:  DELETE FROM t USING unnest(key text[]…, int8[]) AS u(…)
//!            WHERE t.key = u.key AND t._seq < u.s       (soft: UPDATE SET _deleted = true)
//! truncate: DELETE FROM t WHERE t._seq < $1             (soft: UPDATE SET _deleted = true,
//!                                                        _seq = $1 … AND NOT _deleted;
//!                                                        run after the row statements)
//! ```
//!
//! A row whose key changed (deleted at its old key under the same seq just before) and that
//! carries [`Cell::Unchanged`] first goes through `carry`: `INSERT … SELECT` joining the old
//! key's row, taking the unchanged columns from it (the old row is deleted after).
//!
//! Rows carrying [`Cell::Unchanged`] first go through `keep`, which updates an existing row and
//! keeps those columns; the `upsert` that follows then finds the row at the same `_seq` and
//! leaves it alone, or inserts it when it did not exist — with NULL in the unchanged columns,
//! since their value is unknown to the change.
//!
//! The watermark row is locked first (`INSERT … ON CONFLICT DO UPDATE … RETURNING seq`, which
//! creates it when absent and row-locks it like `SELECT … FOR UPDATE`), so two writers for one
//! destination never interleave: the second waits, then sees the first one's watermark and
//! skips what it already applied.
//!
//! Keys collapse by their text: the change stream sends each type's canonical output, so equal
//! values have equal text. Target tables must not reference each other with immediate foreign
//! keys: a batch writes table by table.

use std::collections::HashMap;
use std::fmt;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::{Batch, Cell, ColumnType, RowOp, TargetTable, DELETED_COLUMN, WATERMARK_TABLE};
use crate::retry::pg_error_is_transient;
use crate::sql::{quote_ident, QualifiedName};
use crate::value::PgType;

/// PostgreSQL truncates longer identifiers, which would silently address another object.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// What went wrong writing to a destination. Messages name the destination, the table and
/// column where known, and what was being done; they never contain row values (server errors
/// that may quote a value are reduced to their SQLSTATE and the identifiers they name).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the destination tables do not match their specification:\n{}", bullet_list(.problems))]
    Schema { problems: Vec<String> },

    #[error("{what}{at}: {message}")]
    Query {
        what: &'static str,
        at: Box<Location>,
        /// Safe to log: no row values.
        message: String,
        code: Option<SqlState>,
        transient: bool,
        /// The driver error, kept only when its text cannot hold row values.
        #[source]
        source: Option<tokio_postgres::Error>,
    },

    #[error("invalid batch for destination {destination:?}, table {table}: {reason}")]
    InvalidBatch {
        destination: String,
        table: String,
        reason: String,
    },

    #[error("the watermark of destination {destination:?} in {table} is {value}, not a seq\nHINT: the watermark table was changed by hand; restore it or resync the destination")]
    BadWatermark {
        destination: String,
        table: QualifiedName,
        value: i64,
    },
}

impl SinkError {
    /// Whether retrying the same batch later can succeed: a lost or refused connection, a server
    /// shutting down or starting, a serialization failure or deadlock, exhausted resources.
    /// Everything else (a missing column, a value that does not fit its column, a bad batch)
    /// is definite.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Query { transient, .. } => *transient,
            SinkError::Schema { .. }
            | SinkError::InvalidBatch { .. }
            | SinkError::BadWatermark { .. } => false,
        }
    }

    /// The SQLSTATE of the server error behind this one, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SinkError::Query { code, .. } => code.as_ref().map(SqlState::code),
            _ => None,
        }
    }

    /// The column a value error was traced to, if any.
    pub fn column(&self) -> Option<&str> {
        match self {
            SinkError::Query { at, .. } => at.column.as_deref(),
            _ => None,
        }
    }
}

fn bullet_list(problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a query failed: the destination, table and column, as far as known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub destination: Option<String>,
    pub table: Option<QualifiedName>,
    pub column: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.destination {
            write!(f, " for destination {d:?}")?;
        }
        if let Some(t) = &self.table {
            write!(f, ", table {t}")?;
        }
        if let Some(c) = &self.column {
            write!(f, ", column {c}")?;
        }
        Ok(())
    }
}

/// Classes whose server messages never quote row values: connection, feature not supported,
/// transaction state, authorization, catalog/database, rollback (serialization, deadlock),
/// syntax or access rule, resources, limits, object state, operator intervention, system.
const SAFE_CLASSES: &[&str] = &[
    "08", "0A", "21", "25", "28", "3D", "3F", "40", "42", "53", "54", "55", "57", "58",
];

fn query_error(
    what: &'static str,
    destination: Option<&str>,
    table: Option<&QualifiedName>,
    e: tokio_postgres::Error,
) -> SinkError {
    let code = e.code().cloned();
    let transient = pg_error_is_transient(&e);
    let (message, source) = match e.as_db_error() {
        Some(db) if SAFE_CLASSES.contains(&&db.code().code()[..2]) => {
            (format!("{db} (SQLSTATE {})", db.code().code()), Some(e))
        }
        Some(db) => {
            // Data exceptions, constraint violations, raised exceptions: their text and detail
            // may quote the offending value. Keep the SQLSTATE and the identifiers.
            let mut m = format!(
                "{} (SQLSTATE {})",
                sqlstate_description(db.code().code()),
                db.code().code()
            );
            if let Some(c) = db.column() {
                m.push_str(&format!(", column {}", quote_ident(c)));
            }
            if let Some(c) = db.constraint() {
                m.push_str(&format!(", constraint {}", quote_ident(c)));
            }
            if db.code().code().starts_with("22") {
                m.push_str("\nHINT: a value does not fit its target column's type; check the mapping's type for this column");
            }
            (m, None)
        }
        None => match std::error::Error::source(&e) {
            Some(cause) => (format!("{e}: {cause}"), Some(e)),
            None => (e.to_string(), Some(e)),
        },
    };
    SinkError::Query {
        what,
        at: Box::new(Location {
            destination: destination.map(str::to_owned),
            table: table.cloned(),
            column: None,
        }),
        message,
        code,
        transient,
        source,
    }
}

fn sqlstate_description(code: &str) -> &'static str {
    match code {
        "22P02" => "invalid input syntax for the column's type",
        "22003" => "numeric value out of range",
        "22001" => "value too long for the column's type",
        "22007" => "invalid datetime format",
        "22008" => "datetime field out of range",
        "22021" => "invalid byte sequence for the encoding",
        "22P05" => "untranslatable character",
        "23502" => "NULL in a NOT NULL column",
        "23505" => "unique constraint violated",
        "23503" => "foreign key constraint violated",
        "23514" => "check constraint violated",
        c if c.starts_with("22") => "data exception",
        c if c.starts_with("23") => "integrity constraint violated",
        _ => "server error",
    }
}

/// What [`PostgresSink::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Written; the watermark is now the batch's `last_seq`.
    Applied,
    /// The watermark was already at or beyond the batch's `last_seq`; nothing was written.
    AlreadyApplied { watermark: u64 },
}

/// A validated table with its prepared statements.
struct Prepared {
    spec: TargetTable,
    name: QualifiedName,
    /// Column indexes of the key columns, in key order.
    key_idx: Vec<usize>,
    /// Per column, the type to cast text to, as `format_type` spells the catalog's type.
    casts: Vec<String>,
    upsert: Statement,
    /// None when every column is a key column (nothing can be unchanged).
    keep: Option<Statement>,
    /// Like `keep`, for rows whose key changed; None alike.
    carry: Option<Statement>,
    delete: Statement,
    truncate: Statement,
}

/// Writes batches into one PostgreSQL database. The watermark table lives in `schema`.
pub struct PostgresSink {
    client: Client,
    schema: String,
    tables: Vec<Prepared>,
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
    /// A sink over an open connection (see [`crate::source::conninfo::ConnInfo::connect_sql`]).
    /// `schema` holds the watermark table.
    pub fn new(client: Client, schema: impl Into<String>) -> Self {
        PostgresSink {
            client,
            schema: schema.into(),
            tables: Vec::new(),
        }
    }

    fn watermark_table(&self) -> QualifiedName {
        QualifiedName::new(&self.schema, WATERMARK_TABLE)
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
    ) -> Result<(), SinkError> {
        let mut problems = Vec::new();
        check_identifier(&mut problems, "watermark schema", &self.schema);
        for t in tables {
            check_spec(&mut problems, t);
        }
        if !problems.is_empty() {
            return Err(SinkError::Schema { problems });
        }
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
            return Err(SinkError::Schema {
                problems: vec![format!(
                    "schema {} does not exist (it holds the watermark table {WATERMARK_TABLE}); create it or set create_tables = true",
                    quote_ident(&self.schema)
                )],
            });
        }
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {} (destination text PRIMARY KEY, seq bigint NOT NULL, \
             updated_at timestamptz NOT NULL DEFAULT now())",
            wm.quoted()
        ));
        for stmt in &ddl {
            self.client
                .batch_execute(stmt)
                .await
                .map_err(|e| query_error("creating destination tables", None, None, e))?;
        }

        let mut checked = Vec::new();
        for t in tables {
            if let Some(c) = self.check_table(&mut problems, t).await? {
                checked.push(c);
            }
        }
        if !problems.is_empty() {
            return Err(SinkError::Schema { problems });
        }
        let mut prepared = Vec::with_capacity(checked.len());
        for (spec, casts) in checked {
            prepared.push(self.prepare(spec, casts).await?);
        }
        self.tables = prepared;
        Ok(())
    }

    async fn schema_exists(&self, schema: &str) -> Result<bool, SinkError> {
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
    async fn check_table(
        &self,
        problems: &mut Vec<String>,
        t: &TargetTable,
    ) -> Result<Option<(TargetTable, Vec<String>)>, SinkError> {
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
        let actual: HashMap<String, (u32, String)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        let before = problems.len();
        let col_ref = |c: &str| format!("{}.{}", name.quoted(), quote_ident(c));
        let mut casts = Vec::with_capacity(t.columns.len());
        for c in &t.columns {
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
                ColumnType::Known(ty) => PgType::from_oid(*typid) == *ty,
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
        Ok((problems.len() == before).then(|| (t.clone(), casts)))
    }

    /// The oid of a configured type name, None when the server knows no such type.
    async fn resolve_type(
        &self,
        sql: &str,
        table: &QualifiedName,
    ) -> Result<Option<u32>, SinkError> {
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

    async fn prepare(&self, spec: TargetTable, casts: Vec<String>) -> Result<Prepared, SinkError> {
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
        let upsert = self.client.prepare(&sql.upsert).await.map_err(prep)?;
        let keep = match &sql.keep {
            Some(s) => Some(self.client.prepare(s).await.map_err(prep)?),
            None => None,
        };
        let carry = match &sql.carry {
            Some(s) => Some(self.client.prepare(s).await.map_err(prep)?),
            None => None,
        };
        let delete = self.client.prepare(&sql.delete).await.map_err(prep)?;
        let truncate = self.client.prepare(&sql.truncate).await.map_err(prep)?;
        Ok(Prepared {
            spec,
            name,
            key_idx,
            casts,
            upsert,
            keep,
            carry,
            delete,
            truncate,
        })
    }

    /// The last seq applied to `destination`; 0 when it has applied nothing yet.
    pub async fn watermark(&self, destination: &str) -> Result<u64, SinkError> {
        let wm = self.watermark_table();
        let row = self
            .client
            .query_opt(
                &format!("SELECT seq FROM {} WHERE destination = $1", wm.quoted()),
                &[&destination],
            )
            .await
            .map_err(|e| query_error("reading the watermark", Some(destination), Some(&wm), e))?;
        match row {
            None => Ok(0),
            Some(r) => watermark_value(destination, &wm, r.get(0)),
        }
    }

    /// Applies `batch` for `destination` in one transaction together with its watermark. A
    /// batch whose `last_seq` is not beyond the watermark is skipped.
    pub async fn apply(
        &mut self,
        destination: &str,
        batch: &Batch<'_>,
    ) -> Result<ApplyOutcome, SinkError> {
        let plan = plan(destination, &self.tables, batch)?;
        let last_seq = to_i64(destination, "(batch)", batch.last_seq)?;
        let wm = self.watermark_table();
        let wm_ref = &wm;
        let wm_err = |what| move |e| query_error(what, Some(destination), Some(wm_ref), e);
        let tx = self
            .client
            .transaction()
            .await
            .map_err(wm_err("starting the batch transaction"))?;
        let current: i64 = tx
            .query_one(
                &format!(
                    "INSERT INTO {} AS w (destination, seq) VALUES ($1, 0) \
                     ON CONFLICT (destination) DO UPDATE SET seq = w.seq RETURNING seq",
                    wm.quoted()
                ),
                &[&destination],
            )
            .await
            .map_err(wm_err("locking the watermark"))?
            .get(0);
        let current = watermark_value(destination, &wm, current)?;
        if batch.last_seq <= current {
            tx.rollback()
                .await
                .map_err(wm_err("ending the batch transaction"))?;
            return Ok(ApplyOutcome::AlreadyApplied { watermark: current });
        }
        if let Err(failure) = write(&tx, &self.tables, &plan).await {
            drop(tx);
            return Err(self.write_error(destination, &plan, failure).await);
        }
        tx.execute(
            &format!(
                "UPDATE {} SET seq = $2, updated_at = now() WHERE destination = $1 AND seq < $2",
                wm.quoted()
            ),
            &[&destination, &last_seq],
        )
        .await
        .map_err(wm_err("advancing the watermark"))?;
        tx.commit().await.map_err(wm_err("committing the batch"))?;
        Ok(ApplyOutcome::Applied)
    }

    /// Writes `batch` for `destination` in one transaction without reading, locking or moving
    /// its watermark: for re-applying history at or below the watermark, which
    /// [`apply`](Self::apply) would skip. The batch's changes and truncates are written exactly
    /// as `apply` writes them, so the `_seq` guard still keeps every newer row as it is.
    pub async fn replay(&mut self, destination: &str, batch: &Batch<'_>) -> Result<(), SinkError> {
        let plan = plan(destination, &self.tables, batch)?;
        let tx_err = |what| move |e| query_error(what, Some(destination), None, e);
        let tx = self
            .client
            .transaction()
            .await
            .map_err(tx_err("starting the replay transaction"))?;
        if let Err(failure) = write(&tx, &self.tables, &plan).await {
            drop(tx);
            return Err(self.write_error(destination, &plan, failure).await);
        }
        tx.commit()
            .await
            .map_err(tx_err("committing the replayed batch"))?;
        Ok(())
    }

    /// The error for a failed [`write`], once its transaction is gone: after a data exception
    /// in a table's row changes, with the column whose values do not fit.
    async fn write_error(
        &self,
        destination: &str,
        plan: &BatchPlan<'_, '_>,
        failure: WriteFailure,
    ) -> SinkError {
        let table = &self.tables[failure.table];
        let data_error = failure
            .error
            .code()
            .is_some_and(|c| c.code().starts_with("22"));
        let mut err = query_error(
            failure.what,
            Some(destination),
            Some(&table.name),
            failure.error,
        );
        if let (true, Some(rows)) = (data_error, failure.rows) {
            if let SinkError::Query { at, .. } = &mut err {
                at.column = self.find_bad_column(table, &plan.tables[rows]).await;
            }
        }
        err
    }

    /// After a data exception: the first column whose values do not cast to its type. Runs
    /// outside the failed transaction; None when no single column explains it.
    async fn find_bad_column(&self, table: &Prepared, plan: &TablePlan<'_, '_>) -> Option<String> {
        for (i, col) in table.spec.columns.iter().enumerate() {
            let values: Vec<Option<&str>> = plan
                .upserts
                .iter()
                .map(|u| u.cells[i].as_str())
                .chain(
                    table
                        .key_idx
                        .iter()
                        .position(|&k| k == i)
                        .into_iter()
                        .flat_map(|j| plan.deletes.iter().map(move |d| d.key[j].as_str())),
                )
                .collect();
            let sql = format!(
                "SELECT count(CAST(v AS {})) FROM unnest($1::text[]) AS v",
                table.casts[i]
            );
            if let Err(e) = self.client.query_one(&sql, &[&values]).await {
                if e.code().is_some_and(|c| c.code().starts_with("22")) {
                    return Some(col.name.clone());
                }
            }
        }
        None
    }
}

fn watermark_value(destination: &str, table: &QualifiedName, value: i64) -> Result<u64, SinkError> {
    u64::try_from(value).map_err(|_| SinkError::BadWatermark {
        destination: destination.to_owned(),
        table: table.clone(),
        value,
    })
}

fn to_i64(destination: &str, table: &str, seq: u64) -> Result<i64, SinkError> {
    i64::try_from(seq).map_err(|_| SinkError::InvalidBatch {
        destination: destination.to_owned(),
        table: table.to_owned(),
        reason: format!("seq {seq} does not fit a bigint"),
    })
}

fn check_identifier(problems: &mut Vec<String>, what: &str, name: &str) {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        "is longer than 63 bytes (PostgreSQL would truncate it)"
    } else if name.contains('\0') {
        "contains a NUL character"
    } else {
        return;
    };
    problems.push(format!("{what} {} {reason}", quote_ident(name)));
}

/// Problems with a table specification that need no server to find.
fn check_spec(problems: &mut Vec<String>, t: &TargetTable) {
    let name = t.qualified_name().quoted();
    check_identifier(problems, "schema", &t.schema);
    check_identifier(problems, "table", &t.name);
    check_identifier(
        problems,
        &format!("version column of {name}"),
        &t.version_column,
    );
    if t.columns.is_empty() {
        problems.push(format!("table {name} has no columns"));
    }
    let mut seen = std::collections::HashSet::new();
    for c in &t.columns {
        check_identifier(problems, &format!("column of {name}"), &c.name);
        if !seen.insert(c.name.as_str()) {
            problems.push(format!(
                "column {name}.{} is listed twice",
                quote_ident(&c.name)
            ));
        }
        if c.name == t.version_column || (t.soft_delete && c.name == DELETED_COLUMN) {
            problems.push(format!(
                "column {name}.{} is reserved for pgfanout's bookkeeping; rename the mapped column",
                quote_ident(&c.name)
            ));
        }
        match &c.ty {
            ColumnType::Known(ty) if !known_type_has_name(ty) => problems.push(format!(
                "column {name}.{} has type {}, which needs an explicit SQL type name in the mapping",
                quote_ident(&c.name),
                ty.name()
            )),
            ColumnType::Named(sql) => {
                if let Err(reason) = check_type_name(sql) {
                    problems.push(format!(
                        "column {name}.{}: type name {sql:?} {reason}; write a plain type name such as varchar(20) or \"My Type\"",
                        quote_ident(&c.name)
                    ));
                }
            }
            ColumnType::Known(_) => {}
        }
    }
    if t.key.is_empty() {
        problems.push(format!("table {name} has no key columns"));
    }
    for k in &t.key {
        if !t.columns.iter().any(|c| &c.name == k) {
            problems.push(format!(
                "key column {} of table {name} is not one of its columns",
                quote_ident(k)
            ));
        }
    }
}

fn known_type_has_name(ty: &PgType) -> bool {
    match ty {
        PgType::Enum | PgType::Other => false,
        PgType::Array(elem) => !matches!(**elem, PgType::Enum | PgType::Other | PgType::Array(_)),
        _ => true,
    }
}

/// A configured type name is spliced into DDL, so it must be a type name and nothing else:
/// words, digits, spaces, parentheses holding commas, dots, brackets and double-quoted names.
/// No quotes, semicolons, dashes or slashes outside double quotes, so no comments either.
fn check_type_name(sql: &str) -> Result<(), &'static str> {
    if sql.trim().is_empty() {
        return Err("is empty");
    }
    let mut quoted = false;
    let mut depth = 0u32;
    for c in sql.chars() {
        if c == '\0' {
            return Err("contains a NUL character");
        }
        if c == '"' {
            quoted = !quoted;
            continue;
        }
        if quoted {
            continue;
        }
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("has unbalanced parentheses")?,
            ',' if depth == 0 => return Err("has a comma outside parentheses"),
            c if c.is_alphanumeric() || matches!(c, '_' | ' ' | ',' | '.' | '[' | ']') => {}
            _ => return Err("contains a character not allowed in a type name"),
        }
    }
    if quoted {
        return Err("has an unterminated quoted name");
    }
    if depth != 0 {
        return Err("has unbalanced parentheses");
    }
    Ok(())
}

fn type_sql(ty: &ColumnType) -> &str {
    match ty {
        ColumnType::Known(t) => t.name(),
        ColumnType::Named(s) => s,
    }
}

fn create_table_sql(t: &TargetTable) -> String {
    let mut cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let not_null = if c.nullable && !t.key.contains(&c.name) {
                ""
            } else {
                " NOT NULL"
            };
            format!("{} {}{not_null}", quote_ident(&c.name), type_sql(&c.ty))
        })
        .collect();
    cols.push(format!(
        "{} bigint NOT NULL",
        quote_ident(&t.version_column)
    ));
    if t.soft_delete {
        cols.push(format!(
            "{} boolean NOT NULL DEFAULT false",
            quote_ident(DELETED_COLUMN)
        ));
    }
    let key: Vec<String> = t.key.iter().map(|k| quote_ident(k)).collect();
    cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        t.qualified_name().quoted(),
        cols.join(", ")
    )
}

struct Sql {
    upsert: String,
    keep: Option<String>,
    carry: Option<String>,
    delete: String,
    truncate: String,
}

/// The four per-table statements (see the module comment). Parameter order: upsert — one
/// text[] per column, then seqs; keep — one text[] per column, one bool[] per non-key column,
/// then seqs; delete — one text[] per key column, then seqs; truncate — the truncate's seq.
fn statements(t: &TargetTable, key_idx: &[usize], casts: &[String]) -> Sql {
    let table = t.qualified_name().quoted();
    let ver = quote_ident(&t.version_column);
    let del = quote_ident(DELETED_COLUMN);
    let n = t.columns.len();
    let col = |i: usize| quote_ident(&t.columns[i].name);
    let cast = |i: usize, v: &str| format!("CAST({v} AS {})", casts[i]);
    let non_key: Vec<usize> = (0..n).filter(|i| !key_idx.contains(i)).collect();
    let key_match = |vals: &dyn Fn(usize) -> String| {
        key_idx
            .iter()
            .enumerate()
            .map(|(j, &i)| format!("t.{} = {}", col(i), cast(i, &vals(j))))
            .collect::<Vec<_>>()
            .join(" AND ")
    };

    // upsert
    let mut target: Vec<String> = (0..n).map(col).collect();
    target.push(ver.clone());
    let mut select: Vec<String> = (0..n).map(|i| cast(i, &format!("u.v{i}"))).collect();
    select.push("u.s".into());
    let mut params: Vec<String> = (1..=n).map(|p| format!("${p}::text[]")).collect();
    params.push(format!("${}::int8[]", n + 1));
    let mut names: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    names.push("s".into());
    let mut set: Vec<String> = non_key
        .iter()
        .map(|&i| format!("{c} = excluded.{c}", c = col(i)))
        .collect();
    set.push(format!("{ver} = excluded.{ver}"));
    if t.soft_delete {
        target.push(del.clone());
        select.push("false".into());
        set.push(format!("{del} = false"));
    }
    let keys: Vec<String> = key_idx.iter().map(|&i| col(i)).collect();
    let upsert = format!(
        "INSERT INTO {table} AS t ({}) SELECT {} FROM unnest({}) AS u({}) \
         ON CONFLICT ({}) DO UPDATE SET {} WHERE t.{ver} < excluded.{ver}",
        target.join(", "),
        select.join(", "),
        params.join(", "),
        names.join(", "),
        keys.join(", "),
        set.join(", ")
    );

    // keep
    let keep = (!non_key.is_empty()).then(|| {
        let mut params: Vec<String> = (1..=n).map(|p| format!("${p}::text[]")).collect();
        let mut names: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
        for (j, &i) in non_key.iter().enumerate() {
            params.push(format!("${}::bool[]", n + 1 + j));
            names.push(format!("k{i}"));
        }
        params.push(format!("${}::int8[]", n + non_key.len() + 1));
        names.push("s".into());
        let mut set: Vec<String> = non_key
            .iter()
            .map(|&i| {
                format!(
                    "{c} = CASE WHEN u.k{i} THEN t.{c} ELSE {} END",
                    cast(i, &format!("u.v{i}")),
                    c = col(i)
                )
            })
            .collect();
        set.push(format!("{ver} = u.s"));
        if t.soft_delete {
            set.push(format!("{del} = false"));
        }
        format!(
            "UPDATE {table} AS t SET {} FROM unnest({}) AS u({}) WHERE {} AND t.{ver} < u.s",
            set.join(", "),
            params.join(", "),
            names.join(", "),
            key_match(&|j| format!("u.v{}", key_idx[j]))
        )
    });

    // carry: a row at a new key takes its unchanged values from its old key's row
    let carry = (!non_key.is_empty()).then(|| {
        let k = key_idx.len();
        let mut params: Vec<String> = (1..=n).map(|p| format!("${p}::text[]")).collect();
        let mut names: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
        for (j, &i) in non_key.iter().enumerate() {
            params.push(format!("${}::bool[]", n + 1 + j));
            names.push(format!("k{i}"));
        }
        for j in 0..k {
            params.push(format!("${}::text[]", n + non_key.len() + 1 + j));
            names.push(format!("o{j}"));
        }
        params.push(format!("${}::int8[]", n + non_key.len() + k + 1));
        names.push("s".into());
        let mut select: Vec<String> = (0..n)
            .map(|i| {
                let v = cast(i, &format!("u.v{i}"));
                if key_idx.contains(&i) {
                    v
                } else {
                    format!("CASE WHEN u.k{i} THEN o.{} ELSE {v} END", col(i))
                }
            })
            .collect();
        select.push("u.s".into());
        let mut on: Vec<String> = key_idx
            .iter()
            .enumerate()
            .map(|(j, &i)| format!("o.{} = {}", col(i), cast(i, &format!("u.o{j}"))))
            .collect();
        if t.soft_delete {
            select.push("false".into());
            on.push(format!("NOT o.{del}"));
        }
        format!(
            "INSERT INTO {table} AS t ({}) SELECT {} FROM unnest({}) AS u({}) \
             JOIN {table} AS o ON {} \
             ON CONFLICT ({}) DO UPDATE SET {} WHERE t.{ver} < excluded.{ver}",
            target.join(", "),
            select.join(", "),
            params.join(", "),
            names.join(", "),
            on.join(" AND "),
            keys.join(", "),
            set.join(", ")
        )
    });

    // delete
    let k = key_idx.len();
    let mut params: Vec<String> = (1..=k).map(|p| format!("${p}::text[]")).collect();
    params.push(format!("${}::int8[]", k + 1));
    let mut names: Vec<String> = (0..k).map(|j| format!("d{j}")).collect();
    names.push("s".into());
    let from = format!("unnest({}) AS u({})", params.join(", "), names.join(", "));
    let cond = format!("{} AND t.{ver} < u.s", key_match(&|j| format!("u.d{j}")));
    let delete = if t.soft_delete {
        format!("UPDATE {table} AS t SET {del} = true, {ver} = u.s FROM {from} WHERE {cond}")
    } else {
        format!("DELETE FROM {table} AS t USING {from} WHERE {cond}")
    };

    // truncate
    let truncate = if t.soft_delete {
        format!(
            "UPDATE {table} AS t SET {del} = true, {ver} = $1::int8 \
             WHERE t.{ver} < $1::int8 AND NOT t.{del}"
        )
    } else {
        format!("DELETE FROM {table} AS t WHERE t.{ver} < $1::int8")
    };
    Sql {
        upsert,
        keep,
        carry,
        delete,
        truncate,
    }
}

/// One collapsed upsert: a seq and one cell per column.
struct Upsert<'b, 'a> {
    seq: i64,
    cells: Vec<&'b Cell<'a>>,
    /// For a row whose key changed (deleted at its old key under the same seq): the old key,
    /// whose row holds the values of the `Unchanged` cells.
    moved_from: Option<Vec<&'b Cell<'a>>>,
}

struct Delete<'b, 'a> {
    seq: i64,
    key: Vec<&'b Cell<'a>>,
}

/// What a batch writes, after checking and collapsing.
struct BatchPlan<'b, 'a> {
    /// Row changes, one entry per table that has any.
    tables: Vec<TablePlan<'b, 'a>>,
    /// `(table, seq)`: at most one per table, its highest-seq truncate in the batch.
    truncates: Vec<(usize, i64)>,
}

/// What one table gets from a batch, after collapsing.
struct TablePlan<'b, 'a> {
    table: usize,
    upserts: Vec<Upsert<'b, 'a>>,
    deletes: Vec<Delete<'b, 'a>>,
}

impl TablePlan<'_, '_> {
    async fn run(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        t: &Prepared,
    ) -> Result<(), (&'static str, tokio_postgres::Error)> {
        let n = t.spec.columns.len();
        let unchanged_flags = |rows: &[&Upsert]| -> Vec<Vec<bool>> {
            (0..n)
                .filter(|i| !t.key_idx.contains(i))
                .map(|i| {
                    rows.iter()
                        .map(|u| matches!(u.cells[i], Cell::Unchanged))
                        .collect()
                })
                .collect()
        };
        let carry_rows: Vec<&Upsert> = self
            .upserts
            .iter()
            .filter(|u| u.moved_from.is_some())
            .collect();
        if let (Some(carry), false) = (&t.carry, carry_rows.is_empty()) {
            let values = column_arrays(n, &carry_rows);
            let flags = unchanged_flags(&carry_rows);
            let old_keys: Vec<Vec<Option<&str>>> = (0..t.key_idx.len())
                .map(|j| {
                    carry_rows
                        .iter()
                        .map(|u| u.moved_from.as_ref().and_then(|k| k[j].as_str()))
                        .collect()
                })
                .collect();
            let seqs: Vec<i64> = carry_rows.iter().map(|u| u.seq).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(3 * n + 1);
            params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.extend(flags.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.extend(old_keys.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.push(&seqs);
            tx.execute(carry, &params)
                .await
                .map_err(|e| ("moving rows with unchanged values to their new key", e))?;
        }
        let keep_rows: Vec<&Upsert> = self
            .upserts
            .iter()
            .filter(|u| u.cells.iter().any(|c| matches!(c, Cell::Unchanged)))
            .collect();
        if let (Some(keep), false) = (&t.keep, keep_rows.is_empty()) {
            let values = column_arrays(n, &keep_rows);
            let flags = unchanged_flags(&keep_rows);
            let seqs: Vec<i64> = keep_rows.iter().map(|u| u.seq).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(2 * n + 1);
            params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.extend(flags.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.push(&seqs);
            tx.execute(keep, &params)
                .await
                .map_err(|e| ("updating rows with unchanged values", e))?;
        }
        if !self.upserts.is_empty() {
            let rows: Vec<&Upsert> = self.upserts.iter().collect();
            let values = column_arrays(n, &rows);
            let seqs: Vec<i64> = rows.iter().map(|u| u.seq).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(n + 1);
            params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.push(&seqs);
            tx.execute(&t.upsert, &params)
                .await
                .map_err(|e| ("upserting rows", e))?;
        }
        if !self.deletes.is_empty() {
            let keys: Vec<Vec<Option<&str>>> = (0..t.key_idx.len())
                .map(|j| self.deletes.iter().map(|d| d.key[j].as_str()).collect())
                .collect();
            let seqs: Vec<i64> = self.deletes.iter().map(|d| d.seq).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(keys.len() + 1);
            params.extend(keys.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.push(&seqs);
            tx.execute(&t.delete, &params)
                .await
                .map_err(|e| ("deleting rows", e))?;
        }
        Ok(())
    }
}

/// A statement of a batch that failed.
struct WriteFailure {
    /// Index of the table written.
    table: usize,
    /// Index into [`BatchPlan::tables`] when the table's row changes failed, None for a truncate.
    rows: Option<usize>,
    what: &'static str,
    error: tokio_postgres::Error,
}

/// Writes a batch's row changes, then its truncates, in `tx`: the statements both
/// [`PostgresSink::apply`] and [`PostgresSink::replay`] run.
async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    tables: &[Prepared],
    plan: &BatchPlan<'_, '_>,
) -> Result<(), WriteFailure> {
    for (i, p) in plan.tables.iter().enumerate() {
        p.run(tx, &tables[p.table])
            .await
            .map_err(|(what, error)| WriteFailure {
                table: p.table,
                rows: Some(i),
                what,
                error,
            })?;
    }
    // Truncates run after all row changes, although in the batch they may sit between them.
    // The seq guard makes that equivalent to seq order: a row last written by a change newer
    // than the truncate has a higher `_seq` and survives it; one written by an older change
    // has a lower `_seq` and is removed, as it would have been had the truncate come later.
    for &(ti, seq) in &plan.truncates {
        tx.execute(&tables[ti].truncate, &[&seq])
            .await
            .map_err(|error| WriteFailure {
                table: ti,
                rows: None,
                what: "truncating rows",
                error,
            })?;
    }
    Ok(())
}

/// Column-major text arrays (NULL for both NULL and unchanged cells).
fn column_arrays<'c>(n: usize, rows: &[&'c Upsert<'_, '_>]) -> Vec<Vec<Option<&'c str>>> {
    (0..n)
        .map(|i| rows.iter().map(|u| u.cells[i].as_str()).collect())
        .collect()
}

enum Latest<'b, 'a> {
    Upsert(Upsert<'b, 'a>),
    Delete(Delete<'b, 'a>),
}

/// Checks a batch against the tables and collapses repeated changes to one key into the last
/// one (an upsert over an upsert inherits the earlier cells where it has `Unchanged`), and the
/// truncates of one table into the last one (a truncate removes everything an earlier one
/// would, and its seq is the newer tombstone for soft deletes).
fn plan<'b, 'a>(
    destination: &str,
    tables: &[Prepared],
    batch: &'b Batch<'a>,
) -> Result<BatchPlan<'b, 'a>, SinkError> {
    let invalid = |table: &str, reason: String| SinkError::InvalidBatch {
        destination: destination.to_owned(),
        table: table.to_owned(),
        reason,
    };
    // The table at an index, and a seq checked against the batch's last_seq and the bigint
    // range; the same rules for row changes and truncates.
    let table_at = |ti: usize| {
        tables.get(ti).ok_or_else(|| {
            invalid(
                &format!("#{ti}"),
                format!("table index {ti} out of range ({} tables)", tables.len()),
            )
        })
    };
    let checked_seq = |tname: &str, what: &str, seq: u64| {
        if seq > batch.last_seq {
            return Err(invalid(
                tname,
                format!(
                    "{what} seq {seq} is beyond the batch's last_seq {}",
                    batch.last_seq
                ),
            ));
        }
        to_i64(destination, tname, seq)
    };
    // Per table: key text → slot in `latest`.
    let mut index: Vec<rustc_hash::FxHashMap<Vec<&'b str>, usize>> =
        vec![Default::default(); tables.len()];
    let mut latest: Vec<Vec<Latest<'b, 'a>>> = (0..tables.len()).map(|_| Vec::new()).collect();
    // The last delete: (table, seq, key, the cells it replaced when the batch wrote the row).
    type Replaced<'b, 'a> = (Vec<&'b Cell<'a>>, Option<Vec<&'b Cell<'a>>>);
    type LastDelete<'b, 'a> = (usize, i64, Vec<&'b Cell<'a>>, Option<Replaced<'b, 'a>>);
    let mut last_delete: Option<LastDelete<'b, 'a>> = None;
    for (ti, op) in &batch.ops {
        let t = table_at(*ti)?;
        let tname = t.name.to_string();
        let seq = checked_seq(&tname, "change", op.seq())?;
        let key_cells = super::key_cells(op, t.spec.columns.len(), &t.key_idx)
            .map_err(|reason| invalid(&tname, reason))?;
        let mut key_text = Vec::with_capacity(key_cells.len());
        for (j, c) in key_cells.iter().enumerate() {
            match c {
                Cell::Text(s) => key_text.push(s.as_ref()),
                _ => {
                    return Err(invalid(
                        &tname,
                        format!(
                            "key column {} is NULL or unchanged",
                            quote_ident(&t.spec.key[j])
                        ),
                    ))
                }
            }
        }
        let new = match op {
            RowOp::Upsert { cells, .. } => {
                let mut u = Upsert {
                    seq,
                    cells: cells.iter().collect(),
                    moved_from: None,
                };
                // A key change: the delete of the old key came just before, under this seq.
                if let Some((dt, dseq, old_key, replaced)) = last_delete.take() {
                    let unchanged = u.cells.iter().any(|c| matches!(c, Cell::Unchanged));
                    if dt == *ti && dseq == seq && unchanged && !index[*ti].contains_key(&key_text)
                    {
                        match replaced {
                            // Moved again: still unknown cells come from where the earlier
                            // write's do.
                            Some((prev, prev_moved_from)) => {
                                for (cell, p) in u.cells.iter_mut().zip(prev) {
                                    if matches!(cell, Cell::Unchanged) {
                                        *cell = p;
                                    }
                                }
                                u.moved_from = prev_moved_from.or(Some(old_key));
                            }
                            None => u.moved_from = Some(old_key),
                        }
                    }
                }
                Latest::Upsert(u)
            }
            RowOp::Delete { .. } => {
                let replaced =
                    index[*ti]
                        .get(&key_text)
                        .and_then(|&slot| match &latest[*ti][slot] {
                            Latest::Upsert(u) => Some((u.cells.clone(), u.moved_from.clone())),
                            _ => None,
                        });
                last_delete = Some((*ti, seq, key_cells.clone(), replaced));
                Latest::Delete(Delete {
                    seq,
                    key: key_cells,
                })
            }
        };
        match index[*ti].get(&key_text) {
            None => {
                index[*ti].insert(key_text, latest[*ti].len());
                latest[*ti].push(new);
            }
            Some(&slot) => {
                let old = &mut latest[*ti][slot];
                let old_seq = match old {
                    Latest::Upsert(u) => u.seq,
                    Latest::Delete(d) => d.seq,
                };
                if seq < old_seq {
                    continue;
                }
                let mut new = new;
                if let (Latest::Upsert(n), Latest::Upsert(o)) = (&mut new, &*old) {
                    for (cell, prev) in n.cells.iter_mut().zip(&o.cells) {
                        if matches!(cell, Cell::Unchanged) {
                            *cell = prev;
                        }
                    }
                    // Cells still unchanged come from where the earlier upsert's do.
                    if n.moved_from.is_none() {
                        n.moved_from = o.moved_from.clone();
                    }
                }
                *old = new;
            }
        }
    }
    let mut truncates: Vec<(usize, i64)> = Vec::new();
    for &(ti, seq) in &batch.truncates {
        let t = table_at(ti)?;
        let seq = checked_seq(&t.name.to_string(), "truncate", seq)?;
        match truncates.iter_mut().find(|(other, _)| *other == ti) {
            Some((_, last)) => *last = (*last).max(seq),
            None => truncates.push((ti, seq)),
        }
    }
    let tables = latest
        .into_iter()
        .enumerate()
        .filter(|(_, ops)| !ops.is_empty())
        .map(|(table, ops)| {
            let mut p = TablePlan {
                table,
                upserts: Vec::new(),
                deletes: Vec::new(),
            };
            for op in ops {
                match op {
                    Latest::Upsert(u) => p.upserts.push(u),
                    Latest::Delete(d) => p.deletes.push(d),
                }
            }
            p
        })
        .collect();
    Ok(BatchPlan { tables, truncates })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_admit_types_only() {
        for ok in [
            "varchar(20)",
            "numeric(12, 2)",
            "timestamp with time zone",
            "\"My Enum\"",
            "app.\"odd \"\"; type\"",
            "int4[]",
            "double precision",
        ] {
            assert_eq!(check_type_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "int; DROP TABLE x",
            "int -- c",
            "int /* c */",
            "int, evil int",
            "numeric(1,2)), evil int, (x",
            "text DEFAULT 'x'",
            "\"open",
            "int)",
        ] {
            assert!(check_type_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statements_quote_every_identifier() {
        let t = TargetTable {
            soft_delete: true,
            ..TargetTable::new(
                "s\"; x",
                "t;",
                vec![
                    crate::sink::TargetColumn::new("id", PgType::Int8, false),
                    crate::sink::TargetColumn::new("a\"b", PgType::Text, true),
                ],
                vec!["id".into()],
            )
        };
        let sql = statements(&t, &[0], &["bigint".into(), "text".into()]);
        assert!(
            sql.upsert.starts_with(
                r#"INSERT INTO "s""; x"."t;" AS t ("id", "a""b", "_seq", "_deleted")"#
            ),
            "{}",
            sql.upsert
        );
        assert!(
            sql.delete
                .starts_with(r#"UPDATE "s""; x"."t;" AS t SET "_deleted" = true"#),
            "{}",
            sql.delete
        );
        assert!(sql
            .keep
            .unwrap()
            .contains(r#""a""b" = CASE WHEN u.k1 THEN t."a""b" ELSE CAST(u.v1 AS text) END"#));
        assert_eq!(
            sql.truncate,
            r#"UPDATE "s""; x"."t;" AS t SET "_deleted" = true, "_seq" = $1::int8 WHERE t."_seq" < $1::int8 AND NOT t."_deleted""#
        );
        let hard = TargetTable {
            soft_delete: false,
            version_column: "v\"er".into(),
            ..t
        };
        let sql = statements(&hard, &[0], &["bigint".into(), "text".into()]);
        assert_eq!(
            sql.truncate,
            r#"DELETE FROM "s""; x"."t;" AS t WHERE t."v""er" < $1::int8"#
        );
    }
}
