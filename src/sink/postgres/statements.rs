//! The statements each target table is written with, as text (see the diagram in `mod.rs`).

use tokio_postgres::Statement;

use crate::sink::{TargetTable, DELETED_COLUMN};
use crate::sql::quote_ident;
use crate::sql::QualifiedName;

pub(super) struct Sql {
    pub(super) upsert: String,
    pub(super) missing: String,
    pub(super) keep: Option<String>,
    pub(super) carry: Option<String>,
    pub(super) delete: String,
    pub(super) truncate: String,
}

/// The four per-table statements (see the module comment). Parameter order: upsert — one
/// text[] per column, then seqs; keep — one text[] per column, one bool[] per non-key column,
/// then seqs; delete — one text[] per key column, then seqs; truncate — the truncate's seq.
pub(super) fn statements(t: &TargetTable, key_idx: &[usize], casts: &[String]) -> Sql {
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

    // missing: which of these keys have no live row (nothing to keep unchanged values from)
    let k = key_idx.len();
    let missing = {
        let mut params: Vec<String> = (1..=k).map(|p| format!("${p}::text[]")).collect();
        params.push(format!("${}::int4[]", k + 1));
        let mut names: Vec<String> = (0..k).map(|j| format!("m{j}")).collect();
        names.push("i".into());
        let live = if t.soft_delete {
            format!(" AND NOT t.{del}")
        } else {
            String::new()
        };
        format!(
            "SELECT u.i FROM unnest({}) AS u({})              WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {}{live})",
            params.join(", "),
            names.join(", "),
            key_match(&|j| format!("u.m{j}"))
        )
    };

    // delete
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
        missing,
        keep,
        carry,
        delete,
        truncate,
    }
}

/// A validated table with its prepared statements.
pub(super) struct Prepared {
    pub(super) spec: TargetTable,
    pub(super) name: QualifiedName,
    /// Column indexes of the key columns, in key order.
    pub(super) key_idx: Vec<usize>,
    /// Per column, the type to cast text to, as `format_type` spells the catalog's type.
    pub(super) casts: Vec<String>,
    pub(super) upsert: Statement,
    /// The indexes of the given keys that have no live row: `$1..$k` text[] per key column,
    /// `$k+1` int4[] of indexes.
    pub(super) missing: Statement,
    /// None when every column is a key column (nothing can be unchanged).
    pub(super) keep: Option<Statement>,
    /// Like `keep`, for rows whose key changed; None alike.
    pub(super) carry: Option<Statement>,
    pub(super) delete: Statement,
    pub(super) truncate: Statement,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::TargetColumn;
    use crate::value::PgType;

    #[test]
    fn statements_quote_every_identifier() {
        let t = TargetTable {
            soft_delete: true,
            ..TargetTable::new(
                "s\"; x",
                "t;",
                vec![
                    TargetColumn::new("id", PgType::Int8, false),
                    TargetColumn::new("a\"b", PgType::Text, true),
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
