//! Target tables as DDL: a specification's problems (every one at once), type names checked
//! before they reach SQL, and `CREATE TABLE`.

use crate::sink::{ColumnType, TargetTable, DELETED_COLUMN};
use crate::sql::{identifier_problem, quote_ident};
use crate::value::PgType;

pub(super) fn check_identifier(problems: &mut Vec<String>, what: &str, name: &str) {
    if let Some(reason) = identifier_problem(name) {
        problems.push(format!("{what} {} {reason}", quote_ident(name)));
    }
}

/// Problems with a table specification that need no server to find.
pub(super) fn check_spec(problems: &mut Vec<String>, t: &TargetTable) {
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

pub(super) fn known_type_has_name(ty: &PgType) -> bool {
    match ty {
        PgType::Enum | PgType::Other => false,
        PgType::Array(elem) => !matches!(**elem, PgType::Enum | PgType::Other | PgType::Array(_)),
        _ => true,
    }
}

/// A configured type name is spliced into DDL, so it must be a type name and nothing else:
/// words, digits, spaces, parentheses holding commas, dots, brackets and double-quoted names.
/// No quotes, semicolons, dashes or slashes outside double quotes, so no comments either.
pub(super) fn check_type_name(sql: &str) -> Result<(), &'static str> {
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

pub(super) fn type_sql(ty: &ColumnType) -> &str {
    match ty {
        ColumnType::Known(t) => t.name(),
        ColumnType::Named(s) => s,
    }
}

pub(super) fn create_table_sql(t: &TargetTable) -> String {
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
}
