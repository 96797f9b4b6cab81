//! What a destination table looks like: its columns and their types, its key, the version
//! column and how deletes land. Plain data shared by the configuration (which names the
//! columns), the fan-out (which plans the tables) and the sinks (which create and check them);
//! it imports no stage.

use crate::sql::QualifiedName;
use crate::value::PgType;

/// Default name of the row-version column.
pub const DEFAULT_VERSION_COLUMN: &str = "_seq";
/// The soft-delete marker column (`boolean NOT NULL DEFAULT false`).
pub const DELETED_COLUMN: &str = "_deleted";
/// ClickHouse destinations: the deleted-flag column (`UInt8`, 1 = deleted) unless configured.
pub const DEFAULT_DELETED_COLUMN: &str = "_is_deleted";
/// The per-destination watermark table, in the destination's schema.
pub const WATERMARK_TABLE: &str = "_pgfanout_watermarks";

/// A target column's type: one [`PgType`] pgfanout knows, or a SQL type name written in the
/// configuration (`varchar(20)`, `"My Enum"`, `numeric(12,2)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    Known(PgType),
    /// Checked before use: a single type name, no statement separators or comments.
    Named(String),
}

impl From<PgType> for ColumnType {
    fn from(t: PgType) -> Self {
        ColumnType::Known(t)
    }
}

/// One column of a target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    /// The source column's type modifier when the column is a plain copy of one (numeric
    /// precision and scale, for ClickHouse's Decimal); `None` otherwise.
    pub typmod: Option<i32>,
}

impl TargetColumn {
    pub fn new(name: impl Into<String>, ty: impl Into<ColumnType>, nullable: bool) -> Self {
        TargetColumn {
            name: name.into(),
            ty: ty.into(),
            nullable,
            typmod: None,
        }
    }
}

/// A table a destination writes: its columns in the order of `RowOp::Upsert` cells, the key
/// (a primary or unique key of the target), the version column, and how deletes are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTable {
    pub schema: String,
    pub name: String,
    pub columns: Vec<TargetColumn>,
    /// Key column names, each one of `columns`.
    pub key: Vec<String>,
    /// `bigint NOT NULL`; [`DEFAULT_VERSION_COLUMN`] unless configured.
    pub version_column: String,
    /// Deletes set [`DELETED_COLUMN`] to true (and `_seq`) instead of deleting the row; an
    /// upsert clears it again.
    pub soft_delete: bool,
}

impl TargetTable {
    /// A table with the default version column and hard deletes.
    pub fn new(
        schema: impl Into<String>,
        name: impl Into<String>,
        columns: Vec<TargetColumn>,
        key: Vec<String>,
    ) -> Self {
        TargetTable {
            schema: schema.into(),
            name: name.into(),
            columns,
            key,
            version_column: DEFAULT_VERSION_COLUMN.to_owned(),
            soft_delete: false,
        }
    }

    pub fn qualified_name(&self) -> QualifiedName {
        QualifiedName::new(&self.schema, &self.name)
    }
}

/// What a mapping's target looks like after its source table's description changed: the
/// columns a destination writes from then on (in cell order) and the key. The fan-out sends it
/// to each destination with the mapping, ahead of the first change written with it
/// (`fanout::router`); the destination's writer brings its table to it
/// (`sink::Writer::evolve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// The mapping's name, for messages.
    pub mapping: String,
    pub columns: Vec<TargetColumn>,
    pub key: Vec<String>,
    /// `on_drop_column = "drop"`: a column the previous shape had and this one lacks is
    /// dropped from the target (else it stays, nullable).
    pub drop_gone: bool,
}

impl TargetTable {
    /// This table with `shape`'s columns and key (schema, name, version column and deletes
    /// stay).
    pub fn reshaped(&self, shape: &TableShape) -> TargetTable {
        TargetTable {
            columns: shape.columns.clone(),
            key: shape.key.clone(),
            ..self.clone()
        }
    }
}

/// A known type of a target column as the type change rules see it: its [`PgType`] and type
/// modifier (`None` without one).
fn known(c: &TargetColumn) -> Option<(&PgType, Option<i32>)> {
    match &c.ty {
        ColumnType::Known(t) => Some((t, c.typmod.filter(|&m| m >= 0))),
        ColumnType::Named(_) => None,
    }
}

/// Whether a column of `from`'s type may become `to`'s without changing or losing any value
/// it holds: the type changes pgfanout applies to a target table by itself. The list:
/// `int2` → `int4` → `int8` → `numeric` (one wide enough for its digits: `int2` 5, `int4` 10,
/// `int8` 19 integer digits); `float4` → `float8`; `numeric(p, s)` → `numeric(p2, s2)` with
/// `s2 ≥ s` and `p2 − s2 ≥ p − s`, or to unconstrained `numeric`; `varchar(n)` → `varchar(m)`
/// with `m ≥ n`, or to `text` (text types are one [`PgType`]); arrays when their elements
/// widen; a type to itself. Everything else (narrowing, `int` → `text`, `timestamp` →
/// `timestamptz`, `json` → `jsonb`, configured type names) is not a widening.
pub fn widens(from: &TargetColumn, to: &TargetColumn) -> bool {
    match (known(from), known(to)) {
        (Some((f, fm)), Some((t, tm))) => pg_widens(f, fm, t, tm),
        _ => from.ty == to.ty,
    }
}

/// Whether a target column of type `have` holds every value of type `want` as it is: the
/// same type, or a widening of it (typmods aside: pgfanout creates PostgreSQL targets without
/// them). An older change written into a widened column, say.
pub fn type_holds(have: &PgType, want: &PgType) -> bool {
    pg_widens(want, None, have, None)
}

fn pg_widens(from: &PgType, from_mod: Option<i32>, to: &PgType, to_mod: Option<i32>) -> bool {
    // `numeric(p, s)`'s typmod is ((p << 16) | s) + 4; integer digits p − s.
    let numeric = |m: Option<i32>| {
        m.and_then(|m| m.checked_sub(4))
            .filter(|m| *m >= 0)
            .map(|m| ((m >> 16) & 0xffff, m & 0xffff))
    };
    let int_digits = |t: &PgType| match t {
        PgType::Int2 => Some(5),
        PgType::Int4 => Some(10),
        PgType::Int8 => Some(19),
        _ => None,
    };
    match (from, to) {
        (PgType::Array(f), PgType::Array(t)) => pg_widens(f, from_mod, t, to_mod),
        (PgType::Numeric, PgType::Numeric) => match (numeric(from_mod), numeric(to_mod)) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some((p, s)), Some((p2, s2))) => s2 >= s && p2 - s2 >= p - s,
        },
        // varchar(n)'s typmod is n + 4; none: unbounded.
        (PgType::Text, PgType::Text) => match (from_mod, to_mod) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(n), Some(m)) => m >= n,
        },
        (f, PgType::Numeric) if int_digits(f).is_some() => match numeric(to_mod) {
            None => true,
            Some((p, s)) => int_digits(f).is_some_and(|d| p - s >= d),
        },
        (f, t) if int_digits(f).is_some() && int_digits(t).is_some() => {
            int_digits(f) <= int_digits(t)
        }
        (PgType::Float4, PgType::Float8) => true,
        // Same type, other modifiers (a timestamp's precision): values keep their text form.
        (f, t) => f == t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ty: PgType, typmod: Option<i32>) -> TargetColumn {
        TargetColumn {
            typmod,
            ..TargetColumn::new("c", ty, true)
        }
    }

    #[test]
    fn widening_type_changes_are_listed_and_nothing_else() {
        let num = |p: i32, s: i32| Some(((p << 16) | s) + 4);
        let varchar = |n: i32| Some(n + 4);
        let yes = [
            (col(PgType::Int2, None), col(PgType::Int4, None)),
            (col(PgType::Int4, None), col(PgType::Int8, None)),
            (col(PgType::Int2, None), col(PgType::Int8, None)),
            (col(PgType::Int8, None), col(PgType::Numeric, None)),
            (col(PgType::Int4, None), col(PgType::Numeric, num(12, 2))),
            (col(PgType::Float4, None), col(PgType::Float8, None)),
            (
                col(PgType::Numeric, num(10, 2)),
                col(PgType::Numeric, num(12, 2)),
            ),
            (
                col(PgType::Numeric, num(10, 2)),
                col(PgType::Numeric, num(12, 4)),
            ),
            (col(PgType::Numeric, num(10, 2)), col(PgType::Numeric, None)),
            (
                col(PgType::Text, varchar(10)),
                col(PgType::Text, varchar(20)),
            ),
            (col(PgType::Text, varchar(10)), col(PgType::Text, None)),
            (
                col(PgType::Array(Box::new(PgType::Int4)), None),
                col(PgType::Array(Box::new(PgType::Int8)), None),
            ),
            (col(PgType::Uuid, None), col(PgType::Uuid, None)),
        ];
        for (from, to) in &yes {
            assert!(widens(from, to), "{from:?} -> {to:?}");
        }
        let no = [
            (col(PgType::Int8, None), col(PgType::Int4, None)),
            (col(PgType::Int4, None), col(PgType::Text, None)),
            (col(PgType::Int8, None), col(PgType::Float8, None)),
            (col(PgType::Int8, None), col(PgType::Numeric, num(12, 2))),
            (col(PgType::Float8, None), col(PgType::Float4, None)),
            (
                col(PgType::Numeric, num(12, 2)),
                col(PgType::Numeric, num(12, 3)),
            ),
            (col(PgType::Numeric, None), col(PgType::Numeric, num(38, 2))),
            (
                col(PgType::Text, varchar(20)),
                col(PgType::Text, varchar(10)),
            ),
            (col(PgType::Text, None), col(PgType::Text, varchar(10))),
            (col(PgType::Timestamp, None), col(PgType::TimestampTz, None)),
            (col(PgType::Json, None), col(PgType::Jsonb, None)),
        ];
        for (from, to) in &no {
            assert!(!widens(from, to), "{from:?} -> {to:?}");
        }
    }
}
