//! The ClickHouse writer: one shared analytics database, `ReplacingMergeTree` tables whose
//! version column is the change's seq, a deleted flag instead of deletes, and the watermark in
//! a table of its own written after the data.
//!
//! ```text
//!   Batch ─▶ with unchanged TOAST cells: collapse per (table, key), the last op wins and
//!            │  takes unchanged cells from an earlier upsert of the row (otherwise every op
//!            │  is a row: FINAL keeps the last version of a key anyway)
//!            ▼
//!   unchanged cells left ─▶ SELECT key, those columns FROM t FINAL WHERE live AND key IN …
//!            │               (their current RowBinary bytes, spliced into the new row)
//!            ▼
//!   RowBinary per table ─▶ INSERT … FORMAT RowBinary (one insert per table and batch)
//!            ▼
//!   truncates ─▶ INSERT … SELECT sort key, seq, 1 FROM t FINAL WHERE live AND version < seq
//!            ▼
//!   INSERT INTO _pgfanout_watermarks (destination, seq)
//! ```
//!
//! **Exactly once under `FINAL`.** ClickHouse has no transaction spanning the inserts and the
//! watermark, so a batch may be written twice (a crash after the data, before the watermark).
//! That is harmless: every row carries its change's seq as the version, so the copies are the
//! same version of the same sort key and `FINAL` (or a merge) keeps one. A delete is a row with
//! the deleted flag at the delete's seq, which hides every older version.
//!
//! **Unchanged TOAST values.** PostgreSQL does not send a large value an update left alone.
//! The value is taken, in this order, from: the old tuple (the router fills it when the table
//! has REPLICA IDENTITY FULL); an earlier upsert of the same row in the batch; the row's
//! current live version in ClickHouse; the source table (the fan-out asks
//! [`ClickHouseSink::unknown_unchanged`] which rows none of the others knows, and reads those
//! from the source before the batch comes here, see `fanout::toast`). A row the source no
//! longer has either (a later change, also in the log, deleted it) gets NULL, or the type's
//! default in a non-Nullable column, with a warning naming the table and column.
//!
//! **Sort key.** Each table is ordered by the destination's tenant columns, then the rest of
//! the mapping's key. The tenant columns must be part of the key (checked at start), so a
//! delete — which carries only the key — lands on the sort key of the row it hides, and a row
//! moving between tenants is a delete at the old key plus an insert at the new one.

use crate::binding::Lineage;
use rustc_hash::FxHashMap as HashMap;
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use clickhouse::Client;
use tracing::{debug, info, warn};

use super::ddl::{self, ident, literal, qualified, TableDdl};
use super::error::{io_error, server_error, timed_out, ClickHouseError, RejectedValue};
use super::rowbinary::{value_len, ColumnEncoder};
use super::types::{target_type, ChType, ServerVersion};
use crate::config::ClickHouseStore;
use crate::failpoint;
use crate::problems::Problems;
use crate::sink::SinkError;
use crate::sink::{
    checked_key, seq_in_batch, Batch, Cell, ColumnType, RowOp, TargetTable, WATERMARK_TABLE,
};
use crate::value::PgType;

/// How long one statement may take before the session is considered lost.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Keys per lookup of current rows: keeps each statement far below ClickHouse's
/// `max_query_size` (256 KiB by default).
const LOOKUP_KEYS: usize = 1000;
/// One target table as this sink writes it.
struct Table {
    spec: TargetTable,
    ddl: TableDdl,
    /// `database.table`, for messages.
    label: String,
    /// One per mapped column, for the column's type as the server holds it.
    encoders: Vec<ColumnEncoder>,
    /// Each column's type as the server holds it.
    types: Vec<ChType>,
    /// Positions of the key columns among the mapped columns, in key order.
    key_idx: Vec<usize>,
    insert_sql: String,
}

pub struct ClickHouseSink {
    client: Client,
    store: ClickHouseStore,
    version: ServerVersion,
    tables: Vec<Table>,
    /// The watermark as last read or written: this sink is its destination's only writer.
    watermark: Option<u64>,
    /// Written with the watermark (see `crate::binding`).
    lineage: Option<Lineage>,
}

impl fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseSink")
            .field("url", &self.store.url)
            .field("database", &self.store.database)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ClickHouseSink {
    /// Connects (the first statement reads the server version).
    pub async fn connect(store: &ClickHouseStore) -> Result<ClickHouseSink, ClickHouseError> {
        let url =
            super::config::server_url(&store.url).map_err(|message| ClickHouseError::Server {
                what: "reading the ClickHouse URL".to_owned(),
                table: None,
                message: format!("url {message}"),
                code: None,
                transient: false,
            })?;
        let mut client = Client::default()
            .with_url(&url)
            .with_user(&store.user)
            // Row-type validation sends a setting servers before 22.x do not know, and pgfanout
            // writes pre-encoded RowBinary anyway.
            .with_validation(false);
        if let Some(p) = &store.password {
            client = client.with_password(p.expose());
        }
        let mut sink = ClickHouseSink {
            client,
            store: store.clone(),
            version: ServerVersion { major: 0, minor: 0 },
            tables: Vec::new(),
            watermark: None,
            lineage: None,
        };
        let what = format!("connecting to ClickHouse at {url} (reading its version)");
        let text = sink.fetch_text(&what, None, "SELECT version()").await?;
        sink.version =
            ServerVersion::parse(text.trim()).ok_or_else(|| ClickHouseError::Server {
                what,
                table: None,
                message: format!("unrecognised version {:?}", text.trim()),
                code: None,
                transient: false,
            })?;
        debug!(url = %url, version = %sink.version, "connected to ClickHouse");
        Ok(sink)
    }

    pub fn server_version(&self) -> ServerVersion {
        self.version
    }

    async fn execute(
        &self,
        what: &str,
        table: Option<&str>,
        sql: &str,
    ) -> Result<(), ClickHouseError> {
        let mut q = self.client.query_raw(sql);
        if self.version.low_cardinality_needs_setting() {
            q = q.with_setting("allow_experimental_low_cardinality_type", "1");
        }
        match tokio::time::timeout(STATEMENT_TIMEOUT, q.execute()).await {
            Ok(r) => r.map_err(|e| server_error(what, table, e)),
            Err(_) => Err(timed_out(what, table, STATEMENT_TIMEOUT)),
        }
    }

    async fn fetch(
        &self,
        what: &str,
        table: Option<&str>,
        sql: &str,
        format: &str,
    ) -> Result<Bytes, ClickHouseError> {
        let run = async {
            let mut cursor = self.client.query_raw(sql).fetch_bytes(format)?;
            cursor.collect().await
        };
        match tokio::time::timeout(STATEMENT_TIMEOUT, run).await {
            Ok(r) => r.map_err(|e| server_error(what, table, e)),
            Err(_) => Err(timed_out(what, table, STATEMENT_TIMEOUT)),
        }
    }

    async fn fetch_text(
        &self,
        what: &str,
        table: Option<&str>,
        sql: &str,
    ) -> Result<String, ClickHouseError> {
        let bytes = self.fetch(what, table, sql, "TabSeparated").await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn fetch_rows(
        &self,
        what: &str,
        table: Option<&str>,
        sql: &str,
    ) -> Result<Vec<Vec<String>>, ClickHouseError> {
        Ok(tsv_rows(&self.fetch_text(what, table, sql).await?))
    }

    /// `name → type` of an existing table (empty when it does not exist).
    async fn columns(
        &self,
        db: &str,
        table: &str,
    ) -> Result<Vec<(String, String)>, ClickHouseError> {
        let rows = self
            .fetch_rows(
                "reading the table's columns",
                Some(&qualified(db, table)),
                &format!(
                    "SELECT name, type FROM system.columns WHERE database = {} AND table = {}",
                    literal(db),
                    literal(table)
                ),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|mut r| {
                (r.len() == 2).then(|| {
                    let ty = r.pop().unwrap_or_default();
                    (r.pop().unwrap_or_default(), ty)
                })
            })
            .collect())
    }

    /// Makes `tables` the tables batches refer to (by index). With `create`, creates the
    /// database and missing tables; then checks every table — each mapped column present
    /// with a type that holds what pgfanout writes, the version and deleted columns, a
    /// ReplacingMergeTree engine — and reports every problem at once. Also creates the
    /// watermark table and, when configured, the FINAL views, the reader's row policies
    /// and its grants.
    pub async fn ensure_tables(
        &mut self,
        destination: &str,
        tables: &[TargetTable],
        create: bool,
    ) -> Result<(), ClickHouseError> {
        self.prepare_tables(destination, tables, create, false)
            .await
    }

    /// What [`ensure_tables`](Self::ensure_tables) would report, without changing anything
    /// (`pgfanout check`): a missing table is a problem only when it would not be created.
    pub async fn check_tables(
        &mut self,
        destination: &str,
        tables: &[TargetTable],
        create: bool,
    ) -> Result<(), ClickHouseError> {
        self.prepare_tables(destination, tables, create, true).await
    }

    async fn prepare_tables(
        &mut self,
        destination: &str,
        tables: &[TargetTable],
        create: bool,
        dry_run: bool,
    ) -> Result<(), ClickHouseError> {
        let db = self.store.database.clone();
        let schema_err = |problems| ClickHouseError::Schema {
            destination: destination.to_owned(),
            problems,
        };
        if self.store.reader_user.is_some() && !self.version.supports_reader_policies() {
            return Err(schema_err(Problems::from(vec![format!(
                "reader_user needs SQL access control (CREATE ROW POLICY, GRANT) and getSetting \
                 (ClickHouse 20.7 and later), which this ClickHouse server ({}) does not have; \
                 remove reader_user and restrict the reader in users.xml, or upgrade the server",
                self.version
            )])));
        }
        if create && !dry_run {
            self.execute(
                "creating the database",
                None,
                &format!("CREATE DATABASE IF NOT EXISTS {}", ident(&db)),
            )
            .await?;
        }
        let mut problems = Vec::new();
        let mut prepared = Vec::with_capacity(tables.len());
        for t in tables {
            let ddl = self.table_ddl(t);
            let label = qualified(&db, &t.name);
            let mut existing = self.columns(&db, &t.name).await?;
            if existing.is_empty() && create && dry_run {
                continue;
            }
            if existing.is_empty() && create {
                info!(destination, table = %label, "creating table");
                self.execute(
                    "creating the table",
                    Some(&label),
                    &ddl.create(self.version),
                )
                .await?;
                existing = self.columns(&db, &t.name).await?;
            }
            if existing.is_empty() {
                problems.push(format!(
                    "table {label} does not exist; create it, or set create_tables = true"
                ));
                continue;
            }
            // A table from before the source changed (pgfanout was not running): its new
            // columns and widened types, as a running destination would have added them (a
            // check does not report them). What is not a widening is left to the checks below.
            let mut aligned: Vec<String> = Vec::new();
            if create {
                if let Ok(actions) = align_actions(&label, &existing, &ddl, t, t, false) {
                    let actions: Vec<String> = actions
                        .into_iter()
                        .map(|(c, a)| {
                            aligned.push(c);
                            a
                        })
                        .collect();
                    if !actions.is_empty() && !dry_run {
                        aligned.clear();
                        info!(destination, table = %label, actions = %actions.join(", "), "changing the target table to follow the source");
                        self.execute(
                            "changing the target table",
                            Some(&label),
                            &format!("ALTER TABLE {label} {}", actions.join(", ")),
                        )
                        .await?;
                        existing = self.columns(&db, &t.name).await?;
                    }
                }
            }
            let before = problems.len();
            let mut types = Vec::with_capacity(ddl.columns.len());
            for (name, wanted) in &ddl.columns {
                if aligned.contains(name) {
                    continue;
                }
                match existing.iter().find(|(n, _)| n == name) {
                    None => problems.push(format!(
                        "{label}: column {} is missing; add it (ALTER TABLE {label} ADD COLUMN {} {})",
                        ident(name),
                        ident(name),
                        wanted.sql()
                    )),
                    Some((_, have)) => match ChType::parse(have) {
                        Some(h) if h.accepts(wanted) => types.push(h),
                        _ => problems.push(format!(
                            "{label}: column {} is {have}, which cannot hold the {} pgfanout writes; \
                             change its type (ALTER TABLE {label} MODIFY COLUMN {} {}) or drop the \
                             table and let pgfanout create it",
                            ident(name),
                            wanted.sql(),
                            ident(name),
                            wanted.sql()
                        )),
                    },
                }
            }
            for (name, allowed, want) in [
                (&ddl.version_column, &["UInt64", "Int64"][..], "UInt64"),
                (&ddl.deleted_column, &["UInt8", "Int8", "Bool"][..], "UInt8"),
            ] {
                match existing.iter().find(|(n, _)| n == name) {
                    Some((_, have)) if allowed.contains(&have.as_str()) => {}
                    Some((_, have)) => problems.push(format!(
                        "{label}: column {} is {have}; pgfanout writes {want} there (ALTER TABLE \
                         {label} MODIFY COLUMN {} {want})",
                        ident(name),
                        ident(name)
                    )),
                    None => problems.push(format!(
                        "{label}: column {} is missing; add it (ALTER TABLE {label} ADD COLUMN {} {want})",
                        ident(name),
                        ident(name)
                    )),
                }
            }
            let engine = self
                .fetch_rows(
                    "reading the table's engine",
                    Some(&label),
                    &format!(
                        "SELECT engine, engine_full, sorting_key FROM system.tables \
                         WHERE database = {} AND name = {}",
                        literal(&db),
                        literal(&t.name)
                    ),
                )
                .await?;
            if let [engine, engine_full, sorting_key] =
                engine.first().map(Vec::as_slice).unwrap_or(&[])
            {
                problems.extend(engine_problems(
                    &label,
                    &ddl,
                    engine,
                    engine_full,
                    sorting_key,
                ));
            }
            if problems.len() > before {
                continue;
            }
            let pg: Vec<PgType> = t.columns.iter().map(|c| pg_type(&c.ty)).collect();
            let encoders = pg
                .iter()
                .zip(&types)
                .map(|(p, ch)| ColumnEncoder::new(p, ch))
                .collect();
            let key_idx = t
                .key
                .iter()
                .filter_map(|k| t.columns.iter().position(|c| c.name == *k))
                .collect();
            prepared.push(Table {
                insert_sql: ddl.insert(),
                spec: t.clone(),
                ddl,
                label,
                encoders,
                types,
                key_idx,
            });
        }
        if !problems.is_empty() {
            return Err(schema_err(problems.into()));
        }
        if dry_run {
            return Ok(());
        }
        self.execute(
            "creating the watermark table",
            None,
            &ddl::watermark_table(&db, WATERMARK_TABLE),
        )
        .await?;
        // Watermark tables created before lineages existed (18.16 has no ADD COLUMN IF NOT
        // EXISTS: look first).
        let has_lineage = self
            .fetch_text(
                "reading the watermark table's columns",
                None,
                &format!(
                    "SELECT count() FROM system.columns WHERE database = {} AND table = {} AND name = 'lineage'",
                    literal(&db),
                    literal(WATERMARK_TABLE)
                ),
            )
            .await?;
        if has_lineage.trim() == "0" {
            self.execute(
                "adding the lineage to the watermark table",
                None,
                &format!(
                    "ALTER TABLE {} ADD COLUMN lineage String",
                    qualified(&db, WATERMARK_TABLE)
                ),
            )
            .await?;
        }
        if let Some(views) = self.store.views_database.clone() {
            self.ensure_views(&views, &prepared).await?;
            if let Some(reader) = self.store.reader_user.clone() {
                for t in &prepared {
                    for sql in t.ddl.row_policies(&reader, &self.store.tenant_columns) {
                        self.execute("creating the reader's row policy", Some(&t.label), &sql)
                            .await?;
                    }
                    self.execute(
                        "granting the reader SELECT",
                        Some(&t.label),
                        &t.ddl.grant(&views, &reader),
                    )
                    .await?;
                }
            }
        }
        self.tables = prepared;
        Ok(())
    }

    /// See [`crate::sink::Writer::evolve`]: one `ALTER TABLE` with every action, then the
    /// tables are checked and prepared again (views recreated when their columns changed).
    /// A sort-key column is never changed.
    pub async fn evolve(
        &mut self,
        destination: &str,
        table: usize,
        prev: &TargetTable,
        next: &TargetTable,
        drop_gone: bool,
        alter: bool,
    ) -> Result<(), SinkError> {
        let db = self.store.database.clone();
        let label = qualified(&db, &next.name);
        let existing = self.columns(&db, &next.name).await?;
        let ddl = self.table_ddl(next);
        let refuse = |column: &str, reason: String| SinkError::SchemaChange {
            table: label.clone(),
            column: column.to_owned(),
            reason,
        };
        let actions: Vec<String> = align_actions(&label, &existing, &ddl, prev, next, drop_gone)
            .map_err(|(column, reason)| refuse(&column, reason))?
            .into_iter()
            .map(|(_, action)| action)
            .collect();
        // Kept columns need nothing: pgfanout creates every column outside the key Nullable,
        // and an insert that leaves one out writes its default.
        if !actions.is_empty() {
            let sql = format!("ALTER TABLE {label} {}", actions.join(", "));
            if !alter {
                return Err(refuse(
                    next.columns.first().map_or("", |c| c.name.as_str()),
                    format!(
                        "the source's schema changed and the table needs `{sql}`; create_tables = false, so pgfanout does not change tables: run it yourself (or set create_tables = true), then `pgfanout destination resume`"
                    ),
                ));
            }
            info!(destination, table = %label, actions = %actions.join(", "), "changing the target table to follow the source");
            self.execute("changing the target table", Some(&label), &sql)
                .await?;
        }
        let mut specs: Vec<TargetTable> = self.tables.iter().map(|t| t.spec.clone()).collect();
        if let Some(t) = specs.get_mut(table) {
            *t = next.clone();
        }
        self.prepare_tables(destination, &specs, false, false)
            .await?;
        Ok(())
    }

    /// Creates each view, or recreates it when its columns no longer match the table's.
    async fn ensure_views(&self, views: &str, tables: &[Table]) -> Result<(), ClickHouseError> {
        self.execute(
            "creating the views database",
            None,
            &format!("CREATE DATABASE IF NOT EXISTS {}", ident(views)),
        )
        .await?;
        for t in tables {
            let label = qualified(views, &t.spec.name);
            let have = self.columns(views, &t.spec.name).await?;
            let same = have.len() == t.ddl.columns.len()
                && t.ddl
                    .columns
                    .iter()
                    .all(|(n, _)| have.iter().any(|(h, _)| h == n));
            if !have.is_empty() && !same {
                info!(view = %label, "recreating the view: its columns changed");
                self.execute(
                    "dropping the outdated view",
                    Some(&label),
                    &format!("DROP TABLE IF EXISTS {label}"),
                )
                .await?;
            }
            self.execute("creating the view", Some(&label), &t.ddl.view(views))
                .await?;
        }
        Ok(())
    }

    fn table_ddl(&self, t: &TargetTable) -> TableDdl {
        let mut order_by: Vec<String> = self.store.tenant_columns.clone();
        for k in &t.key {
            if !order_by.contains(k) {
                order_by.push(k.clone());
            }
        }
        TableDdl {
            database: self.store.database.clone(),
            name: t.name.clone(),
            columns: t
                .columns
                .iter()
                .map(|c| {
                    let ch = target_type(&pg_type(&c.ty), c.typmod, c.nullable, self.version);
                    (c.name.clone(), ch)
                })
                .collect(),
            order_by,
            version_column: t.version_column.clone(),
            deleted_column: self.store.deleted_column.clone(),
        }
    }

    /// The last seq applied to `destination`; 0 when it has applied nothing yet.
    pub async fn watermark(&mut self, destination: &str) -> Result<u64, ClickHouseError> {
        let table = qualified(&self.store.database, WATERMARK_TABLE);
        let text = self
            .fetch_text(
                "reading the watermark",
                Some(&table),
                &format!(
                    "SELECT max(seq) FROM {table} WHERE destination = {}",
                    literal(destination)
                ),
            )
            .await?;
        let wm = text
            .trim()
            .parse::<u64>()
            .map_err(|_| ClickHouseError::Server {
                what: "reading the watermark".into(),
                table: Some(table.clone()),
                message: format!("not a seq: {:?}", text.trim()),
                code: None,
                transient: false,
            })?;
        self.watermark = Some(wm);
        Ok(wm)
    }

    /// From now on, write `lineage` with the watermark (see `crate::binding`).
    pub fn bind_lineage(&mut self, lineage: Lineage) {
        self.lineage = Some(lineage);
    }

    /// The lineage stored with `destination`'s highest watermark (`None`: none yet, or one
    /// written before lineages existed).
    pub async fn lineage(&mut self, destination: &str) -> Result<Option<String>, ClickHouseError> {
        let table = qualified(&self.store.database, WATERMARK_TABLE);
        let text = self
            .fetch_text(
                "reading the watermark",
                Some(&table),
                &format!(
                    "SELECT argMax(lineage, seq) FROM {table} WHERE destination = {}",
                    literal(destination)
                ),
            )
            .await?;
        let text = text.trim();
        Ok((!text.is_empty()).then(|| text.to_owned()))
    }

    /// Writes `batch` for `destination`, then its watermark. A batch whose `last_seq` is not
    /// beyond the watermark is skipped.
    pub async fn apply(
        &mut self,
        destination: &str,
        batch: &Batch<'_>,
    ) -> Result<(), ClickHouseError> {
        let current = match self.watermark {
            Some(w) => w,
            None => self.watermark(destination).await?,
        };
        if batch.last_seq <= current {
            return Ok(());
        }
        self.write(destination, batch).await?;
        let table = qualified(&self.store.database, WATERMARK_TABLE);
        // The rows are in, the watermark not yet: the batch is written again after a restart.
        failpoint::hit(failpoint::CH_AFTER_DATA_BEFORE_WATERMARK)
            .map_err(|e| io_error("advancing the watermark", Some(&table), e))?;
        self.execute(
            "advancing the watermark",
            Some(&table),
            &format!(
                "INSERT INTO {table} (destination, seq, written_at, lineage) VALUES ({}, {}, now(), {})",
                literal(destination),
                batch.last_seq,
                literal(&self.lineage.map(|l| l.to_string()).unwrap_or_default())
            ),
        )
        .await?;
        self.watermark = Some(batch.last_seq);
        Ok(())
    }

    /// Writes `batch` without reading or moving the watermark (`pgfanout replay`): older
    /// versions lose to newer ones under `FINAL`, so history can be re-applied at any time.
    pub async fn replay(
        &mut self,
        destination: &str,
        batch: &Batch<'_>,
    ) -> Result<(), ClickHouseError> {
        self.write(destination, batch).await
    }

    async fn write(&self, destination: &str, batch: &Batch<'_>) -> Result<(), ClickHouseError> {
        let plans = self.plan(destination, batch)?;
        let mut inserted = false;
        for (ti, plan) in plans.iter().enumerate() {
            if plan.rows.is_empty() {
                continue;
            }
            let t = &self.tables[ti];
            if inserted {
                // Between two tables' inserts of one batch.
                failpoint::hit(failpoint::CH_MID_BATCH)
                    .map_err(|e| io_error("inserting the batch", Some(&t.label), e))?;
            }
            let current = self.current_values(t, plan, true).await?;
            let body = self.encode(destination, t, plan, &current)?;
            // Server errors cannot point at a row: they name the seqs the insert held.
            let seqs = plan.rows.iter().map(|r| r.seq);
            let (first, last) = (seqs.clone().min(), seqs.max());
            let what = match (first, last) {
                (Some(a), Some(b)) if a != b => format!("inserting seq {a} to {b}"),
                (Some(a), _) => format!("inserting seq {a}"),
                _ => "inserting the batch".to_owned(),
            };
            self.insert(&what, t, body).await?;
            inserted = true;
            debug!(destination, table = %t.label, rows = plan.rows.len(), "inserted");
        }
        for (ti, seq) in batch.last_truncates() {
            let t = self.table(destination, ti)?;
            self.execute(
                "hiding the rows of a truncated table",
                Some(&t.label),
                &t.ddl.truncate(seq),
            )
            .await?;
        }
        Ok(())
    }

    /// The ops of `batch` (indexes into its ops) whose unchanged cells ClickHouse holds no copy
    /// of, so that writing them would leave those columns NULL (or the type's default): upserts
    /// that still carry [`Cell::Unchanged`] once collapsed with the batch's earlier ops of their
    /// key, whose row (at the old key for a key change) is not live in ClickHouse, or whose key
    /// the batch deleted before. Reads only the keys, one query per table with such upserts.
    pub async fn unknown_unchanged(
        &self,
        destination: &str,
        batch: &Batch<'_>,
    ) -> Result<Vec<usize>, ClickHouseError> {
        let plans = self.plan(destination, batch)?;
        let mut unknown = Vec::new();
        for (ti, plan) in plans.iter().enumerate() {
            let partial = |row: &PlannedRow<'_, '_>| matches!(&row.op, PlannedOp::Upsert(c) if c.iter().any(|c| matches!(c, Cell::Unchanged)));
            if !plan.rows.iter().any(partial) {
                continue;
            }
            let live = self.current_values(&self.tables[ti], plan, false).await?;
            unknown.extend(
                plan.rows
                    .iter()
                    .enumerate()
                    .filter(|(i, row)| partial(row) && (row.after_delete || !live.contains_key(i)))
                    .map(|(_, row)| row.index),
            );
        }
        unknown.sort_unstable();
        Ok(unknown)
    }

    fn table(&self, destination: &str, ti: usize) -> Result<&Table, ClickHouseError> {
        self.tables
            .get(ti)
            .ok_or_else(|| ClickHouseError::InvalidBatch {
                destination: destination.to_owned(),
                table: format!("#{ti}"),
                reason: format!(
                    "table index {ti} out of range ({} tables)",
                    self.tables.len()
                ),
            })
    }

    async fn insert(&self, what: &str, t: &Table, body: Body) -> Result<(), ClickHouseError> {
        let mut insert = self
            .client
            .insert_formatted_with(t.insert_sql.clone())
            .with_timeouts(Some(STATEMENT_TIMEOUT), Some(STATEMENT_TIMEOUT));
        for chunk in body.chunks {
            insert
                .send(chunk)
                .await
                .map_err(|e| server_error(what, Some(&t.label), e))?;
        }
        insert
            .end()
            .await
            .map_err(|e| server_error(what, Some(&t.label), e))
    }

    /// Collapses the batch per table and key, in seq order, checking every op against its
    /// table.
    fn plan<'b, 'a>(
        &self,
        destination: &str,
        batch: &'b Batch<'a>,
    ) -> Result<Vec<TablePlan<'b, 'a>>, ClickHouseError> {
        let invalid = |table: &str, reason: String| ClickHouseError::InvalidBatch {
            destination: destination.to_owned(),
            table: table.to_owned(),
            reason,
        };
        let mut plans: Vec<TablePlan<'b, 'a>> =
            self.tables.iter().map(|_| TablePlan::default()).collect();
        // The delete just planned: an upsert under the same seq may be the same row at a new key.
        let mut moved_from: Option<MovedFrom<'b, 'a>> = None;
        // Collapsing per key only saves rows (FINAL keeps the last version anyway), so it is
        // needed only for unchanged cells, which may come from an earlier op of the batch;
        // without them every op is a row of its own, with no key hashed or copied.
        let collapse = batch.ops.iter().any(|(_, op)| {
            matches!(op, RowOp::Upsert { cells, .. } if cells.iter().any(|c| matches!(c, Cell::Unchanged)))
        });
        for (index, (ti, op)) in batch.ops.iter().enumerate() {
            let t = self.table(destination, *ti)?;
            seq_in_batch("change", op.seq(), batch).map_err(|reason| invalid(&t.label, reason))?;
            let plan = &mut plans[*ti];
            let well_formed = match op {
                RowOp::Upsert { cells, .. } => {
                    cells.len() == t.spec.columns.len()
                        && t.key_idx.iter().all(|&i| cells[i].as_str().is_some())
                }
                RowOp::Delete { key, .. } => {
                    key.len() == t.key_idx.len() && key.iter().all(|c| c.as_str().is_some())
                }
            };
            // (An op that is not well formed goes on to be reported below.)
            if !collapse && well_formed {
                plan.rows.push(PlannedRow {
                    seq: op.seq(),
                    index,
                    op: match op {
                        RowOp::Upsert { cells, .. } => PlannedOp::Upsert(Cow::Borrowed(cells)),
                        RowOp::Delete { key, .. } => PlannedOp::Delete(key),
                    },
                    after_delete: false,
                    lookup: None,
                });
                continue;
            }
            let (_, key) =
                checked_key(op, &t.spec, &t.key_idx).map_err(|reason| invalid(&t.label, reason))?;
            let has_unchanged =
                |cells: &[Cell<'_>]| cells.iter().any(|c| matches!(c, Cell::Unchanged));
            let row = match op {
                RowOp::Upsert { seq, cells } => {
                    let earlier = plan.index.get(&key).map(|&i| &plan.rows[i]);
                    let mut row = PlannedRow {
                        seq: *seq,
                        index,
                        op: PlannedOp::Upsert(Cow::Borrowed(cells.as_slice())),
                        after_delete: false,
                        lookup: None,
                    };
                    match (earlier, &moved_from) {
                        _ if !has_unchanged(cells) => {}
                        // The same row earlier in the batch: its values are the current ones.
                        // (Its unchanged cells, if any, come from where the earlier op's do.)
                        (
                            Some(PlannedRow {
                                op: PlannedOp::Upsert(prev),
                                lookup,
                                ..
                            }),
                            _,
                        ) => {
                            row.op = PlannedOp::Upsert(Cow::Owned(fill(cells, prev)));
                            row.lookup = *lookup;
                        }
                        (
                            Some(PlannedRow {
                                op: PlannedOp::Delete(_),
                                ..
                            }),
                            _,
                        ) => {
                            row.after_delete = true;
                        }
                        // A key change (or a move between tenants) deletes the old key under
                        // the same seq first: the values live there.
                        (None, Some(m)) if m.table == *ti && m.seq == *seq => match &m.cells {
                            Some((prev, prev_lookup)) => {
                                row.op = PlannedOp::Upsert(Cow::Owned(fill(cells, prev)));
                                // Cells still unchanged: where the earlier write's come from,
                                // which is the old key's row unless it moved too.
                                row.lookup = prev_lookup.or(Some(m.key));
                            }
                            None => row.lookup = Some(m.key),
                        },
                        (None, _) => {}
                    }
                    moved_from = None;
                    row
                }
                RowOp::Delete { seq, key: old } => {
                    let replaced = plan.index.get(&key).and_then(|&i| match &plan.rows[i] {
                        PlannedRow {
                            op: PlannedOp::Upsert(cells),
                            lookup,
                            ..
                        } => Some((cells.clone(), *lookup)),
                        _ => None,
                    });
                    moved_from = Some(MovedFrom {
                        table: *ti,
                        seq: *seq,
                        key: old,
                        cells: replaced,
                    });
                    PlannedRow {
                        seq: *seq,
                        index,
                        op: PlannedOp::Delete(old),
                        after_delete: false,
                        lookup: None,
                    }
                }
            };
            match plan.index.get(&key) {
                Some(&i) => plan.rows[i] = row,
                None => {
                    plan.index.insert(key, plan.rows.len());
                    plan.rows.push(row);
                }
            }
        }
        Ok(plans)
    }

    /// For upserts with unchanged cells left: the current live values of those columns, as
    /// RowBinary, per row index of the plan.
    /// With `values` false only the keys are read: which rows are live (their values are all
    /// `None`).
    async fn current_values(
        &self,
        t: &Table,
        plan: &TablePlan<'_, '_>,
        values: bool,
    ) -> Result<HashMap<usize, Vec<Option<Bytes>>>, ClickHouseError> {
        let mut out = HashMap::default();
        let wanted: Vec<usize> = plan
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                !r.after_delete
                    && matches!(&r.op, PlannedOp::Upsert(c) if c.iter().any(|c| matches!(c, Cell::Unchanged)))
            })
            .map(|(i, _)| i)
            .collect();
        if wanted.is_empty() {
            return Ok(out);
        }
        // The columns any of these rows leaves unchanged.
        let mut cols: Vec<usize> = Vec::new();
        for &i in wanted.iter().filter(|_| values) {
            if let PlannedOp::Upsert(cells) = &plan.rows[i].op {
                for (c, cell) in cells.iter().enumerate() {
                    if matches!(cell, Cell::Unchanged) && !cols.contains(&c) {
                        cols.push(c);
                    }
                }
            }
        }
        cols.sort_unstable();
        // The key (in key order) whose current row each wanted upsert reads.
        let lookup_key = |i: usize| -> Vec<&str> {
            match (&plan.rows[i].lookup, &plan.rows[i].op) {
                (Some(k), _) => k.iter().filter_map(Cell::as_str).collect(),
                (None, PlannedOp::Upsert(cells)) => t
                    .key_idx
                    .iter()
                    .filter_map(|&ki| cells[ki].as_str())
                    .collect(),
                (None, PlannedOp::Delete(k)) => k.iter().filter_map(Cell::as_str).collect(),
            }
        };
        // Encoded key → row indexes, for matching what comes back.
        let mut by_key: HashMap<Vec<u8>, Vec<usize>> =
            HashMap::with_capacity_and_hasher(wanted.len(), Default::default());
        for &i in &wanted {
            let mut k = Vec::new();
            for (&ki, text) in t.key_idx.iter().zip(lookup_key(i)) {
                // Keys were checked to be text when planning; one that does not encode
                // matches nothing.
                let _ = t.encoders[ki].encode(Some(text.as_bytes()), &mut k);
            }
            by_key.entry(k).or_default().push(i);
        }
        let select: Vec<String> = t
            .key_idx
            .iter()
            .chain(&cols)
            .map(|&c| ident(&t.spec.columns[c].name))
            .collect();
        for chunk in wanted.chunks(LOOKUP_KEYS) {
            let mut conditions = vec![format!("{} = 0", ident(&t.ddl.deleted_column))];
            for (j, &ki) in t.key_idx.iter().enumerate() {
                if !text_matches_to_string(&t.types[ki]) {
                    continue;
                }
                let mut values: Vec<String> = chunk
                    .iter()
                    .filter_map(|&i| lookup_key(i).get(j).map(|k| literal(k)))
                    .collect();
                values.sort_unstable();
                values.dedup();
                conditions.push(format!(
                    "toString({}) IN ({})",
                    ident(&t.spec.columns[ki].name),
                    values.join(", ")
                ));
            }
            let sql = format!(
                "SELECT {} FROM {} FINAL WHERE {}",
                select.join(", "),
                t.label,
                conditions.join(" AND ")
            );
            let data = self
                .fetch(
                    "reading current values of unchanged TOAST columns",
                    Some(&t.label),
                    &sql,
                    "RowBinary",
                )
                .await?;
            let bad = |reason: String| ClickHouseError::Server {
                what: "reading current values of unchanged TOAST columns".into(),
                table: Some(t.label.clone()),
                message: reason,
                code: None,
                transient: false,
            };
            let mut pos = 0;
            while pos < data.len() {
                let start = pos;
                for &ki in &t.key_idx {
                    pos += value_len(&t.types[ki], &data[pos..]).map_err(|e| bad(e.to_string()))?;
                }
                let key = data[start..pos].to_vec();
                let mut values = vec![None; t.spec.columns.len()];
                for &c in &cols {
                    let n = value_len(&t.types[c], &data[pos..]).map_err(|e| bad(e.to_string()))?;
                    values[c] = Some(data.slice(pos..pos + n));
                    pos += n;
                }
                for &i in by_key.get(&key).into_iter().flatten() {
                    out.insert(i, values.clone());
                }
            }
        }
        Ok(out)
    }

    fn encode(
        &self,
        destination: &str,
        t: &Table,
        plan: &TablePlan<'_, '_>,
        current: &HashMap<usize, Vec<Option<Bytes>>>,
    ) -> Result<Body, ClickHouseError> {
        let mut body = Body::default();
        let mut out = Vec::with_capacity(plan.rows.len() * (t.spec.columns.len() * 12 + 9));
        let mut unknown_warned = false;
        for (i, row) in plan.rows.iter().enumerate() {
            let reject = |c: usize, reason: String| {
                ClickHouseError::Rejected(Box::new(RejectedValue {
                    destination: destination.to_owned(),
                    table: t.label.clone(),
                    column: t.spec.columns[c].name.clone(),
                    seq: row.seq,
                    reason,
                }))
            };
            match &row.op {
                PlannedOp::Upsert(cells) => {
                    for (c, cell) in cells.iter().enumerate() {
                        match cell {
                            Cell::Unchanged => match current.get(&i).and_then(|v| v[c].as_ref()) {
                                Some(bytes) => out.extend_from_slice(bytes),
                                None => {
                                    if !unknown_warned {
                                        warn!(destination, table = %t.label, column = %t.spec.columns[c].name, seq = row.seq,
                                            "an unchanged TOAST value is unknown to ClickHouse and the source (the row is gone there; a later delete removes it); writing NULL or the type's default");
                                        unknown_warned = true;
                                    }
                                    t.encoders[c].encode_default(&mut out);
                                }
                            },
                            // A huge value the column takes as it is goes into the body
                            // from the buffer it was decoded from, not copied into `out`.
                            Cell::Shared(text)
                                if t.encoders[c]
                                    .encode_verbatim_prefix(text.bytes().len(), &mut out) =>
                            {
                                body.splice(&mut out, text.bytes().clone());
                            }
                            _ => {
                                let text = cell.as_str();
                                t.encoders[c]
                                    .encode(text.map(str::as_bytes), &mut out)
                                    .map_err(|e| reject(c, e.to_string()))?;
                            }
                        }
                    }
                    out.extend_from_slice(&row.seq.to_le_bytes());
                    out.push(0);
                }
                PlannedOp::Delete(key) => {
                    for c in 0..t.spec.columns.len() {
                        match t.key_idx.iter().position(|&k| k == c) {
                            Some(j) => {
                                let text = key[j].as_str();
                                t.encoders[c]
                                    .encode(text.map(str::as_bytes), &mut out)
                                    .map_err(|e| reject(c, e.to_string()))?;
                            }
                            None => t.encoders[c].encode_default(&mut out),
                        }
                    }
                    out.extend_from_slice(&row.seq.to_le_bytes());
                    out.push(1);
                }
            }
        }
        body.end(out);
        Ok(body)
    }
}

/// An insert's RowBinary, in the order it is sent: encoded rows, and between them the huge
/// values that go as they are, each its own chunk sharing the buffer it came from.
#[derive(Default)]
struct Body {
    chunks: Vec<Bytes>,
}

impl Body {
    /// Ends the chunk being encoded in `out` (its bytes move to the body) and adds `value`.
    fn splice(&mut self, out: &mut Vec<u8>, value: Bytes) {
        self.end(std::mem::take(out));
        if !value.is_empty() {
            self.chunks.push(value);
        }
    }

    /// Adds the last encoded chunk. (Chunks are never empty: an empty one would end the HTTP
    /// body early.)
    fn end(&mut self, out: Vec<u8>) {
        if !out.is_empty() {
            self.chunks.push(Bytes::from(out));
        }
    }
}

#[derive(Default)]
struct TablePlan<'b, 'a> {
    index: HashMap<Vec<&'b str>, usize>,
    rows: Vec<PlannedRow<'b, 'a>>,
}

/// Where an upsert's unchanged cells come from when not its own key's row.
type Lookup<'b, 'a> = Option<&'b [Cell<'a>]>;

/// A delete of the batch, remembered for the upsert that may follow it under the same seq.
struct MovedFrom<'b, 'a> {
    table: usize,
    seq: u64,
    key: &'b [Cell<'a>],
    /// The row's values when the batch wrote it before deleting it, and where its own
    /// unchanged cells come from.
    cells: Option<(Cow<'b, [Cell<'a>]>, Lookup<'b, 'a>)>,
}

/// `cells` with each unchanged cell taken from `from`.
fn fill<'a>(cells: &[Cell<'a>], from: &[Cell<'a>]) -> Vec<Cell<'a>> {
    cells
        .iter()
        .zip(from)
        .map(|(c, f)| {
            if matches!(c, Cell::Unchanged) {
                f.clone()
            } else {
                c.clone()
            }
        })
        .collect()
}

struct PlannedRow<'b, 'a> {
    seq: u64,
    /// Index into the batch's ops of the op this row is (the last one of its key).
    index: usize,
    op: PlannedOp<'b, 'a>,
    /// The key whose current row holds this upsert's unchanged values, when not its own (the
    /// old key of a key change).
    lookup: Option<&'b [Cell<'a>]>,
    /// The batch deleted this key before: ClickHouse's current row is not this row's past.
    after_delete: bool,
}

enum PlannedOp<'b, 'a> {
    Upsert(Cow<'b, [Cell<'a>]>),
    Delete(&'b [Cell<'a>]),
}

/// The PostgreSQL type whose text a column's cells hold.
/// The `ALTER TABLE` actions that bring a table whose columns are `existing` to `next`
/// (`ddl` its DDL; see [`crate::sink::Writer::evolve`]), or the column and why not: a column
/// is added when missing, left when its type holds the new one ([`ChType::accepts`]),
/// modified when the new type holds the old one (a widening) outside the sort key; columns
/// `prev` had and `next` lacks are dropped with `drop_gone`.
fn align_actions(
    label: &str,
    existing: &[(String, String)],
    ddl: &TableDdl,
    prev: &TargetTable,
    next: &TargetTable,
    drop_gone: bool,
) -> Result<Vec<(String, String)>, (String, String)> {
    let mut actions = Vec::new();
    for (c, (name, wanted)) in next.columns.iter().zip(&ddl.columns) {
        let Some((_, have_text)) = existing.iter().find(|(n, _)| n == name) else {
            if ddl.order_by.contains(name) {
                return Err((
                    name.clone(),
                    format!("sort-key column {} does not exist in the table; pgfanout does not change a table's sort key: recreate the table, then run `pgfanout destination resume`", ident(name)),
                ));
            }
            actions.push((
                name.clone(),
                format!("ADD COLUMN {} {}", ident(name), wanted.sql()),
            ));
            continue;
        };
        let have = ChType::parse(have_text);
        if have.as_ref().is_some_and(|h| h.accepts(wanted)) {
            continue;
        }
        if have.is_some_and(|h| wanted.accepts(&h)) && !ddl.order_by.contains(name) {
            actions.push((
                name.clone(),
                format!("MODIFY COLUMN {} {}", ident(name), wanted.sql()),
            ));
            continue;
        }
        let was = prev.columns.iter().find(|p| p.name == c.name);
        let from = was.map_or("?", |p| pg_type_name(&p.ty));
        if ddl.order_by.contains(name) {
            return Err((
                name.clone(),
                format!(
                    "the source column's type changed from {from} to {}, and the column is part of the table's sort key, which ClickHouse cannot change (the column is {have_text}, pgfanout would write {}); recreate the table (and resync the destination), then run `pgfanout destination resume`",
                    pg_type_name(&c.ty),
                    wanted.sql()
                ),
            ));
        }
        return Err((
            name.clone(),
            format!(
                "the source column's type changed from {from} to {}, which is not a widening pgfanout applies (the ClickHouse column is {have_text}, pgfanout would write {}); change the column yourself (ALTER TABLE {label} MODIFY COLUMN {} {}), then run `pgfanout destination resume`",
                pg_type_name(&c.ty),
                wanted.sql(),
                ident(name),
                wanted.sql()
            ),
        ));
    }
    if drop_gone {
        for c in &prev.columns {
            let gone = !next.columns.iter().any(|n| n.name == c.name);
            if gone && existing.iter().any(|(n, _)| *n == c.name) {
                actions.push((c.name.clone(), format!("DROP COLUMN {}", ident(&c.name))));
            }
        }
    }
    Ok(actions)
}

/// A column type's name for messages.
fn pg_type_name(ty: &ColumnType) -> &str {
    match ty {
        ColumnType::Known(t) => t.name(),
        ColumnType::Named(s) => s,
    }
}

fn pg_type(ty: &ColumnType) -> PgType {
    match ty {
        ColumnType::Known(t) => t.clone(),
        // A configured type name: the cells are that type's text, written as a string.
        ColumnType::Named(_) => PgType::Text,
    }
}

/// What is wrong with an existing table's engine for what pgfanout writes: versions collapse
/// only in a `ReplacingMergeTree` whose version is the version column, and only per sort key,
/// which must be the tenant columns and the key (in any order).
fn engine_problems(
    label: &str,
    ddl: &TableDdl,
    engine: &str,
    engine_full: &str,
    sorting_key: &str,
) -> Vec<String> {
    let list = |text: &str| -> Vec<String> {
        text.split(',')
            .map(|c| c.trim().trim_matches('`').to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    };
    let sorted = |text: &str| {
        let mut v = list(text);
        v.sort();
        v
    };
    if !engine.ends_with("ReplacingMergeTree") {
        return vec![format!(
            "{label}: the engine is {engine}, not ReplacingMergeTree; versions and deletes \
             collapse only there (ENGINE = ReplacingMergeTree({}))",
            ident(&ddl.version_column)
        )];
    }
    let mut problems = Vec::new();
    let args = engine_full
        .split_once("ReplacingMergeTree(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(args, _)| list(args))
        .unwrap_or_default();
    // Replicated engines lead with their ZooKeeper path and replica name, quoted.
    let version = args.iter().find(|a| !a.starts_with('\''));
    if version != Some(&ddl.version_column) {
        problems.push(format!(
            "{label}: the table's version column is {}, not {}; rows would not collapse by \
             seq — set version_column to it, or drop the table and let pgfanout create it",
            version.map_or("missing".to_owned(), |v| ident(v)),
            ident(&ddl.version_column)
        ));
    }
    if sorted(sorting_key) != sorted(&ddl.order_by.join(",")) {
        problems.push(format!(
            "{label}: the table is ordered by ({sorting_key}); pgfanout needs ORDER BY ({}) — \
             the tenant columns and the key — or versions of one row do not collapse",
            ddl.order_by
                .iter()
                .map(|c| ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    problems
}

/// Whether `toString(column)` prints exactly the PostgreSQL text of the key, so a lookup can
/// filter on it (otherwise the lookup matches keys on their RowBinary bytes alone).
fn text_matches_to_string(ty: &ChType) -> bool {
    match ty {
        ChType::Int16
        | ChType::Int32
        | ChType::Int64
        | ChType::UInt64
        | ChType::String
        | ChType::Uuid
        | ChType::Date => true,
        ChType::LowCardinality(inner) => text_matches_to_string(inner),
        _ => false,
    }
}

/// Rows of a TabSeparated answer, unescaped.
fn tsv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| line.split('\t').map(unescape_tsv).collect())
        .collect()
}

fn unescape_tsv(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_follows_its_mapping_by_adding_widening_and_dropping_but_never_its_sort_key() {
        use crate::sink::{TargetColumn, TargetTable};
        let col = |n: &str, t: PgType, nullable: bool| TargetColumn::new(n, t, nullable);
        let table = |cols: Vec<TargetColumn>| TargetTable::new("db", "t", cols, vec!["id".into()]);
        let prev = table(vec![
            col("id", PgType::Int4, false),
            col("a", PgType::Int4, true),
            col("gone", PgType::Text, true),
        ]);
        let next = table(vec![
            col("id", PgType::Int4, false),
            col("a", PgType::Int8, true),
            col("b", PgType::Text, true),
        ]);
        let ddl = |t: &TargetTable| TableDdl {
            database: "db".into(),
            name: "t".into(),
            columns: t
                .columns
                .iter()
                .map(|c| {
                    let ty = pg_type(&c.ty);
                    let ch = target_type(&ty, None, c.nullable, ServerVersion::new(23, 8));
                    (c.name.clone(), ch)
                })
                .collect(),
            order_by: vec!["id".into()],
            version_column: "_seq".into(),
            deleted_column: "_is_deleted".into(),
        };
        let existing: Vec<(String, String)> = [
            ("id", "Int32"),
            ("a", "Nullable(Int32)"),
            ("gone", "Nullable(String)"),
        ]
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
        let actions = |drop_gone| {
            align_actions("`db`.`t`", &existing, &ddl(&next), &prev, &next, drop_gone)
                .unwrap()
                .into_iter()
                .map(|(_, a)| a)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            actions(false),
            [
                "MODIFY COLUMN `a` Nullable(Int64)",
                "ADD COLUMN `b` Nullable(String)"
            ]
        );
        assert_eq!(actions(true).last().unwrap(), "DROP COLUMN `gone`");
        // Replaying older changes into the widened table changes nothing.
        let widened: Vec<(String, String)> = [("id", "Int32"), ("a", "Nullable(Int64)")]
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        let old = table(vec![
            col("id", PgType::Int4, false),
            col("a", PgType::Int4, true),
        ]);
        assert_eq!(
            align_actions("`db`.`t`", &widened, &ddl(&old), &old, &old, false),
            Ok(vec![])
        );
        // The sort key and anything but a widening are refused, naming the column and types.
        let key_widened = table(vec![
            col("id", PgType::Int8, false),
            col("a", PgType::Int8, true),
        ]);
        let (column, reason) = align_actions(
            "`db`.`t`",
            &existing,
            &ddl(&key_widened),
            &prev,
            &key_widened,
            false,
        )
        .unwrap_err();
        assert_eq!(column, "id");
        assert!(
            reason.contains("int4 to int8") && reason.contains("sort key"),
            "{reason}"
        );
        let to_text = table(vec![
            col("id", PgType::Int4, false),
            col("a", PgType::Text, true),
        ]);
        let (column, reason) = align_actions(
            "`db`.`t`",
            &existing,
            &ddl(&to_text),
            &prev,
            &to_text,
            false,
        )
        .unwrap_err();
        assert_eq!(column, "a");
        assert!(
            reason.contains("int4 to text") && reason.contains("Nullable(Int32)"),
            "{reason}"
        );
    }

    #[test]
    fn tsv_unescapes_what_clickhouse_escapes() {
        assert_eq!(
            tsv_rows("a\\tb\tString\nx\\\\y\tNullable(UInt8)\n"),
            [
                vec!["a\tb".to_owned(), "String".to_owned()],
                vec!["x\\y".to_owned(), "Nullable(UInt8)".to_owned()]
            ]
        );
    }

    #[test]
    fn engines_are_checked_for_version_and_sort_key() {
        let ddl = TableDdl {
            database: "d".into(),
            name: "t".into(),
            columns: vec![],
            order_by: vec!["project_id".into(), "id".into()],
            version_column: "v".into(),
            deleted_column: "del".into(),
        };
        let check =
            |engine: &str, full: &str, key: &str| engine_problems("d.t", &ddl, engine, full, key);
        assert!(check(
            "ReplacingMergeTree",
            "ReplacingMergeTree(v) ORDER BY (project_id, id)",
            "project_id, id"
        )
        .is_empty());
        assert!(check(
            "ReplacingMergeTree",
            "ReplacingMergeTree(v, del) ORDER BY (id, project_id)",
            "id, project_id"
        )
        .is_empty());
        assert!(check(
            "ReplicatedReplacingMergeTree",
            "ReplicatedReplacingMergeTree('/ch/{shard}/t', '{replica}', v) ORDER BY (project_id, id)",
            "project_id, id"
        )
        .is_empty());
        let p = check("MergeTree", "MergeTree ORDER BY id", "id");
        assert!(p[0].contains("not ReplacingMergeTree"), "{p:?}");
        let p = check(
            "ReplacingMergeTree",
            "ReplacingMergeTree(w) ORDER BY id",
            "id",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("version column is `w`, not `v`"), "{p:?}");
        assert!(p[1].contains("ordered by (id)"), "{p:?}");
        let p = check(
            "ReplacingMergeTree",
            "ReplacingMergeTree ORDER BY id",
            "project_id, id",
        );
        assert!(p[0].contains("version column is missing"), "{p:?}");
    }
}
