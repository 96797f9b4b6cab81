//! Read-only catalog lookups over an ordinary SQL connection, made at start-up so mappings can
//! be compiled before the first change arrives.
//!
//! - [`relation`]: a table as pgoutput (protocol version 1) will describe it in its `Relation`
//!   message: same oid, names, column order, type oids and modifiers, replica-identity flags.
//! - [`types`]: the enum registry, the same as the replication session loads.
//! - [`tenants`]: the rows of the `[tenants].query`, as text, and (given the tenancy table)
//!   which table column each output column reads, so the stream's changes of that table can
//!   keep the registry current ([`crate::fanout::route::TenantRegistry::apply`]).
//!
//! Names are always bound as parameters, never spliced into SQL. Errors name what was being
//! done and the table or `[tenants].query`; they never carry row values (server messages of
//! classes that may quote a value are reduced to their SQLSTATE).

use std::collections::HashMap;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::change::{Column, Relation, ReplicaIdentity};
use crate::disposition::pg_error_is_transient;
use crate::disposition::{sqlstate_message_is_safe, Classify, ErrorKind};
use crate::source::{TypeRegistry, ENUM_TYPES_QUERY};
use crate::sql::QualifiedName;

/// How errors name the tenant query's configuration.
const TENANTS_QUERY: &str = "[tenants].query";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A query failed: `action` on `object` (a table, the enum types, or `[tenants].query`).
    #[error("{action} {object}: {message}")]
    Query {
        action: &'static str,
        object: String,
        /// The server's message, or only its SQLSTATE when the message may quote row values.
        message: String,
        /// The SQLSTATE, when the server reported the error.
        code: Option<String>,
        transient: bool,
    },
    #[error("the catalog describes {table} with replica identity {value:?}, which pgfanout does not know")]
    UnknownReplicaIdentity { table: String, value: char },
    #[error("{TENANTS_QUERY} has no output column named tenant\nHINT: name the tenant id column tenant: SELECT id AS tenant, …")]
    NoTenantColumn,
    #[error("{TENANTS_QUERY} has {count} output columns named {column}; each output column needs its own name")]
    DuplicateColumn { column: String, count: usize },
    #[error("{TENANTS_QUERY} has parameters ($1, …); it must be a query without parameters")]
    Parameters,
    #[error("the tenancy table {table} ([tenants].table) does not exist")]
    TenantTableMissing { table: QualifiedName },
    #[error("output column {column} of {TENANTS_QUERY} is not a plain column of {table}; live updates of the tenant registry need plain columns of [tenants].table (no expressions, generated columns or columns of other tables)")]
    NotPlainColumn {
        column: String,
        table: QualifiedName,
    },
    #[error("{TENANTS_QUERY} returned a NULL tenant id (row {row}); every row needs a tenant")]
    NullTenant { row: usize },
    #[error("{TENANTS_QUERY} returned the same tenant id in rows {first} and {second}; tenant ids must be unique")]
    DuplicateTenant { first: usize, second: usize },
    #[error("{TENANTS_QUERY} returned other columns than it described when prepared (the tables changed meanwhile?); try again")]
    ColumnsChanged,
}

impl Classify for CatalogError {
    /// A lost connection, a server starting up or shutting down, exhausted resources are
    /// transient; a missing table, column or privilege is not.
    fn kind(&self) -> ErrorKind {
        match self {
            CatalogError::Query {
                transient: true, ..
            } => ErrorKind::Transient,
            _ => ErrorKind::Definite,
        }
    }
}

impl CatalogError {
    /// The SQLSTATE of the server error behind this one, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            CatalogError::Query { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

pub(crate) fn query_error(
    action: &'static str,
    object: impl Into<String>,
    e: tokio_postgres::Error,
) -> CatalogError {
    let transient = pg_error_is_transient(&e);
    let code = e.code().map(|c| c.code().to_owned());
    // The message holds what is safe of the driver's error; the error itself is not chained
    // (its text is "db error", and its server message may quote row values).
    let message = match e.as_db_error() {
        Some(db) if sqlstate_message_is_safe(db.code().code()) => {
            crate::pgconn::ServerMessage(db).to_string()
        }
        Some(db) => format!(
            "the server reported SQLSTATE {} (message withheld: it may quote row values)",
            db.code().code()
        ),
        // Not from the server: I/O, a closed connection, a value the driver could not read.
        // tokio-postgres's own text omits the cause, so it is added here.
        None => match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    };
    CatalogError::Query {
        action,
        object: object.into(),
        message,
        code,
        transient,
    }
}

/// One row per column pgoutput sends, in attnum order, each with whether it belongs to the
/// replica identity; one row with NULL columns for a table without any.
///
/// The replica identity follows the server's own choice (relcache's `rd_replidindex`): with
/// DEFAULT the primary key, with INDEX the index marked `indisreplident`, in both cases only
/// when that index is live, valid, unique, immediate and not partial; otherwise no key. Only
/// the index's key columns count, not its INCLUDE columns. FULL marks every column, NOTHING
/// none. Dropped and generated columns are left out: pgoutput v1 does not send them.
const RELATION_QUERY: &str = "\
SELECT c.oid, c.relreplident, a.attnum, a.attname, a.atttypid, a.atttypmod,
       CASE c.relreplident
           WHEN 'f' THEN true
           WHEN 'n' THEN false
           ELSE EXISTS (
               SELECT 1
               FROM pg_catalog.pg_index i,
                    pg_catalog.generate_series(0, i.indnkeyatts - 1) AS k(pos)
               WHERE i.indrelid = c.oid
                 AND i.indislive AND i.indisvalid AND i.indisunique AND i.indimmediate
                 AND i.indpred IS NULL
                 AND CASE c.relreplident WHEN 'd' THEN i.indisprimary ELSE i.indisreplident END
                 AND i.indkey[k.pos] = a.attnum)
       END,
       n.nspname, c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a
       ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
WHERE n.nspname = $1::text::name AND c.relname = $2::text::name AND c.relkind IN ('r', 'p')
ORDER BY a.attnum";

/// A table's relation with the attribute number of each column.
struct TableColumns {
    relation: Relation,
    attnums: Vec<i16>,
}

async fn table_columns(
    client: &Client,
    name: &QualifiedName,
) -> Result<Option<TableColumns>, CatalogError> {
    let action = "reading the catalog entry of table";
    let err = |e| query_error(action, name.to_string(), e);
    let rows = client
        .query(RELATION_QUERY, &[&name.schema, &name.name])
        .await
        .map_err(err)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    // Names are bound as text (a `name` parameter longer than the 63-byte limit is an error)
    // and cast, which truncates: a longer name found another table, not the one asked for.
    let (schema, table): (String, String) = (
        first.try_get(7).map_err(err)?,
        first.try_get(8).map_err(err)?,
    );
    if schema != name.schema || table != name.name {
        return Ok(None);
    }
    let oid: u32 = first.try_get(0).map_err(err)?;
    let ident: i8 = first.try_get(1).map_err(err)?;
    let ident = ident as u8;
    let replica_identity =
        ReplicaIdentity::from_byte(ident).ok_or_else(|| CatalogError::UnknownReplicaIdentity {
            table: name.to_string(),
            value: char::from(ident),
        })?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut attnums = Vec::with_capacity(rows.len());
    for row in &rows {
        // NULL: the table has no columns pgoutput would send.
        let Some(attnum) = row.try_get::<_, Option<i16>>(2).map_err(err)? else {
            continue;
        };
        attnums.push(attnum);
        columns.push(Column {
            name: row.try_get(3).map_err(err)?,
            type_oid: row.try_get(4).map_err(err)?,
            type_modifier: row.try_get(5).map_err(err)?,
            is_key: row.try_get(6).map_err(err)?,
        });
    }
    Ok(Some(TableColumns {
        relation: Relation {
            oid,
            schema,
            name: table,
            replica_identity,
            columns,
        },
        attnums,
    }))
}

/// The table `name` as pgoutput would describe it in a `Relation` message; `None` when no
/// table (ordinary or partitioned) of that name exists.
///
/// What the catalog cannot know: a publication's column list (PostgreSQL 15+) makes pgoutput
/// send fewer columns, and `publish_via_partition_root` makes it describe the partitioned
/// table instead of the partition.
pub async fn relation(
    client: &Client,
    name: &QualifiedName,
) -> Result<Option<Relation>, CatalogError> {
    Ok(table_columns(client, name).await?.map(|t| t.relation))
}

/// The source database's enum types, as [`super::LogicalStream`] loads them at start.
pub async fn types(client: &Client) -> Result<TypeRegistry, CatalogError> {
    let err = |e| query_error("reading", "the enum types (pg_catalog.pg_type)", e);
    let rows = client.query(ENUM_TYPES_QUERY, &[]).await.map_err(err)?;
    let mut enums = Vec::with_capacity(rows.len());
    for row in &rows {
        enums.push((row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?));
    }
    Ok(TypeRegistry::from_enums(enums))
}

/// The output settings the replication session starts with (`Session::startup`), so the text
/// of a value read here is the text pgoutput sends for it, whatever the database's or role's
/// defaults for the catalog connection are.
pub(crate) const OUTPUT_SETTINGS: &str =
    "SET LOCAL DateStyle = 'ISO'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL TimeZone = 'UTC'; SET LOCAL extra_float_digits = 3;";

/// The tenant registry as `[tenants].query` returns it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantSnapshot {
    /// Output column names other than `tenant`, in query order: the `tenant.x` attributes.
    pub attributes: Vec<String>,
    /// (tenant id, attribute values as PostgreSQL text) per row.
    pub rows: Vec<(String, Vec<Option<String>>)>,
    /// When `table` is given: the table column each output column reads — `key_column` for
    /// `tenant`, and one per attribute, in `attributes` order — so live changes of that table
    /// can update the registry.
    pub key_column: Option<String>,
    pub attribute_columns: Vec<String>,
}

/// Runs `query` (the `[tenants].query`) and reads its rows as text. It needs an output column
/// named `tenant` (the tenant id, never NULL, unique); every other output column is an
/// attribute. With `table`, every output column must be a plain column of that table, and the
/// snapshot says which.
///
/// How: the query is prepared first, which parses and plans it without running it, rejects
/// several statements in one text, and describes the output columns with the table oid and
/// attribute number each comes from. It then runs through the simple query protocol, whose
/// values are the types' text output, exactly what pgoutput sends for the same columns (under
/// the same date, time zone, interval and float output settings, set for this query only): a
/// snapshot and later live updates then agree byte for byte. (A `::text` cast would not do:
/// it differs from the output function for some types, `true::text` is `true` where pgoutput
/// sends `t`; and tokio-postgres reads results of the extended protocol only in binary.) The
/// query runs as written, so it should be a SELECT.
pub async fn tenants(
    client: &Client,
    query: &str,
    table: Option<&QualifiedName>,
) -> Result<TenantSnapshot, CatalogError> {
    let statement = client
        .prepare(query)
        .await
        .map_err(|e| query_error("preparing", TENANTS_QUERY, e))?;
    if !statement.params().is_empty() {
        return Err(CatalogError::Parameters);
    }
    let columns = statement.columns();
    let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
    for (i, name) in names.iter().enumerate() {
        let count = names.iter().filter(|n| *n == name).count();
        // Reported once, at the first occurrence.
        if count > 1 && !names[..i].contains(name) {
            return Err(CatalogError::DuplicateColumn {
                column: (*name).to_owned(),
                count,
            });
        }
    }
    let tenant_index = names
        .iter()
        .position(|n| *n == "tenant")
        .ok_or(CatalogError::NoTenantColumn)?;
    let attributes: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != tenant_index)
        .map(|(_, n)| (*n).to_owned())
        .collect();

    // Which table column each output column reads.
    let mut sources: Option<Vec<String>> = None;
    if let Some(table) = table {
        let t = table_columns(client, table).await?.ok_or_else(|| {
            CatalogError::TenantTableMissing {
                table: table.clone(),
            }
        })?;
        let mut read = Vec::with_capacity(columns.len());
        for c in columns {
            let found = match (c.table_oid(), c.column_id()) {
                (Some(oid), Some(attnum)) if oid == t.relation.oid => t
                    .attnums
                    .iter()
                    .position(|&a| a == attnum)
                    .map(|i| t.relation.columns[i].name.clone()),
                _ => None,
            };
            read.push(found.ok_or_else(|| CatalogError::NotPlainColumn {
                column: c.name().to_owned(),
                table: table.clone(),
            })?);
        }
        sources = Some(read);
    }

    // One simple-query string is one implicit transaction: the settings hold for the query
    // alone and the session's own are back afterwards. (Inside a transaction the caller opened
    // they last until that transaction ends.) The query itself is one statement: the prepare
    // above refuses more.
    let messages = client
        .simple_query(&format!("{OUTPUT_SETTINGS}\n{query}"))
        .await
        .map_err(|e| query_error("running", TENANTS_QUERY, e))?;
    let mut rows = Vec::new();
    let mut first_row: HashMap<String, usize> = HashMap::new();
    for message in messages {
        let row = match message {
            SimpleQueryMessage::RowDescription(described) => {
                let same = described.len() == names.len()
                    && described.iter().zip(&names).all(|(d, n)| d.name() == *n);
                if !same {
                    return Err(CatalogError::ColumnsChanged);
                }
                continue;
            }
            SimpleQueryMessage::Row(row) => row,
            _ => continue,
        };
        if row.len() != names.len() {
            return Err(CatalogError::ColumnsChanged);
        }
        let number = rows.len() + 1;
        let err = |e| query_error("reading a row of", TENANTS_QUERY, e);
        let tenant = row
            .try_get(tenant_index)
            .map_err(err)?
            .ok_or(CatalogError::NullTenant { row: number })?
            .to_owned();
        let mut values = Vec::with_capacity(attributes.len());
        for i in (0..names.len()).filter(|&i| i != tenant_index) {
            values.push(row.try_get(i).map_err(err)?.map(str::to_owned));
        }
        if let Some(&first) = first_row.get(&tenant) {
            return Err(CatalogError::DuplicateTenant {
                first,
                second: number,
            });
        }
        first_row.insert(tenant.clone(), number);
        rows.push((tenant, values));
    }

    let (key_column, attribute_columns) = match sources {
        Some(mut read) => {
            let key = read.remove(tenant_index);
            (Some(key), read)
        }
        None => (None, Vec::new()),
    };
    Ok(TenantSnapshot {
        attributes,
        rows,
        key_column,
        attribute_columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_that_may_quote_values_are_withheld() {
        for code in ["42601", "42P01", "08006", "57014", "53300", "0A000"] {
            assert!(sqlstate_message_is_safe(code), "{code}");
        }
        for code in ["22P02", "22003", "23505", "P0001", "XX000", "2F000"] {
            assert!(!sqlstate_message_is_safe(code), "{code}");
        }
    }
}
