//! The snapshot's SQL: a table's chunk key, its watermarks, and one chunk read.
//!
//! Values are read through the simple query protocol, whose results are the types' text
//! output: exactly what pgoutput sends for the same columns under the same output settings
//! (`catalog::OUTPUT_SETTINGS`), so a chunk row and a streamed row of one key agree byte for
//! byte (see `catalog::tenants` for why a `::text` cast would not do).

use bytes::Bytes;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::window::XidSnapshot;
use crate::change::{Datum, Relation, Tuple};
use crate::source::catalog::{query_error, CatalogError, OUTPUT_SETTINGS};
use crate::sql::{quote_ident, quote_literal, QualifiedName};

/// Sets up a snapshot connection. Its watermark commits wait for their WAL flush whatever the
/// server's default: the walsender sends only flushed WAL, so with `synchronous_commit = off`
/// each watermark would wait for the WAL writer (up to `wal_writer_delay`, 200 ms by default)
/// before the stream could see it.
pub async fn prepare_session(client: &Client) -> Result<(), CatalogError> {
    client
        .batch_execute("SET synchronous_commit = on")
        .await
        .map_err(|e| query_error("setting up", "a snapshot connection".to_owned(), e))
}

/// The prefix of the snapshot's logical messages.
pub const PREFIX: &str = "pgfanout_snapshot";

/// The key a table is read in chunks by: its columns in index order, and their SQL types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableKey {
    pub columns: Vec<String>,
    pub types: Vec<String>,
}

/// The primary key, else the replica identity index: unique, immediate, not partial, on
/// plain columns.
const KEY_QUERY: &str = "\
SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM (SELECT i.indexrelid, i.indrelid, i.indkey, i.indnkeyatts
      FROM pg_catalog.pg_index i
      WHERE i.indrelid = $1::oid AND (i.indisprimary OR i.indisreplident)
        AND i.indisunique AND i.indimmediate AND i.indisvalid AND i.indislive
        AND i.indpred IS NULL AND i.indexprs IS NULL
      ORDER BY i.indisprimary DESC LIMIT 1) i,
     pg_catalog.generate_series(0, i.indnkeyatts - 1) AS k(pos)
JOIN pg_catalog.pg_attribute a ON a.attrelid = $1::oid
WHERE a.attnum = i.indkey[k.pos]
ORDER BY k.pos";

pub async fn table_key(
    client: &Client,
    table: &Relation,
) -> Result<Option<TableKey>, CatalogError> {
    let name = format!("{}.{}", table.schema, table.name);
    let rows = client
        .query(KEY_QUERY, &[&table.oid])
        .await
        .map_err(|e| query_error("reading the primary key of", name.clone(), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut key = TableKey {
        columns: Vec::with_capacity(rows.len()),
        types: Vec::with_capacity(rows.len()),
    };
    for r in &rows {
        let err = |e| query_error("reading the primary key of", name.clone(), e);
        key.columns.push(r.try_get(0).map_err(err)?);
        key.types.push(r.try_get(1).map_err(err)?);
    }
    Ok(Some(key))
}

/// About how many rows `table` has: the planner's estimate (`pg_class.reltuples`) once the
/// table was analyzed; before that, an exact count below 1 GiB of table and a 1% block sample
/// above.
pub async fn estimated_rows(client: &Client, table: &Relation) -> Result<u64, CatalogError> {
    let name = QualifiedName {
        schema: table.schema.clone(),
        name: table.name.clone(),
    };
    let err = |e| query_error("estimating the rows of", name.to_string(), e);
    let row = client
        .query_one(
            "SELECT reltuples::float8, pg_catalog.pg_relation_size(oid) FROM pg_catalog.pg_class WHERE oid = $1::oid",
            &[&table.oid],
        )
        .await
        .map_err(err)?;
    let (tuples, bytes): (f64, i64) = (row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?);
    if tuples >= 0.0 {
        return Ok(tuples as u64);
    }
    let (sample, factor) = if bytes < 1 << 30 {
        ("", 1)
    } else {
        (" TABLESAMPLE SYSTEM (1)", 100)
    };
    let row = client
        .query_one(
            &format!("SELECT count(*) FROM {}{sample}", name.quoted()),
            &[],
        )
        .await
        .map_err(err)?;
    let n: i64 = row.try_get(0).map_err(err)?;
    Ok(u64::try_from(n).unwrap_or(0) * factor)
}

/// Keys that cut `table` (about `rows` rows) into `ranges` ranges of about equal size, from a
/// block sample, in key order: the upper bound of each range but the last. Fewer when the
/// sample has fewer distinct keys.
pub async fn split_points(
    client: &Client,
    table: &Relation,
    key: &TableKey,
    rows: u64,
    ranges: usize,
) -> Result<Vec<Vec<String>>, CatalogError> {
    const SAMPLE_ROWS: f64 = 20_000.0;
    let name = QualifiedName {
        schema: table.schema.clone(),
        name: table.name.clone(),
    };
    let err = |e| query_error("sampling the keys of", name.to_string(), e);
    let percent = (100.0 * SAMPLE_ROWS / rows.max(1) as f64).clamp(0.001, 100.0);
    let key_list = key
        .columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let messages = client
        .simple_query(&format!(
            "BEGIN READ ONLY; {OUTPUT_SETTINGS} \
             SELECT {key_list} FROM {} TABLESAMPLE SYSTEM ({percent}) ORDER BY {key_list}; COMMIT",
            name.quoted()
        ))
        .await
        .map_err(err)?;
    let sample: Vec<Vec<String>> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..key.columns.len())
                    .map(|i| r.get(i).unwrap_or_default().to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    let mut points: Vec<Vec<String>> = (1..ranges)
        .filter_map(|i| sample.get(sample.len() * i / ranges).cloned())
        .collect();
    points.dedup();
    Ok(points)
}

/// A watermark message: `L <chunk> <snapshot>` (low, with the snapshot taken just before it
/// commits), `H <chunk>` (high), `D <token>` (a table is done). Transactional: the stream
/// delivers it at its commit, in commit order with everything else.
pub async fn emit(client: &Client, kind: char, id: u64) -> Result<(), CatalogError> {
    let body = match kind {
        'L' => format!("'L {id} ' || pg_catalog.pg_current_snapshot()::text"),
        _ => quote_literal(&format!("{kind} {id}")),
    };
    client
        .batch_execute(&format!(
            "SELECT pg_catalog.pg_logical_emit_message(true, {}, {body})",
            quote_literal(PREFIX)
        ))
        .await
        .map_err(|e| query_error("writing a snapshot watermark into", "the WAL".to_owned(), e))
}

/// A watermark the stream carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watermark {
    Low { chunk: u64, snapshot: XidSnapshot },
    High { chunk: u64 },
    Done { token: u64 },
}

impl Watermark {
    /// `None` for anything malformed (not ours, or damaged): ignored, the chunk is read again.
    pub fn parse(content: &[u8]) -> Option<Watermark> {
        let text = std::str::from_utf8(content).ok()?;
        let mut parts = text.splitn(3, ' ');
        let kind = parts.next()?;
        let id: u64 = parts.next()?.parse().ok()?;
        match (kind, parts.next()) {
            ("L", Some(s)) => Some(Watermark::Low {
                chunk: id,
                snapshot: XidSnapshot::parse(s)?,
            }),
            ("H", None) => Some(Watermark::High { chunk: id }),
            ("D", None) => Some(Watermark::Done { token: id }),
            _ => None,
        }
    }
}

/// One chunk as read.
#[derive(Debug, Default)]
pub struct Chunk {
    pub rows: Vec<Tuple>,
    /// The snapshot the chunk was read under.
    pub snapshot: XidSnapshot,
    /// The key of the last row read (the next chunk starts after it).
    pub last_key: Option<Vec<String>>,
    /// No row is left in the range after this chunk.
    pub exhausted: bool,
    pub bytes: usize,
}

/// Rows fetched per round trip while filling a chunk.
const FETCH: usize = 1_000;

/// Only the rows whose `column` holds one of `values` (a snapshot of some tenants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlyTenants {
    pub column: String,
    pub values: Vec<String>,
}

/// Reads the rows of `table` with key in `(after, upto]` (and of `only`'s tenants), in key
/// order, until `max_rows` or `max_bytes` (the row that passes it is the chunk's last), in one
/// read-only transaction.
pub async fn read_chunk(
    client: &Client,
    table: &Relation,
    key: &TableKey,
    (after, upto): (Option<&[String]>, Option<&[String]>),
    only: Option<&OnlyTenants>,
    (max_rows, max_bytes): (usize, usize),
) -> Result<Chunk, CatalogError> {
    let name = QualifiedName {
        schema: table.schema.clone(),
        name: table.name.clone(),
    };
    let object = name.to_string();
    let err = |e| query_error("reading a snapshot chunk of", object.clone(), e);
    let columns = table
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let key_list = key
        .columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let literal = |values: &[String]| {
        values
            .iter()
            .zip(&key.types)
            .map(|(v, t)| format!("{}::{t}", quote_literal(v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut bounds = Vec::new();
    if let Some(a) = after {
        bounds.push(format!("({key_list}) > ({})", literal(a)));
    }
    if let Some(u) = upto {
        bounds.push(format!("({key_list}) <= ({})", literal(u)));
    }
    if let Some(o) = only {
        // Untyped literals take the column's type, as the tenant ids' text does in pgoutput.
        let values: Vec<String> = o.values.iter().map(|v| quote_literal(v)).collect();
        bounds.push(format!(
            "{} IN ({})",
            quote_ident(&o.column),
            values.join(", ")
        ));
    }
    let filter = if bounds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", bounds.join(" AND "))
    };
    let key_pos: Vec<usize> = key
        .columns
        .iter()
        .filter_map(|k| table.columns.iter().position(|c| &c.name == k))
        .collect();
    let opened = client
        .simple_query(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {OUTPUT_SETTINGS} \
             SELECT pg_catalog.pg_current_snapshot()::text; \
             DECLARE pgfanout_chunk NO SCROLL CURSOR FOR SELECT {columns} FROM {}{filter} ORDER BY {key_list}",
            name.quoted()
        ))
        .await;
    let mut chunk = Chunk::default();
    let result = async {
        for m in opened.map_err(err)? {
            if let SimpleQueryMessage::Row(r) = m {
                chunk.snapshot =
                    r.get(0)
                        .and_then(XidSnapshot::parse)
                        .ok_or_else(|| CatalogError::Query {
                            action: "reading the snapshot of",
                            object: object.clone(),
                            message: "pg_current_snapshot() returned an unexpected value".into(),
                            code: None,
                            transient: false,
                        })?;
            }
        }
        loop {
            let want = FETCH.min(max_rows - chunk.rows.len());
            let fetched = client
                .simple_query(&format!("FETCH FORWARD {want} FROM pgfanout_chunk"))
                .await
                .map_err(err)?;
            let mut got = 0;
            for m in fetched {
                let SimpleQueryMessage::Row(r) = m else {
                    continue;
                };
                got += 1;
                let mut values = Vec::with_capacity(table.columns.len());
                for i in 0..table.columns.len() {
                    values.push(match r.get(i) {
                        Some(v) => {
                            chunk.bytes += v.len();
                            Datum::Text(Bytes::copy_from_slice(v.as_bytes()))
                        }
                        None => Datum::Null,
                    });
                }
                chunk.rows.push(Tuple(values));
            }
            if got < want {
                chunk.exhausted = true;
                break;
            }
            if chunk.rows.len() >= max_rows || chunk.bytes >= max_bytes {
                break;
            }
        }
        client.batch_execute("COMMIT").await.map_err(err)?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(e);
    }
    chunk.last_key = chunk.rows.last().map(|t| {
        key_pos
            .iter()
            .map(|&p| match t.0.get(p) {
                Some(Datum::Text(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect()
    });
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_parse_and_anything_else_is_ignored() {
        assert_eq!(
            Watermark::parse(b"H 42"),
            Some(Watermark::High { chunk: 42 })
        );
        assert_eq!(Watermark::parse(b"D 7"), Some(Watermark::Done { token: 7 }));
        match Watermark::parse(b"L 3 10:14:11,12") {
            Some(Watermark::Low { chunk: 3, snapshot }) => {
                assert_eq!(snapshot.xmax, 14);
                assert!(snapshot.xip.contains(&11) && snapshot.xip.contains(&12));
            }
            other => panic!("{other:?}"),
        }
        for bad in [&b""[..], b"H", b"H x", b"L 3", b"X 1", b"H 1 2", b"\xff"] {
            assert_eq!(Watermark::parse(bad), None, "{bad:?}");
        }
    }
}
