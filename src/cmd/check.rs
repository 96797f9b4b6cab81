//! `pgfanout check`: every start-up precondition, checked read-only and reported at once, so a
//! deployment learns all that is wrong before it takes traffic.
//!
//! ```text
//!   source (replication session) ─▶ privilege, wal_level, publication, slot
//!   state database                ─▶ reachable, schema migrated
//!   change log directory          ─▶ readable, intact tail, writer lock
//!   mappings                      ─▶ compiled against the source catalog (every problem)
//!   destinations                  ─▶ reachable
//!   every connection              ─▶ a warning when its password travels unencrypted
//! ```

pub use super::report::{Check, Outcome, Report};
use crate::changelog;
use crate::config::{Config, StoreConfig, Tenants};
use crate::pgconn::{password_in_clear, plaintext_warning, ConnInfo, Transport};
use crate::report::Chain;
use crate::sink::clickhouse::config as clickhouse_config;
use crate::sink::{ClickHouseSink, PostgresSink};
use crate::source::session::Session;
use crate::source::slot::{self, PublicationState};
use crate::source::SourceError;
use crate::sql::{quote_ident, quote_literal, QualifiedName};

pub async fn check(cfg: &Config) -> Report {
    let mut report = Report::default();
    check_source(cfg, &mut report).await;
    check_state(cfg, &mut report).await;
    check_log(cfg, &mut report).await;
    check_fanout(cfg, &mut report).await;
    report
}

/// The mappings through the same start-up code `run` uses, then a connection per destination.
/// Target tables are checked when a destination's writer starts (that step may create them).
async fn check_fanout(cfg: &Config, report: &mut Report) {
    if cfg.mappings.is_empty() && cfg.destinations.is_empty() {
        return;
    }
    let setup = match crate::fanout::Setup::load(cfg).await {
        Ok(setup) => {
            let broken: Vec<&String> = setup.broken.iter().flatten().collect();
            if broken.is_empty() {
                report.push(
                    "mappings",
                    Outcome::Ok(format!(
                        "{} mapping(s) compile against the source tables; {} tenant(s) loaded",
                        cfg.mappings.len(),
                        setup.registry.len()
                    )),
                );
            }
            // `run` starts without them: their destinations stay stopped.
            for reason in broken {
                report.push("mappings", Outcome::Problem(reason.clone()));
            }
            Some(setup)
        }
        Err(e) => {
            report.push("mappings", Outcome::Problem(Chain(&e).to_string()));
            None
        }
    };
    // A missing table is the mappings' problem, reported above.
    let snapshot = crate::snapshot::check_tables(cfg).await.map(|p| {
        p.into_iter()
            .filter(|e| !matches!(e, crate::snapshot::SnapshotError::NoTable { .. }))
            .collect::<Vec<_>>()
    });
    match snapshot {
        Ok(problems) if problems.is_empty() => report.push(
            "snapshot",
            Outcome::Ok("every mapped table has a key to read it by in chunks".into()),
        ),
        Ok(problems) => {
            for p in problems {
                report.push("snapshot", Outcome::Problem(Chain(&p).to_string()));
            }
        }
        Err(e) => report.push("snapshot", Outcome::Problem(Chain(&e).to_string())),
    }
    if let Some(setup) = &setup {
        check_tenant_ids(cfg, setup, report);
    }
    for (i, d) in cfg.destinations.iter().enumerate() {
        // The target tables, when the mappings compiled: what the writer checks at start,
        // read-only (a missing table is fine when the writer would create it).
        let tables = setup
            .as_ref()
            .map(|s| &s.destinations[i])
            .filter(|p| p.broken.is_none())
            .map(|p| &p.tables);
        let outcome = match &d.store {
            StoreConfig::Postgres(pg) => match pg.conn.connect_sql_observed().await {
                Ok((client, transport)) => {
                    warn_if_in_clear(report, &pg.conn, transport);
                    // The same checks the writer runs at start, without its DDL.
                    let sink = PostgresSink::new(client, pg.schema.clone());
                    let checked = match tables {
                        Some(t) => sink.check_tables(t, d.create_tables).await,
                        None => Ok(()),
                    };
                    match checked {
                        Ok(()) => Outcome::Ok(format!(
                            "{}: reachable{}",
                            d.name,
                            if tables.is_some() { "; its tables match" } else { "" }
                        )),
                        Err(e) => Outcome::Problem(format!("{}: {}", d.name, Chain(&e))),
                    }
                }
                Err(e) => Outcome::Problem(format!("{}: {}", d.name, Chain(&e))),
            },
            StoreConfig::ClickHouse(ch) => match ClickHouseSink::connect(ch).await {
                Ok(sink) if ch.reader_user.is_some() && !sink.server_version().supports_reader_policies() => {
                    Outcome::Problem(format!(
                        "{}: reader_user needs SQL access control and getSetting (ClickHouse 20.7+), which ClickHouse {} does not have; remove reader_user",
                        d.name,
                        sink.server_version()
                    ))
                }
                Ok(mut sink) => {
                    let checked = match tables {
                        Some(t) => sink.check_tables(&d.name, t, d.create_tables).await,
                        None => Ok(()),
                    };
                    match checked {
                        Ok(()) => Outcome::Ok(format!(
                            "{}: reachable (ClickHouse {}){}",
                            d.name,
                            sink.server_version(),
                            if tables.is_some() { "; its tables match" } else { "" }
                        )),
                        Err(e) => Outcome::Problem(format!("{}: {e}", d.name)),
                    }
                }
                Err(e) => Outcome::Problem(format!("{}: {}", d.name, Chain(&e))),
            },
        };
        report.push("destination", outcome);
        if let StoreConfig::ClickHouse(ch) = &d.store {
            if clickhouse_config::password_over_http(ch) {
                report.push(
                    "encryption",
                    Outcome::Warning(clickhouse_config::plaintext_warning(&d.name, ch)),
                );
            }
        }
    }
}

/// Every tenant id a destination lists must be one `[tenants].query` returns: a typo would
/// route nothing to it, silently. (Without `[tenants]` there is no list to check against.)
fn check_tenant_ids(cfg: &Config, setup: &crate::fanout::Setup, report: &mut Report) {
    if cfg.tenants.is_none() {
        return;
    }
    let mut problems = 0;
    for d in &cfg.destinations {
        let Tenants::Some(listed) = &d.tenants else {
            continue;
        };
        let mut unknown: Vec<&str> = listed
            .iter()
            .map(String::as_str)
            .filter(|t| setup.registry.attributes(t).is_none())
            .collect();
        if unknown.is_empty() {
            continue;
        }
        unknown.sort_unstable();
        problems += 1;
        report.push(
            "tenants",
            Outcome::Problem(format!(
                "destination {}: tenant id(s) {} match no tenant that [tenants].query returns, so nothing would reach it for them\nHINT: correct the ids in destinations.tenants (they are values of the mappings' tenant_key), or add the tenants",
                d.name,
                unknown
                    .iter()
                    .map(|t| format!("{t:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        );
    }
    if problems == 0 {
        report.push(
            "tenants",
            Outcome::Ok("every tenant id the destinations list is a known tenant".into()),
        );
    }
}

/// A warning line when a password went over the connection `info` opened as `transport`.
fn warn_if_in_clear(report: &mut Report, info: &ConnInfo, transport: Transport) {
    if password_in_clear(info, transport) {
        report.push("encryption", Outcome::Warning(plaintext_warning(info)));
    }
}

async fn check_source(cfg: &Config, report: &mut Report) {
    let src = &cfg.source;
    let mut session = match Session::connect(&src.conn, Some("database")).await {
        Ok(s) => {
            report.push(
                "source",
                Outcome::Ok(format!("replication session to {}", src.conn)),
            );
            warn_if_in_clear(report, &src.conn, s.transport());
            s
        }
        Err(e) => {
            let text = match e.server_code() {
                Some("42501") => format!(
                    "{e}\nHINT: ALTER ROLE {} WITH REPLICATION (or use a role that has it)",
                    src.conn.user
                ),
                _ => Chain(&e).to_string(),
            };
            report.push("source", Outcome::Problem(text));
            return;
        }
    };
    match slot::wal_level(&mut session).await {
        Ok(level) if level == "logical" => report.push("wal_level", Outcome::Ok(level)),
        Ok(actual) => report.push(
            "wal_level",
            Outcome::Problem(SourceError::WalLevel { actual }.to_string()),
        ),
        Err(e) => report.push("wal_level", Outcome::Problem(Chain(&e).to_string())),
    }
    let protocol = slot::server_version_num(&mut session)
        .await
        .and_then(|version| {
            Ok((
                crate::source::choose_protocol(src.protocol, version)?,
                version,
            ))
        });
    match protocol {
        Ok((2, version)) => report.push(
            "protocol",
            Outcome::Ok(format!(
                "pgoutput 2: transactions in progress stream into the log directory's streaming/ (server {})",
                crate::source::server_version_text(version)
            )),
        ),
        Ok((p, version)) => report.push(
            "protocol",
            Outcome::Ok(format!(
                "pgoutput {p}: each transaction arrives at its commit (server {})",
                crate::source::server_version_text(version)
            )),
        ),
        Err(e) => report.push("protocol", Outcome::Problem(Chain(&e).to_string())),
    }
    if let Some(tables) = &src.tables {
        let mut missing = Vec::new();
        for t in tables {
            let sql = format!(
                "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = {} AND tablename = {}",
                quote_literal(&t.schema),
                quote_literal(&t.name)
            );
            match session.simple_query(&sql).await {
                Ok(rows) if rows.is_empty() => missing.push(t.to_string()),
                Ok(_) => {}
                Err(e) => report.push("tables", Outcome::Problem(Chain(&e).to_string())),
            }
        }
        if missing.is_empty() {
            report.push(
                "tables",
                Outcome::Ok(format!("{} configured table(s) exist", tables.len())),
            );
        } else {
            report.push(
                "tables",
                Outcome::Problem(format!(
                    "source.tables names tables that do not exist: {}",
                    missing.join(", ")
                )),
            );
        }
    }
    let publication = match slot::publication_state(&mut session, src).await {
        Ok(PublicationState::Missing) if src.manage => Outcome::Note(format!(
            "{} does not exist; pgfanout run creates it",
            src.publication
        )),
        Ok(PublicationState::Missing) => Outcome::Problem(
            SourceError::PublicationMissing {
                publication: src.publication.clone(),
            }
            .to_string(),
        ),
        Ok(PublicationState::Exists { missing }) if missing.is_empty() => {
            Outcome::Ok(format!("{} covers the configured tables", src.publication))
        }
        Ok(PublicationState::Exists { missing }) => {
            let (list, add) = unpublished(&src.publication, &missing);
            if src.manage {
                Outcome::Note(format!(
                    "{} lacks {list}; pgfanout run adds them",
                    src.publication
                ))
            } else {
                Outcome::Problem(format!(
                    "publication {} does not publish {list}: their changes would never arrive\nHINT: {add}, or set source.manage = true",
                    src.publication,
                ))
            }
        }
        Err(e) => Outcome::Problem(Chain(&e).to_string()),
    };
    report.push("publication", publication);
    check_mapped_tables_published(cfg, &mut session, report).await;
    let slot_outcome = match slot::slot_state(&mut session, &src.slot).await {
        Ok(Some(row)) => match slot::check_slot(&src.slot, &row, src) {
            Ok(()) => Outcome::Ok(format!(
                "{} (pgoutput, database {})",
                src.slot, row.database
            )),
            Err(e) => Outcome::Problem(Chain(&e).to_string()),
        },
        Ok(None) if src.manage => Outcome::Note(format!(
            "{} does not exist; pgfanout run creates it",
            src.slot
        )),
        Ok(None) => Outcome::Problem(
            SourceError::SlotMissing {
                slot: src.slot.clone(),
            }
            .to_string(),
        ),
        Err(e) => Outcome::Problem(Chain(&e).to_string()),
    };
    report.push("slot", slot_outcome);
    let _ = session.close(false).await;
}

/// Without `source.tables`, `run` leaves an existing publication as it is: a mapped table it
/// does not publish would never send a change, whatever `manage` says. (With `source.tables`,
/// validation already requires every mapped table to be listed, and the check above covers
/// them.)
/// Tables a publication lacks, as a list for people and as the statement that adds them.
fn unpublished(publication: &str, missing: &[QualifiedName]) -> (String, String) {
    let list: Vec<String> = missing.iter().map(|t| t.to_string()).collect();
    let quoted: Vec<String> = missing.iter().map(|t| t.quoted()).collect();
    (
        list.join(", "),
        format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(publication),
            quoted.join(", ")
        ),
    )
}

async fn check_mapped_tables_published(cfg: &Config, session: &mut Session, report: &mut Report) {
    let src = &cfg.source;
    if src.tables.is_some() || cfg.mappings.is_empty() {
        return;
    }
    let mut mapped: Vec<_> = cfg.mappings.iter().map(|m| m.source.clone()).collect();
    mapped.sort_by_key(|t| t.to_string());
    mapped.dedup();
    let probe = crate::config::SourceConfig {
        tables: Some(mapped),
        ..src.clone()
    };
    match slot::publication_state(session, &probe).await {
        // Reported above: created FOR ALL TABLES by run, or a problem without manage.
        Ok(PublicationState::Missing) => {}
        Ok(PublicationState::Exists { missing }) if missing.is_empty() => {}
        Ok(PublicationState::Exists { missing }) => {
            let (list, add) = unpublished(&src.publication, &missing);
            report.push(
                "publication",
                Outcome::Problem(format!(
                    "publication {} does not publish the mapped table(s) {list}: their changes would never arrive\nHINT: {add}, or list the tables in source.tables with source.manage = true",
                    src.publication,
                )),
            );
        }
        Err(e) => report.push("publication", Outcome::Problem(Chain(&e).to_string())),
    }
}

async fn check_state(cfg: &Config, report: &mut Report) {
    let st = &cfg.state;
    let (client, transport) = match st.conn.connect_sql_observed().await {
        Ok(c) => c,
        Err(e) => {
            report.push("state database", Outcome::Problem(Chain(&e).to_string()));
            return;
        }
    };
    let sql = format!(
        "SELECT max(version) FROM {}.migrations",
        crate::sql::quote_ident(&st.schema)
    );
    let outcome = match client.query_one(&sql, &[]).await {
        Ok(row) => {
            let version: Option<i32> = row.get(0);
            // Versions may skip numbers: compare with the latest, not the count.
            let known = crate::state::MIGRATIONS
                .last()
                .map_or(0, |m| i64::from(m.version));
            let version = version.map(i64::from);
            match version {
                Some(v) if v > known => Outcome::Problem(format!(
                    "schema {} is at migration {v}, newer than this pgfanout knows ({known}); run the newer pgfanout",
                    st.schema
                )),
                Some(v) if v < known => Outcome::Note(format!(
                    "schema {} is at migration {v} of {known}; pgfanout run applies the rest",
                    st.schema
                )),
                _ => Outcome::Ok(format!("schema {} is up to date", st.schema)),
            }
        }
        Err(e)
            if e.code()
                .is_some_and(|c| c.code() == "42P01" || c.code() == "3F000") =>
        {
            Outcome::Note(format!(
                "schema {} is not set up yet; pgfanout run (or migrate) creates it",
                st.schema
            ))
        }
        Err(e) => Outcome::Problem(format!(
            "reading the migration history of schema {}: {}",
            st.schema,
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string())
        )),
    };
    report.push("state database", outcome);
    warn_if_in_clear(report, &st.conn, transport);
}

async fn check_log(cfg: &Config, report: &mut Report) {
    let dir = cfg.log.dir.clone();
    let dir_for_task = dir.clone();
    let result = tokio::task::spawn_blocking(move || changelog::summary(&dir_for_task)).await;
    let outcome = match &result {
        Ok(Ok(s)) if s.oldest_seq.is_some() => Outcome::Ok(format!(
            "{}: seq {} to {} in {} segment(s)",
            dir.display(),
            s.oldest_seq.unwrap_or_default(),
            s.last_seq,
            s.segments
        )),
        Ok(Ok(_)) => Outcome::Note(format!("{}: empty or not created yet", dir.display())),
        Ok(Err(e)) => Outcome::Problem(Chain(e).to_string()),
        Err(e) => Outcome::Problem(format!("reading the change log failed: {e}")),
    };
    report.push("change log", outcome);
    // What `run` would refuse at start (a foreign log, a missing slot over progress, a log
    // shorter than what was confirmed) is a problem here too.
    if let Ok(Ok(summary)) = &result {
        super::verify::resume(cfg, summary, 0, true, report).await;
    }
}
