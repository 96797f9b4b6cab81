//! Connecting: TCP and unix sockets, trust / cleartext / MD5 / SCRAM-SHA-256, TLS per sslmode,
//! and server errors surfaced with SQLSTATE, message and hint.

mod support;

use pgfanout::disposition::Classify;
use pgfanout::pgconn::{ConnInfo, Host};
use pgfanout::report::Chain;
use pgfanout::source::session::{Session, SessionError};
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
        assert!(
            matches!(err, SessionError::PasswordRequired { .. }),
            "{user}: {err}"
        );
        assert!(err.to_string().contains(user), "{err}");
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
