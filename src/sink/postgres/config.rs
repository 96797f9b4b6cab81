//! The rules of a PostgreSQL destination's store block (`kind = "postgres"`), checked while
//! the configuration loads (`config::StageRules::store`).

use crate::config::{PostgresStore, StoreSettings};
use crate::sql::identifier_problem;
use crate::target::DELETED_COLUMN;

/// Reports each problem of `store` as `problem(field, message)`.
pub fn check(
    store: &PostgresStore,
    settings: &StoreSettings<'_>,
    problem: &mut dyn FnMut(&str, String),
) {
    if let Some(reason) = identifier_problem(&store.schema) {
        problem("schema", format!("the schema name {reason}"));
    }
    if !store.soft_delete {
        return;
    }
    if settings.version_column == DELETED_COLUMN {
        problem(
            "version_column",
            format!(
                "{:?} is the soft-delete marker column; choose another version column name",
                settings.version_column
            ),
        );
    }
    for m in settings.mappings {
        if m.maps(DELETED_COLUMN) {
            problem(
                "soft_delete",
                format!(
                    "soft deletes add a {DELETED_COLUMN:?} column, but mapping {:?} maps a column of that name; rename it or set soft_delete = false",
                    m.name
                ),
            );
        }
    }
}
