//! The statements a ClickHouse destination runs besides its inserts: tables, the watermark
//! table, FINAL views, row policies and grants. Pure text, so the forms for servers the tests
//! cannot start (current releases with SQL access control) are covered by unit tests.

use super::types::{ChType, ServerVersion};

/// A name as a ClickHouse identifier: back-quoted, with `\` and `` ` `` escaped, so any name
/// (spaces, quotes, upper case) addresses exactly that object.
pub fn ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('`');
    for c in name.chars() {
        match c {
            '`' => s.push_str("\\`"),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push('`');
    s
}

/// A string literal: single-quoted, with `\` and `'` escaped.
pub fn literal(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('\'');
    for c in text.chars() {
        match c {
            '\'' => s.push_str("\\'"),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// `db`.`name`
pub fn qualified(db: &str, name: &str) -> String {
    format!("{}.{}", ident(db), ident(name))
}

/// A target table as ClickHouse holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDdl {
    pub database: String,
    pub name: String,
    /// The mapped columns, in mapping order.
    pub columns: Vec<(String, ChType)>,
    /// The tenant columns, then the rest of the key: what identifies a row's versions.
    pub order_by: Vec<String>,
    pub version_column: String,
    pub deleted_column: String,
}

impl TableDdl {
    /// `ReplacingMergeTree(version)`, or `ReplacingMergeTree(version, deleted)` where the
    /// server has it (23.2+: merges may then drop deleted rows); either way the deleted flag
    /// is a plain `UInt8` column that queries and views filter on.
    pub fn create(&self, v: ServerVersion) -> String {
        let mut cols: Vec<String> = self
            .columns
            .iter()
            .map(|(n, t)| format!("{} {}", ident(n), t.sql()))
            .collect();
        cols.push(format!("{} UInt64", ident(&self.version_column)));
        cols.push(format!("{} UInt8", ident(&self.deleted_column)));
        let engine = if v.has_is_deleted() {
            format!(
                "ReplacingMergeTree({}, {})",
                ident(&self.version_column),
                ident(&self.deleted_column)
            )
        } else {
            format!("ReplacingMergeTree({})", ident(&self.version_column))
        };
        let order: Vec<String> = self.order_by.iter().map(|c| ident(c)).collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE = {engine} ORDER BY ({})",
            qualified(&self.database, &self.name),
            cols.join(", "),
            order.join(", ")
        )
    }

    /// The insert every batch of this table uses: the mapped columns, version, deleted flag.
    pub fn insert(&self) -> String {
        let mut cols: Vec<String> = self.columns.iter().map(|(n, _)| ident(n)).collect();
        cols.push(ident(&self.version_column));
        cols.push(ident(&self.deleted_column));
        format!(
            "INSERT INTO {} ({}) FORMAT RowBinary",
            qualified(&self.database, &self.name),
            cols.join(", ")
        )
    }

    /// A TRUNCATE of the source at `seq`: every live row older than it gets a newer deleted
    /// version (the sort key columns carry over, the rest take their defaults). Rows written
    /// by later changes keep a higher version and stay.
    pub fn truncate(&self, seq: u64) -> String {
        let keys: Vec<String> = self.order_by.iter().map(|c| ident(c)).collect();
        let keys = keys.join(", ");
        let ver = ident(&self.version_column);
        let del = ident(&self.deleted_column);
        let table = qualified(&self.database, &self.name);
        format!(
            "INSERT INTO {table} ({keys}, {ver}, {del}) SELECT {keys}, toUInt64({seq}), 1 \
             FROM {table} FINAL WHERE {del} = 0 AND {ver} < {seq}"
        )
    }

    /// The view over the live rows: `FINAL`, without deleted rows, without the version and
    /// deleted columns.
    pub fn view(&self, views_database: &str) -> String {
        let cols: Vec<String> = self.columns.iter().map(|(n, _)| ident(n)).collect();
        format!(
            "CREATE VIEW IF NOT EXISTS {} AS SELECT {} FROM {} FINAL WHERE {} = 0",
            qualified(views_database, &self.name),
            cols.join(", "),
            qualified(&self.database, &self.name),
            ident(&self.deleted_column)
        )
    }

    /// The reader's row policies on the table (its views read through it): each tenant column
    /// must equal the custom setting `SQL_<column>` in the reader's profile, for example
    /// `<SQL_project_id>…</SQL_project_id>` (custom settings need the `SQL_` prefix, which
    /// `custom_settings_prefixes` allows by default). Once a table has a row policy, users no
    /// policy names see no rows, so a second policy keeps every other user (pgfanout itself
    /// among them) seeing all. Named after pgfanout and the reader so a rerun replaces only its
    /// own policies.
    pub fn row_policies(&self, reader: &str, tenant_columns: &[String]) -> [String; 2] {
        let conditions: Vec<String> = tenant_columns
            .iter()
            .map(|c| {
                format!(
                    "toString({}) = getSetting({})",
                    ident(c),
                    literal(&format!("SQL_{c}"))
                )
            })
            .collect();
        let table = qualified(&self.database, &self.name);
        let reader_id = ident(reader);
        [
            format!(
                "CREATE ROW POLICY OR REPLACE {} ON {table} FOR SELECT USING {} TO {reader_id}",
                ident(&format!("pgfanout_{reader}")),
                conditions.join(" AND "),
            ),
            format!(
                "CREATE ROW POLICY OR REPLACE {} ON {table} FOR SELECT USING 1 \
                 TO ALL EXCEPT {reader_id}",
                ident(&format!("pgfanout_{reader}_others")),
            ),
        ]
    }

    /// SELECT on this table's view, and nothing else, for the reader.
    pub fn grant(&self, views_database: &str, reader: &str) -> String {
        format!(
            "GRANT SELECT ON {} TO {}",
            qualified(views_database, &self.name),
            ident(reader)
        )
    }
}

/// Where each destination's watermark lives: one row per write, the highest seq wins.
pub fn watermark_table(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (destination String, seq UInt64, written_at DateTime, \
         lineage String) ENGINE = ReplacingMergeTree(seq) ORDER BY destination",
        qualified(database, table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> TableDdl {
        TableDdl {
            database: "analytics_internal".into(),
            name: "users".into(),
            columns: vec![
                ("project_id".into(), ChType::String),
                ("branch_id".into(), ChType::String),
                ("id".into(), ChType::Uuid),
                (
                    "display name".into(),
                    ChType::Nullable(Box::new(ChType::String)),
                ),
            ],
            order_by: vec!["project_id".into(), "branch_id".into(), "id".into()],
            version_column: "sync_sequence_id".into(),
            deleted_column: "sync_is_deleted".into(),
        }
    }

    const OLD: ServerVersion = ServerVersion {
        major: 18,
        minor: 16,
    };
    const CURRENT: ServerVersion = ServerVersion {
        major: 24,
        minor: 3,
    };

    #[test]
    fn identifiers_and_literals_are_escaped() {
        assert_eq!(ident("a`b\\c d"), "`a\\`b\\\\c d`");
        assert_eq!(literal("it's \\ here"), "'it\\'s \\\\ here'");
        assert_eq!(qualified("d b", "t"), "`d b`.`t`");
    }

    #[test]
    fn create_table_on_old_and_current_servers() {
        let t = users();
        assert_eq!(
            t.create(OLD),
            "CREATE TABLE IF NOT EXISTS `analytics_internal`.`users` (`project_id` String, \
             `branch_id` String, `id` UUID, `display name` Nullable(String), \
             `sync_sequence_id` UInt64, `sync_is_deleted` UInt8) \
             ENGINE = ReplacingMergeTree(`sync_sequence_id`) \
             ORDER BY (`project_id`, `branch_id`, `id`)"
        );
        assert!(t.create(CURRENT).contains(
            "ENGINE = ReplacingMergeTree(`sync_sequence_id`, `sync_is_deleted`) ORDER BY"
        ));
    }

    #[test]
    fn insert_truncate_and_view() {
        let t = users();
        assert_eq!(
            t.insert(),
            "INSERT INTO `analytics_internal`.`users` (`project_id`, `branch_id`, `id`, \
             `display name`, `sync_sequence_id`, `sync_is_deleted`) FORMAT RowBinary"
        );
        assert_eq!(
            t.truncate(42),
            "INSERT INTO `analytics_internal`.`users` (`project_id`, `branch_id`, `id`, \
             `sync_sequence_id`, `sync_is_deleted`) SELECT `project_id`, `branch_id`, `id`, \
             toUInt64(42), 1 FROM `analytics_internal`.`users` FINAL \
             WHERE `sync_is_deleted` = 0 AND `sync_sequence_id` < 42"
        );
        assert_eq!(
            t.view("default"),
            "CREATE VIEW IF NOT EXISTS `default`.`users` AS SELECT `project_id`, `branch_id`, \
             `id`, `display name` FROM `analytics_internal`.`users` FINAL \
             WHERE `sync_is_deleted` = 0"
        );
    }

    #[test]
    fn row_policy_and_grant_for_current_servers() {
        let t = users();
        let tenant = ["project_id".to_owned(), "branch_id".to_owned()];
        assert_eq!(
            t.row_policies("limited_user", &tenant),
            [
                "CREATE ROW POLICY OR REPLACE `pgfanout_limited_user` ON \
                 `analytics_internal`.`users` FOR SELECT USING \
                 toString(`project_id`) = getSetting('SQL_project_id') AND \
                 toString(`branch_id`) = getSetting('SQL_branch_id') TO `limited_user`",
                "CREATE ROW POLICY OR REPLACE `pgfanout_limited_user_others` ON \
                 `analytics_internal`.`users` FOR SELECT USING 1 TO ALL EXCEPT `limited_user`"
            ]
        );
        assert_eq!(
            t.grant("default", "limited_user"),
            "GRANT SELECT ON `default`.`users` TO `limited_user`"
        );
    }

    #[test]
    fn watermark_table_statement() {
        assert_eq!(
            watermark_table("a", "_pgfanout_watermarks"),
            "CREATE TABLE IF NOT EXISTS `a`.`_pgfanout_watermarks` (destination String, \
             seq UInt64, written_at DateTime, lineage String) ENGINE = ReplacingMergeTree(seq) \
             ORDER BY destination"
        );
    }
}
