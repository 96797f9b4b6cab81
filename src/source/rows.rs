//! Current values of a source table's rows, read by key over an ordinary SQL connection: what
//! the fan-out reads when an update left a large (TOASTed) value unchanged, so pgoutput did
//! not send it, and no destination copy of it is known (`fanout::toast`).
//!
//! Values come back in PostgreSQL's text output, through the simple query protocol, under the
//! replication session's output settings ([`super::catalog`]'s `OUTPUT_SETTINGS`): byte for
//! byte what pgoutput sends for the same value (a `::text` cast would not do: `true::text` is
//! `true` where the output function gives `t`). Keys are compared as literals of the change's
//! own text, which PostgreSQL reads back as the column's type. Names and values are quoted
//! with [`crate::sql`]; errors name the table, never a value.

use std::collections::HashMap;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::catalog::{query_error, CatalogError, OUTPUT_SETTINGS};
use crate::change::{Relation, ReplicaIdentity};
use crate::sql::{quote_ident, quote_literal, QualifiedName};

/// Keys per statement: bounds the statement's size, whatever the batch's.
const KEYS_PER_QUERY: usize = 500;

const READING: &str = "reading current values of unchanged TOAST columns of";

/// Which columns of `rel` find one row: the replica identity's when it is the primary key or
/// an index (those are the columns every change carries); for REPLICA IDENTITY FULL or
/// NOTHING — where every column or none is the identity — the primary key, else a unique,
/// immediate, non-partial index over NOT NULL plain columns. `None` when the table has none.
pub async fn row_key(client: &Client, rel: &Relation) -> Result<Option<Vec<usize>>, CatalogError> {
    if matches!(
        rel.replica_identity,
        ReplicaIdentity::Default | ReplicaIdentity::Index
    ) {
        let key: Vec<usize> = (0..rel.columns.len())
            .filter(|&i| rel.columns[i].is_key)
            .collect();
        return Ok((!key.is_empty()).then_some(key));
    }
    let table = QualifiedName::new(&rel.schema, &rel.name).to_string();
    let row = client
        .query_opt(
            "SELECT array_agg(a.attname::text ORDER BY k.n) \
               FROM pg_index i \
               CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
              WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate \
                AND i.indpred IS NULL AND i.indexprs IS NULL AND k.n <= i.indnkeyatts \
              GROUP BY i.indexrelid, i.indisprimary \
             HAVING bool_and(a.attnotnull) \
              ORDER BY i.indisprimary DESC, count(*), i.indexrelid \
              LIMIT 1",
            &[&rel.oid],
        )
        .await
        .map_err(|e| query_error("reading the unique indexes of", table, e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let names: Vec<String> = row.get(0);
    let key: Option<Vec<usize>> = names
        .iter()
        .map(|n| rel.columns.iter().position(|c| &c.name == n))
        .collect();
    Ok(key.filter(|k| !k.is_empty()))
}

/// A row's key texts (in `key` order) → the texts of `columns` (in that order; `None`: NULL).
pub type CurrentValues = HashMap<Vec<String>, Vec<Option<String>>>;

/// The current values of `columns` of the rows of `rel` whose `key` columns have the texts in
/// `keys` (one text per key column each): set-based, `KEYS_PER_QUERY` keys per statement. A
/// row that no longer exists is simply absent.
pub async fn current_values(
    client: &Client,
    rel: &Relation,
    key: &[usize],
    columns: &[usize],
    keys: &[Vec<&str>],
) -> Result<CurrentValues, CatalogError> {
    let table = QualifiedName::new(&rel.schema, &rel.name);
    let name = |i: usize| quote_ident(&rel.columns[i].name);
    let select: Vec<String> = key.iter().chain(columns).map(|&i| name(i)).collect();
    let key_list = key.iter().map(|&i| name(i)).collect::<Vec<_>>().join(", ");
    let mut out = CurrentValues::with_capacity(keys.len());
    for chunk in keys.chunks(KEYS_PER_QUERY) {
        let tuples: Vec<String> = chunk
            .iter()
            .map(|k| {
                let literals: Vec<String> = k.iter().map(|t| quote_literal(t)).collect();
                format!("({})", literals.join(", "))
            })
            .collect();
        // One simple-query string is one implicit transaction: the settings hold for this
        // query alone.
        let sql = format!(
            "{OUTPUT_SETTINGS}\nSELECT {} FROM {} WHERE ({key_list}) IN ({})",
            select.join(", "),
            table.quoted(),
            tuples.join(", ")
        );
        let messages = client
            .simple_query(&sql)
            .await
            .map_err(|e| query_error(READING, table.to_string(), e))?;
        for message in messages {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let err = |e| query_error(READING, table.to_string(), e);
            // (A key column is never NULL in a row found by it.)
            let mut k = Vec::with_capacity(key.len());
            for j in 0..key.len() {
                k.push(row.try_get(j).map_err(err)?.unwrap_or_default().to_owned());
            }
            let mut values = Vec::with_capacity(columns.len());
            for j in 0..columns.len() {
                values.push(row.try_get(key.len() + j).map_err(err)?.map(str::to_owned));
            }
            out.insert(k, values);
        }
    }
    Ok(out)
}
