//! The rules of a ClickHouse destination's store block (`kind = "clickhouse"`), checked while
//! the configuration loads (`config::StageRules::store`), and the one reading of its URL.

use crate::config::{ClickHouseStore, StoreSettings};

/// ClickHouse accepts longer names than PostgreSQL; this keeps them readable in errors.
const MAX_IDENTIFIER_BYTES: usize = 255;

/// Reports each problem of `store` as `problem(field, message)`.
pub fn check(
    store: &ClickHouseStore,
    settings: &StoreSettings<'_>,
    problem: &mut dyn FnMut(&str, String),
) {
    if let Err(message) = server_url(&store.url) {
        problem("url", message);
    }
    identifier(problem, "user", "user name", &store.user);
    identifier(problem, "database", "database name", &store.database);
    let deleted = &store.deleted_column;
    identifier(problem, "deleted_column", "deleted column name", deleted);
    if deleted == settings.version_column {
        problem(
            "deleted_column",
            format!("{deleted:?} is also the version_column; give them different names"),
        );
    }
    if let Some(v) = &store.views_database {
        identifier(problem, "views_database", "views database name", v);
        if *v == store.database {
            problem(
                "views_database",
                format!("{v:?} is also the database of the tables; the views need a database of their own, since they take the tables' names"),
            );
        }
    }
    if let Some(r) = &store.reader_user {
        identifier(problem, "reader_user", "reader user name", r);
        if store.views_database.is_none() {
            problem(
                "reader_user",
                "needs views_database: the reader is granted SELECT on the views only".into(),
            );
        }
        if store.tenant_columns.is_empty() {
            problem(
                "reader_user",
                "needs tenant_columns: the row policies filter on them".into(),
            );
        }
    }
    let tenant_columns = &store.tenant_columns;
    for (j, c) in tenant_columns.iter().enumerate() {
        let key = format!("tenant_columns[{j}]");
        if tenant_columns[..j].contains(c) {
            problem(
                &key,
                format!("{c:?} is listed twice; list each column once"),
            );
        }
        for m in settings.mappings.iter().filter(|m| !m.maps(c)) {
            problem(
                &key,
                format!(
                    "{c:?} is not a target column of mapping {:?}; every table of a ClickHouse destination must carry the tenant columns, so map it (for example {c} = \"tenant.{c}\")",
                    m.name
                ),
            );
        }
    }
    for m in settings.mappings.iter().filter(|m| m.lists(deleted)) {
        problem(
            "deleted_column",
            format!(
                "{deleted:?} is also a target column of mapping {:?}; choose another deleted_column or rename the mapped column",
                m.name
            ),
        );
    }
}

/// The server's base URL from the configured `url`: `http(s)://host[:port]` with nothing
/// else, without a trailing slash. Credentials belong in `user`/`password`, where they cannot
/// leak through a logged URL; the message never echoes the text, which may hold a password.
pub fn server_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text)
        .map_err(|e| format!("is not a URL ({e}); write http://host:8123 (the HTTP interface)"))?;
    let mut bad = Vec::new();
    if !matches!(url.scheme(), "http" | "https") {
        bad.push(format!("the scheme is {:?}, not http or https (pgfanout uses ClickHouse's HTTP interface, port 8123 by default)", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        bad.push("there is no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        bad.push(
            "it holds credentials; move them to user and password (password = \"${CH_PASSWORD}\")"
                .to_owned(),
        );
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        bad.push("it has a path, query or fragment; set the database with database".to_owned());
    }
    if !bad.is_empty() {
        return Err(bad.join("; "));
    }
    let mut s = url.to_string();
    if s.ends_with('/') {
        s.pop();
    }
    Ok(s)
}

/// Whether `store`'s password goes over plain HTTP: the client sends it with every request, and
/// `http://` does not encrypt. An empty password (`password = "${CH_PASSWORD}"` with the
/// variable empty) is no password.
pub fn password_over_http(store: &ClickHouseStore) -> bool {
    store
        .password
        .as_ref()
        .is_some_and(|p| !p.expose().is_empty())
        && url::Url::parse(&store.url).is_ok_and(|u| u.scheme() == "http")
}

/// The warning for [`password_over_http`], naming the destination.
pub fn plaintext_warning(destination: &str, store: &ClickHouseStore) -> String {
    format!(
        "destination {destination}: a password is configured, but the ClickHouse URL {} is http://, so the password travels unencrypted with every request\nHINT: serve ClickHouse over HTTPS and use an https:// URL",
        store.url
    )
}

/// Warns, once per destination for the life of the process, when [`password_over_http`].
pub fn warn_if_plaintext(destination: &str, store: &ClickHouseStore) {
    if password_over_http(store)
        && crate::report::first_time(&format!("clickhouse {destination} {}", store.url))
    {
        tracing::warn!(destination, "{}", plaintext_warning(destination, store));
    }
}

fn identifier(problem: &mut dyn FnMut(&str, String), key: &str, what: &str, name: &str) {
    let reason = if name.is_empty() {
        "is empty; write one".to_owned()
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        format!(
            "is {} bytes long; shorten it to at most {MAX_IDENTIFIER_BYTES}",
            name.len()
        )
    } else if name.chars().any(char::is_control) {
        "contains a control character; remove it".to_owned()
    } else {
        return;
    };
    problem(key, format!("the {what} {reason}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_the_server_alone_and_never_echoed() {
        assert_eq!(server_url("http://h:8123/").unwrap(), "http://h:8123");
        assert_eq!(server_url("https://h").unwrap(), "https://h");
        let e = server_url("http://writer:pw@h:8123/db?x=1").unwrap_err();
        assert!(e.contains("credentials") && e.contains("path"), "{e}");
        assert!(!e.contains("pw"), "{e}");
        assert!(server_url("mysql://h").unwrap_err().contains("mysql"));
        assert!(server_url("not a url").unwrap_err().contains("not a URL"));
    }
}
