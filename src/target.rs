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
