//! Each target against its projection of the source: the expected rows computed from the
//! source with SQL equivalent to the mappings (join the tenancy for the project, lower-case
//! the e-mail, leave anonymous users out), the target's rows read back — from a tenant
//! database as they are, from ClickHouse as the live rows under `FINAL`.

use std::collections::BTreeSet;
use std::sync::Arc;

use pgfanout_testkit::localch::LocalClickHouse;

/// The mapped tables, named alike in the source and in every target.
pub const TABLES: [&str; 2] = ["users", "contact_channels"];

/// How one mapped table is read on each side, as text cells in the same order.
struct TableSql {
    name: &'static str,
    /// `$1`: the projects (text[]) whose rows are expected.
    source: &'static str,
    postgres: &'static str,
    /// The column list of the ClickHouse query (TabSeparated prints NULL as `\N`).
    clickhouse: &'static str,
    /// The target key, for ClickHouse's one-row-per-key check.
    key: &'static str,
}

const SQL: [TableSql; 2] = [
    TableSql {
        name: "users",
        source: "SELECT t.project_id, u.id::text, lower(u.email), u.display_name
                 FROM users u JOIN tenancy t ON t.id = u.tenancy_id
                 WHERE NOT u.is_anonymous AND t.project_id = ANY($1)",
        postgres: "SELECT project_id, id::text, email, display_name FROM users",
        clickhouse: "project_id, id, email, display_name",
        key: "project_id, id",
    },
    TableSql {
        name: "contact_channels",
        source: "SELECT t.project_id, c.id::text, c.user_id::text, c.kind, c.value,
                        c.is_verified::int::text
                 FROM contact_channels c JOIN tenancy t ON t.id = c.tenancy_id
                 WHERE t.project_id = ANY($1)",
        postgres: "SELECT project_id, id::text, user_id::text, kind, value, is_verified::int::text
                   FROM contact_channels",
        clickhouse: "project_id, id, user_id, kind, value, toUInt8(is_verified)",
        key: "project_id, id",
    },
];

/// Where a target's rows are read.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Postgres(&'a tokio_postgres::Client),
    ClickHouse(&'a Arc<LocalClickHouse>, &'a str),
}

/// One table of one destination compared with its projection.
pub struct Comparison {
    pub table: &'static str,
    /// Rows the projection has.
    pub expected: usize,
    /// Rows the target has (`None`: the table does not exist yet).
    pub found: Option<usize>,
    /// Expected rows the target lacks or holds differently.
    pub missing: usize,
    /// Target rows the projection does not have (stale versions, rows that should be gone).
    pub extra: usize,
    /// ClickHouse only: rows under `FINAL` beyond one per key (a change applied twice).
    pub duplicates: usize,
}

impl Comparison {
    pub fn equal(&self) -> bool {
        self.found == Some(self.expected)
            && self.missing == 0
            && self.extra == 0
            && self.duplicates == 0
    }

    pub fn describe(&self) -> String {
        if self.equal() {
            return format!("{} rows equal the projection of the source", self.expected);
        }
        match self.found {
            None => format!(
                "the table does not exist yet; the projection has {} rows",
                self.expected
            ),
            Some(found) => {
                let mut text = format!(
                    "{found} rows found, {} expected: {} missing or different, {} extra",
                    self.expected, self.missing, self.extra
                );
                if self.duplicates > 0 {
                    text.push_str(&format!(
                        ", {} rows beyond one per key under FINAL",
                        self.duplicates
                    ));
                }
                text
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("reading {what}")]
    Postgres {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("reading {what} from ClickHouse")]
    ClickHouse {
        what: String,
        #[source]
        source: pgfanout_testkit::localch::LocalChError,
    },
    #[error("a ClickHouse query task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// Every mapped table of one target compared with the projection of `projects`.
pub async fn compare(
    source: &tokio_postgres::Client,
    target: Target<'_>,
    projects: &[String],
) -> Result<Vec<Comparison>, CompareError> {
    let mut out = Vec::new();
    for t in &SQL {
        let mut want = rows(source, t.source, &[&projects])
            .await
            .map_err(|source| CompareError::Postgres {
                what: format!("the source's projection of {}", t.name),
                source,
            })?;
        want.sort();
        let (got, duplicates) = match target {
            Target::Postgres(db) => match rows(db, t.postgres, &[]).await {
                Ok(rows) => (Some(rows), 0),
                Err(e) if undefined_table(&e) => (None, 0),
                Err(source) => {
                    return Err(CompareError::Postgres {
                        what: format!("target table {}", t.name),
                        source,
                    })
                }
            },
            Target::ClickHouse(ch, database) => {
                let rows = ch_query(
                    ch,
                    format!(
                        "SELECT {} FROM `{database}`.`{}` FINAL WHERE _is_deleted = 0 FORMAT TabSeparated",
                        t.clickhouse, t.name
                    ),
                    t.name,
                )
                .await?
                .map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>());
                let counts = ch_query(
                    ch,
                    format!(
                        "SELECT count(), uniqExact({}) FROM `{database}`.`{}` FINAL",
                        t.key, t.name
                    ),
                    t.name,
                )
                .await?
                .unwrap_or_default();
                let n: Vec<usize> = counts
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let duplicates = match n[..] {
                    [all, keys] => all.saturating_sub(keys),
                    _ => 0,
                };
                (rows, duplicates)
            }
        };
        let found = got.as_ref().map(Vec::len);
        let (missing, extra) = match got {
            Some(mut got) => {
                got.sort();
                differences(&want, &got)
            }
            None => (want.len(), 0),
        };
        out.push(Comparison {
            table: t.name,
            expected: want.len(),
            found,
            missing,
            extra,
            duplicates,
        });
    }
    Ok(out)
}

/// Live rows per mapped table of a target, for the live view (`None`: not created yet).
pub async fn live_rows(target: Target<'_>) -> Vec<(&'static str, Option<u64>)> {
    let mut out = Vec::new();
    for t in &SQL {
        let n = match target {
            Target::Postgres(db) => db
                .query_one(&format!("SELECT count(*) FROM {}", t.name), &[])
                .await
                .ok()
                .map(|r| r.get::<_, i64>(0) as u64),
            Target::ClickHouse(ch, database) => ch_query(
                ch,
                format!(
                    "SELECT count() FROM `{database}`.`{}` FINAL WHERE _is_deleted = 0",
                    t.name
                ),
                t.name,
            )
            .await
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse().ok()),
        };
        out.push((t.name, n));
    }
    out
}

/// Which of `ids` of `table` the projection of `project` has, and which the target has.
pub async fn present(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    table: &str,
    project: &str,
    ids: &[i64],
) -> Result<(BTreeSet<i64>, BTreeSet<i64>), CompareError> {
    let projection = match table {
        "users" => {
            "SELECT u.id FROM users u JOIN tenancy t ON t.id = u.tenancy_id
             WHERE NOT u.is_anonymous AND t.project_id = $1 AND u.id = ANY($2)"
        }
        _ => {
            "SELECT c.id FROM contact_channels c JOIN tenancy t ON t.id = c.tenancy_id
             WHERE t.project_id = $1 AND c.id = ANY($2)"
        }
    };
    let ids = ids.to_vec();
    let want = source
        .query(projection, &[&project, &ids])
        .await
        .map_err(|source| CompareError::Postgres {
            what: format!("the source's projection of {table}"),
            source,
        })?;
    let got = target
        .query(
            &format!("SELECT id FROM {table} WHERE id = ANY($1)"),
            &[&ids],
        )
        .await
        .map_err(|source| CompareError::Postgres {
            what: format!("target table {table}"),
            source,
        })?;
    let set = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect();
    Ok((set(want), set(got)))
}

/// Rows as tab-separated text, NULL as `\N` (as ClickHouse prints them).
async fn rows(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(db
        .query(sql, params)
        .await?
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.get::<_, Option<String>>(i)
                        .unwrap_or_else(|| "\\N".into())
                })
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect())
}

fn undefined_table(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code() == "42P01" || c.code() == "3F000")
}

/// One query off the runtime (the testkit's client blocks); `None` when the table or the
/// database does not exist yet.
async fn ch_query(
    ch: &Arc<LocalClickHouse>,
    sql: String,
    table: &str,
) -> Result<Option<String>, CompareError> {
    let ch = ch.clone();
    match tokio::task::spawn_blocking(move || ch.query(&sql)).await? {
        Ok(text) => Ok(Some(text)),
        // UNKNOWN_TABLE (60) and UNKNOWN_DATABASE (81): the destination has not created it.
        Err(pgfanout_testkit::localch::LocalChError::Query { message, .. })
            if message.contains("Code: 60") || message.contains("Code: 81") =>
        {
            Ok(None)
        }
        Err(source) => Err(CompareError::ClickHouse {
            what: format!("table {table}"),
            source,
        }),
    }
}

/// Rows of sorted `want` not in sorted `got`, and the other way round (as multisets).
fn differences(want: &[String], got: &[String]) -> (usize, usize) {
    let (mut i, mut j, mut missing, mut extra) = (0, 0, 0, 0);
    while i < want.len() && j < got.len() {
        match want[i].cmp(&got[j]) {
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => {
                missing += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                extra += 1;
                j += 1;
            }
        }
    }
    (missing + want.len() - i, extra + got.len() - j)
}

#[cfg(test)]
mod tests {
    use super::differences;

    #[test]
    fn differences_count_both_sides_as_multisets() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            differences(&s(&["a", "b", "c"]), &s(&["a", "b", "c"])),
            (0, 0)
        );
        assert_eq!(
            differences(&s(&["a", "b", "c"]), &s(&["a", "c", "d"])),
            (1, 1)
        );
        assert_eq!(differences(&s(&["a", "a"]), &s(&["a"])), (1, 0));
        assert_eq!(differences(&s(&[]), &s(&["x"])), (0, 1));
    }
}
