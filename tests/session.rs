//! Connecting: TCP and unix sockets, trust / cleartext / MD5 / SCRAM-SHA-256, TLS per sslmode,
//! `channel_binding` and `require_auth` on both kinds of connection (the replication session
//! and tokio-postgres), the warning about passwords on unencrypted connections, and server
//! errors surfaced with SQLSTATE, message and hint.

mod support;

use pgfanout::disposition::Classify;
use pgfanout::pgconn::{password_in_clear, ConnInfo, Host, SqlConnectError, Transport};
use pgfanout::report::Chain;
use pgfanout::source::session::{Session, SessionError};
use pgfanout_testkit::localpg::{LocalPostgres, Options};
use support::*;

fn tcp_url(user: &str, password: Option<&str>, extra: &str) -> ConnInfo {
    let pg = server();
    let auth = match password {
        Some(p) => {
            let enc: String = url::form_urlencoded::byte_serialize(p.as_bytes()).collect();
            format!("{user}:{}", enc.replace('+', "%20"))
        }
        None => user.to_owned(),
    };
    format!("postgres://{auth}@127.0.0.1:{}/postgres?{extra}", pg.port())
        .parse()
        .unwrap()
}

async fn identify(info: &ConnInfo) -> Result<String, SessionError> {
    let mut s = Session::connect(info, Some("database")).await?;
    let rows = s.simple_query("IDENTIFY_SYSTEM").await?;
    s.close(false).await?;
    Ok(rows[0].get(3).unwrap_or_default().to_owned())
}

#[tokio::test]
async fn scram_md5_and_cleartext_logins_work_with_the_right_password() {
    for user in [SCRAM_USER, MD5_USER, PLAIN_USER] {
        let db = identify(&tcp_url(user, Some(PASSWORD), "sslmode=disable")).await;
        assert_eq!(db.unwrap_or_else(|e| panic!("{user}: {e}")), "postgres");
    }
}

#[tokio::test]
async fn the_server_really_asks_for_each_method() {
    // pg_hba asks for each method; prove the hash really is what the method name says.
    let client = sql("postgres").await;
    let rows = client
        .query(
            "SELECT rolname::text, left(rolpassword, 6) FROM pg_authid WHERE rolname = ANY($1) ORDER BY 1",
            &[&vec![SCRAM_USER, MD5_USER]],
        )
        .await
        .unwrap();
    let kinds: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(kinds.len(), 2);
    assert_eq!(kinds[0].0, MD5_USER);
    assert!(kinds[0].1.starts_with("md5"), "{kinds:?}");
    assert_eq!(kinds[1], (SCRAM_USER.to_owned(), "SCRAM-".to_owned()));
}

#[tokio::test]
async fn wrong_or_missing_passwords_fail_with_clear_errors() {
    for user in [SCRAM_USER, MD5_USER, PLAIN_USER] {
        let err = identify(&tcp_url(user, Some("wrong"), "sslmode=disable"))
            .await
            .unwrap_err();
        let msg = Chain(&err).to_string();
        // SCRAM can fail on the client side (server signature) or the server's 28P01.
        assert!(
            err.server_code() == Some("28P01") || matches!(err, SessionError::Scram(_)),
            "{user}: {msg}"
        );
        assert!(
            !err.is_transient(),
            "{user}: authentication failures are not retried"
        );
        assert!(
            !msg.contains("wrong"),
            "the password must not be echoed: {msg}"
        );

        let err = identify(&tcp_url(user, None, "sslmode=disable"))
            .await
            .unwrap_err();
        // Refused before answering, saying where a password goes (as SQL connections do).
        assert!(
            matches!(
                err,
                SessionError::AuthRefused {
                    refusal: pgfanout::pgconn::AuthRefusal::NoPassword(_),
                    ..
                }
            ),
            "{user}: {err}"
        );
        assert!(err.to_string().contains(user), "{err}");
        assert!(err.to_string().contains(".pgpass"), "{err}");
    }
}

#[tokio::test]
async fn unix_socket_with_trust() {
    let info = conninfo("postgres");
    assert_eq!(identify(&info).await.unwrap(), "postgres");
}

#[tokio::test]
async fn tls_per_sslmode() {
    let ca = server().ca_cert();
    let ca = ca.display();
    // prefer and require encrypt without verifying; verify-ca verifies the chain only, and
    // verify-full the name too (the certificate names localhost, not 127.0.0.1).
    let localhost = |mut info: ConnInfo| {
        info.host = Host::Tcp("localhost".into());
        info
    };
    for (extra, by_name) in [
        ("sslmode=prefer".to_owned(), false),
        ("sslmode=require".to_owned(), false),
        (format!("sslmode=verify-ca&sslrootcert={ca}"), false),
        (format!("sslmode=verify-full&sslrootcert={ca}"), true),
    ] {
        let mut info = tcp_url(SCRAM_USER, Some(PASSWORD), &extra);
        if by_name {
            info = localhost(info);
        }
        let mut s = Session::connect(&info, None)
            .await
            .unwrap_or_else(|e| panic!("{extra}: {e}"));
        let rows = s
            .simple_query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .await
            .unwrap();
        assert_eq!(rows[0].get(0), Some("true"), "{extra} should be encrypted");
        s.close(false).await.unwrap();
    }
    let info = tcp_url(
        SCRAM_USER,
        Some(PASSWORD),
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let err = Session::connect(&info, None).await.err().unwrap();
    assert!(
        matches!(err, SessionError::Tls { .. }),
        "verify-full must check the name: {err}"
    );

    // A CA that did not sign the server's certificate is refused.
    let other = tempfile::tempdir().unwrap();
    let other_ca = pgfanout_testkit::localtls::make(other.path()).unwrap().ca;
    let info = tcp_url(
        SCRAM_USER,
        Some(PASSWORD),
        &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    );
    let err = Session::connect(&localhost(info), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SessionError::Tls { .. }), "{err}");
}

#[tokio::test]
async fn server_errors_carry_sqlstate_message_and_hint() {
    let mut s = Session::connect(&conninfo("postgres"), Some("database"))
        .await
        .unwrap();
    let err = s
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some("42P01"));
    assert!(err.to_string().contains("no_such_table"), "{err}");
    // The session is still usable after an error.
    let rows = s.simple_query("SELECT 1").await.unwrap();
    assert_eq!(rows[0].get(0), Some("1"));
    let err = s
        .start_copy_both("START_REPLICATION SLOT no_such_slot LOGICAL 0/0")
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some("42704"), "{err}");
    s.close(false).await.unwrap();

    let mut info = conninfo("no_such_database");
    info.dbname = "no_such_database".into();
    let err = Session::connect(&info, None).await.err().unwrap();
    assert_eq!(err.server_code(), Some("3D000"), "{err}");
    assert!(err.to_string().contains("no_such_database"), "{err}");
}

#[tokio::test]
async fn refused_connections_are_transient() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let info: ConnInfo = format!("postgres://u@127.0.0.1:{port}/db?sslmode=disable")
        .parse()
        .unwrap();
    let err = Session::connect(&info, None).await.err().unwrap();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

/// Opens an SQL connection (tokio-postgres through pgconn) and runs one query on it.
async fn sql_login(info: &ConnInfo) -> Result<Transport, SqlConnectError> {
    let (client, transport) = info.connect_sql_observed().await?;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    Ok(transport)
}

/// What a refused login looks like on both kinds of connection: the rule and the method in
/// the message, no password, not retried.
fn assert_refused(
    what: &str,
    session: Result<String, SessionError>,
    sql: Result<Transport, SqlConnectError>,
    says: &[&str],
) {
    let err = session.expect_err(what);
    let msg = Chain(&err).to_string();
    assert!(
        matches!(err, SessionError::AuthRefused { .. }),
        "{what}: replication session: {msg}"
    );
    assert!(!err.is_transient(), "{what}: {msg}");
    for part in says {
        assert!(msg.contains(part), "{what}: {part:?} in {msg}");
    }
    assert!(!msg.contains(PASSWORD), "{what}: {msg}");

    let err = sql.expect_err(what);
    let msg = Chain(&err).to_string();
    assert_eq!(
        err.pg_error().and_then(|e| e.code()).map(|c| c.code()),
        Some("28000"),
        "{what}: SQL connection: {msg}"
    );
    assert!(!err.is_transient(), "{what}: {msg}");
    for part in says {
        assert!(msg.contains(part), "{what}: {part:?} in {msg}");
    }
    assert!(!msg.contains(PASSWORD), "{what}: {msg}");
}

#[tokio::test]
async fn channel_binding_require_binds_scram_to_tls_on_both_kinds_of_connection() {
    // Success proves SCRAM-SHA-256-PLUS with the right tls-server-end-point hash: the policy
    // refuses anything else, and the server checks the binding data against its certificate.
    let info = tcp_url(
        SCRAM_USER,
        Some(PASSWORD),
        "sslmode=require&channel_binding=require",
    );
    let mut s = Session::connect(&info, Some("database"))
        .await
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    assert_eq!(s.transport(), Transport::Tls);
    let rows = s.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(rows[0].get(3), Some("postgres"));
    s.close(false).await.unwrap();
    assert_eq!(
        sql_login(&info)
            .await
            .unwrap_or_else(|e| panic!("{}", Chain(&e))),
        Transport::Tls
    );

    // Over TLS, but the server asks for something other than SCRAM: nothing is sent.
    for (user, password, says) in [
        (MD5_USER, Some(PASSWORD), "MD5 password hash"),
        (PLAIN_USER, Some(PASSWORD), "password in cleartext"),
        ("postgres", None, "without asking for a password"),
    ] {
        let info = tcp_url(user, password, "sslmode=require&channel_binding=require");
        assert_refused(
            user,
            identify(&info).await,
            sql_login(&info).await,
            &["channel_binding=require", says],
        );
    }
    // Without channel binding the same users log in over TLS (the server is not the reason).
    let info = tcp_url(MD5_USER, Some(PASSWORD), "sslmode=require");
    identify(&info).await.unwrap();
    sql_login(&info).await.unwrap();
}

#[tokio::test]
async fn channel_binding_require_never_goes_without_tls() {
    // Certain to fail: refused before connecting.
    for url in [
        "postgres://u:pw@127.0.0.1/db?sslmode=disable&channel_binding=require",
        "postgres://u:pw@/db?host=/tmp&channel_binding=require",
    ] {
        let e = url.parse::<ConnInfo>().unwrap_err().to_string();
        assert!(e.contains("channel_binding=require needs TLS"), "{e}");
    }

    // A server without TLS: sslmode=prefer goes on in plaintext, and channel_binding=require
    // refuses before answering the server's request.
    let plain = tokio::task::spawn_blocking(|| {
        LocalPostgres::start(&Options {
            hba: vec![format!("host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256")],
            ..Options::default()
        })
    })
    .await
    .unwrap()
    .expect("start a PostgreSQL without TLS");
    let pw = PASSWORD.replace('\'', "''");
    plain
        .sql("postgres")
        .await
        .unwrap()
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {SCRAM_USER} LOGIN REPLICATION PASSWORD '{pw}'"
        ))
        .await
        .unwrap();
    let url = |extra: &str| -> ConnInfo {
        let enc: String = url::form_urlencoded::byte_serialize(PASSWORD.as_bytes()).collect();
        format!(
            "postgres://{SCRAM_USER}:{}@127.0.0.1:{}/postgres?{extra}",
            enc.replace('+', "%20"),
            plain.port()
        )
        .parse()
        .unwrap()
    };
    let info = url("sslmode=prefer&channel_binding=require");
    assert_refused(
        "prefer to a server without TLS",
        identify(&info).await,
        sql_login(&info).await,
        &["channel_binding=require", "not encrypted"],
    );
    // Without channel binding, prefer falls back to plaintext, and says so.
    let info = url("sslmode=prefer");
    let s = Session::connect(&info, None).await.unwrap();
    assert_eq!(s.transport(), Transport::Tcp);
    assert!(password_in_clear(&info, s.transport()));
    s.close(false).await.unwrap();
    assert_eq!(sql_login(&info).await.unwrap(), Transport::Tcp);
}

#[tokio::test]
async fn require_auth_refuses_methods_before_sending_anything() {
    // (user, password, require_auth, refused with)
    let cases: &[(&str, Option<&str>, &str, Option<&str>)] = &[
        (SCRAM_USER, Some(PASSWORD), "scram-sha-256", None),
        (
            MD5_USER,
            Some(PASSWORD),
            "scram-sha-256",
            Some("MD5 password hash"),
        ),
        (
            PLAIN_USER,
            Some(PASSWORD),
            "scram-sha-256",
            Some("password in cleartext"),
        ),
        (
            "postgres",
            None,
            "scram-sha-256",
            Some("without asking for a password"),
        ),
        (
            PLAIN_USER,
            Some(PASSWORD),
            "!password",
            Some("password in cleartext"),
        ),
        (MD5_USER, Some(PASSWORD), "!password", None),
        (
            SCRAM_USER,
            Some(PASSWORD),
            "password,md5",
            Some("SCRAM-SHA-256"),
        ),
        (
            "postgres",
            None,
            "!none",
            Some("without asking for a password"),
        ),
        ("postgres", None, "none", None),
        (MD5_USER, Some(PASSWORD), "md5", None),
    ];
    // Plaintext (where a cleartext password would matter most) and TLS.
    for ssl in ["sslmode=disable", "sslmode=require"] {
        for (user, password, rule, refused) in cases {
            let enc: String = url::form_urlencoded::byte_serialize(rule.as_bytes()).collect();
            let info = tcp_url(user, *password, &format!("{ssl}&require_auth={enc}"));
            let what = format!("{user} with require_auth={rule}, {ssl}");
            match refused {
                None => {
                    identify(&info)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {}", Chain(&e)));
                    sql_login(&info)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {}", Chain(&e)));
                }
                Some(says) => assert_refused(
                    &what,
                    identify(&info).await,
                    sql_login(&info).await,
                    &[&format!("require_auth={rule}"), says],
                ),
            }
        }
    }
}

#[tokio::test]
async fn check_warns_when_a_password_travels_unencrypted() {
    let dir = tempfile::tempdir().unwrap();
    let config = |sslmode: &str| {
        let path = dir.path().join(format!("{sslmode}.toml"));
        let enc: String = url::form_urlencoded::byte_serialize(PASSWORD.as_bytes()).collect();
        let url = format!(
            "postgres://{SCRAM_USER}:{}@127.0.0.1:{}/postgres?sslmode={sslmode}",
            enc.replace('+', "%20"),
            server().port()
        );
        std::fs::write(
            &path,
            format!(
                "[source]\nurl = {url:?}\n[log]\ndir = {:?}\n",
                dir.path().join("log").display().to_string()
            ),
        )
        .unwrap();
        path
    };
    let out = cli(&["check"], &config("disable")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for who in ["source", "state"] {
        assert!(
            stdout.contains(&format!(
                "warning encryption: {who}: a password is configured, but the connection to 127.0.0.1"
            )),
            "{who}: {stdout}"
        );
        assert!(
            stderr.contains("WARN") && stderr.contains(&format!("{who}: a password is configured")),
            "{who}: {stderr}"
        );
    }
    assert!(stdout.contains("(sslmode=disable)"), "{stdout}");
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));

    let out = cli(&["check"], &config("require")).await;
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(all.contains("ok      source"), "{all}");
    assert!(!all.contains("password is configured"), "{all}");
}
