//! Every supported type round-trips: edge values inserted, the streamed text equals what
//! `SELECT col` prints, and the typed value is right.

mod support;

use pgfanout::change::{Datum, Op};
use pgfanout::source::{LogicalStream, SlotSpec};
use pgfanout::value::{parse_value, Date, Inet, Numeric, PgType, Timestamp, Value};
use support::*;

/// (column type, SQL literals of the edge values, one per row)
const CASES: &[(&str, &[&str])] = &[
    ("bool", &["true", "false"]),
    ("int2", &["-32768", "32767"]),
    ("int4", &["-2147483648", "2147483647"]),
    ("int8", &["-9223372036854775808", "9223372036854775807"]),
    ("float4", &["'NaN'", "'-Infinity'", "1.17549435e-38"]),
    ("float8", &["'Infinity'", "'-0'", "2.2250738585072014e-308"]),
    (
        "numeric",
        &[
            "'NaN'",
            "-0.000000000000000000000000000001",
            "123456789012345678901234567890.123456789",
        ],
    ),
    ("text", &["'tab\tnewline\n \"quote\" \\\\ back'", "''"]),
    ("varchar(10)", &["'é ü ß'", "'x'"]),
    ("char(4)", &["'ab'", "'abcd'"]),
    ("name", &["'a_name'", "'Mixed Case'"]),
    (
        "uuid",
        &[
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'00000000-0000-0000-0000-000000000000'",
        ],
    ),
    (
        "json",
        &["'{\"a\": [1, 2.5, null], \"b\": \"\\u00e9\"}'", "'[]'"],
    ),
    (
        "jsonb",
        &["'{\"b\": {\"c\": true}, \"a\": 1}'", "'\"str\"'"],
    ),
    ("bytea", &["'\\x00ff10'::bytea", "''::bytea"]),
    (
        "date",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 BC'",
            "'5874897-12-31'",
            "'2026-11-21'",
        ],
    ),
    ("time", &["'00:00:00'", "'24:00:00'", "'13:45:59.999999'"]),
    (
        "timetz",
        &["'00:00:00+1459'", "'23:59:59.5-1459'", "'12:00:00+05:30'"],
    ),
    (
        "timestamp",
        &[
            "'infinity'",
            "'4713-01-01 00:00:00 BC'",
            "'294276-12-31 23:59:59.999999'",
            "'2000-01-01 00:00:00'",
        ],
    ),
    (
        "timestamptz",
        &[
            "'-infinity'",
            "'2026-11-21 10:00:00.123456+05:30'",
            "'1970-01-01 00:00:00+00'",
        ],
    ),
    (
        "interval",
        &[
            "'1 year 2 mons 3 days 04:05:06.789'",
            "'-1 days +02:03:00'",
            "'-178000000 years'",
            "'0'",
        ],
    ),
    (
        "inet",
        &["'192.168.0.1'", "'10.0.0.0/8'", "'2001:db8::1/64'", "'::1'"],
    ),
    ("cidr", &["'10.0.0.0/8'", "'2001:db8::/32'"]),
    ("mood", &["'happy'", "'so-so'"]),
    ("int4[]", &["'{1,NULL,-3}'", "'{}'"]),
    (
        "text[]",
        &[
            "ARRAY['a,b', NULL, 'NULL', '', 'q\"uote', 'back\\\\slash']",
            "'{}'",
        ],
    ),
    (
        "timestamptz[]",
        &["ARRAY['2026-01-01 00:00:00+02'::timestamptz, NULL, 'infinity']"],
    ),
    ("numeric[]", &["'{1.50,NaN}'"]),
    (
        "uuid[]",
        &["ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid]"],
    ),
    ("mood[]", &["'{sad,\"so-so\"}'"]),
    ("bool[]", &["'{t,f,NULL}'"]),
    ("point", &["'(1.5,2)'"]),
];

fn column_name(i: usize) -> String {
    format!("c{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_as_text_and_as_a_typed_value() {
    let db = fresh_db("types").await;
    let client = sql(&db).await;
    // The test's own session prints values the way the walsender session does.
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET IntervalStyle = 'postgres'; SET DateStyle = 'ISO';
             CREATE TYPE mood AS ENUM ('sad', 'so-so', 'happy');",
        )
        .await
        .unwrap();
    let cols: Vec<String> = CASES
        .iter()
        .enumerate()
        .map(|(i, (ty, _))| format!("{} {ty}", column_name(i)))
        .collect();
    client
        .batch_execute(&format!(
            "CREATE TABLE t (row_no int PRIMARY KEY, {})",
            cols.join(", ")
        ))
        .await
        .unwrap();
    let rows = CASES.iter().map(|(_, v)| v.len()).max().unwrap();

    let mut stream = LogicalStream::start(&source_config(&db, Some(&["t"])), SlotSpec::Temporary)
        .await
        .unwrap();
    for r in 0..rows {
        let values: Vec<String> = CASES
            .iter()
            .map(|(ty, v)| {
                v.get(r)
                    .map(|v| format!("({v})::{ty}"))
                    .unwrap_or_else(|| "NULL".into())
            })
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO t VALUES ({r}, {})",
                values.join(", ")
            ))
            .await
            .unwrap();
    }
    let got = changes(&mut stream, rows).await;
    let types = stream.types();

    let mut checked = 0;
    for (r, change) in got.iter().enumerate() {
        let Op::Insert { new } = &change.op else {
            panic!("{:?}", change.op)
        };
        for (i, (ty, values)) in CASES.iter().enumerate() {
            let col_name = column_name(i);
            let idx = change
                .relation
                .columns
                .iter()
                .position(|c| c.name == col_name)
                .unwrap();
            // The server's text output of the column (simple-query results are text). For bool
            // this is `t`/`f`, where a `::text` cast would say `true`/`false`.
            let expected = select_text(&client, &col_name, r).await;
            let streamed = match &new.0[idx] {
                Datum::Text(b) => Some(std::str::from_utf8(b).unwrap().to_owned()),
                Datum::Null => None,
                Datum::UnchangedToast => panic!("unexpected unchanged toast"),
            };
            assert_eq!(
                streamed, expected,
                "{ty} row {r}: streamed text differs from SELECT ::text"
            );
            if r < values.len() {
                let text = streamed.as_deref().unwrap();
                let pg_type = types.pg_type(change.relation.columns[idx].type_oid);
                let value = parse_value(&pg_type, text.as_bytes())
                    .unwrap_or_else(|e| panic!("{ty} row {r}: {e}"));
                check_typed(ty, r, &pg_type, &value, text);
                checked += 1;
            }
        }
    }
    let listed: usize = CASES.iter().map(|(_, v)| v.len()).sum();
    assert_eq!(checked, listed, "every listed value is parsed");
}

async fn select_text(client: &tokio_postgres::Client, col: &str, row: usize) -> Option<String> {
    let messages = client
        .simple_query(&format!("SELECT {col} FROM t WHERE row_no = {row}"))
        .await
        .unwrap();
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
        _ => None,
    })?
}

/// The typed value is the right one (spot checks per type; the value module's unit tests go
/// through every edge of the grammar).
fn check_typed(ty: &str, row: usize, pg_type: &PgType, value: &Value<'_>, text: &str) {
    const MICROS_2000: i64 = 946_684_800_000_000;
    match (ty, row) {
        ("bool", 0) => assert!(matches!(value, Value::Bool(true))),
        ("int2", 0) => assert!(matches!(value, Value::Int2(i16::MIN))),
        ("int4", 1) => assert!(matches!(value, Value::Int4(i32::MAX))),
        ("int8", 0) => assert!(matches!(value, Value::Int8(i64::MIN))),
        ("float4", 0) => assert!(matches!(value, Value::Float4(f) if f.is_nan())),
        ("float4", 1) => assert!(matches!(value, Value::Float4(f) if *f == f32::NEG_INFINITY)),
        ("float8", 1) => {
            assert!(matches!(value, Value::Float8(f) if *f == 0.0 && f.is_sign_negative()))
        }
        ("numeric", 0) => assert!(matches!(value, Value::Numeric(Numeric::NaN))),
        ("numeric", 2) => match value {
            Value::Numeric(n) => {
                assert_eq!(n.to_string(), "123456789012345678901234567890.123456789")
            }
            other => panic!("{other:?}"),
        },
        ("text", _) | ("varchar(10)", _) | ("char(4)", _) | ("name", _) => {
            assert!(matches!(value, Value::Text(t) if t == text))
        }
        ("uuid", 0) => assert!(matches!(value, Value::Uuid(u) if u[0] == 0xa0 && u[15] == 0x11)),
        ("json", 0) => match value {
            Value::Json(j) => assert_eq!(j["b"], "é"),
            other => panic!("{other:?}"),
        },
        ("jsonb", 0) => assert!(matches!(value, Value::Json(j) if j["b"]["c"] == true)),
        ("bytea", 0) => assert!(matches!(value, Value::Bytea(b) if b == &[0x00, 0xff, 0x10])),
        ("date", 0) => assert!(matches!(value, Value::Date(Date::PosInfinity))),
        ("date", 4) => assert!(matches!(value, Value::Date(Date::Days(d)) if *d == 20_778)),
        ("time", 1) => assert!(matches!(value, Value::Time(t) if t.0 == 86_400_000_000)),
        ("timetz", 2) => match value {
            Value::TimeTz(t) => assert_eq!((t.time.0, t.offset_secs), (12 * 3_600_000_000, 19_800)),
            other => panic!("{other:?}"),
        },
        ("timestamp", 3) => assert!(matches!(value, Value::Timestamp(Timestamp::PgMicros(0)))),
        ("timestamptz", 0) => assert!(matches!(value, Value::TimestampTz(Timestamp::NegInfinity))),
        ("timestamptz", 1) => {
            // 10:00:00.123456+05:30 is 04:30:00.123456 UTC.
            let expected = 1_795_235_400 * 1_000_000 + 123_456 - MICROS_2000;
            match value {
                Value::TimestampTz(t) => {
                    assert_eq!(*t, Timestamp::PgMicros(expected));
                    assert_eq!(t.to_string(), "2026-11-21T04:30:00.123456Z");
                }
                other => panic!("{other:?}"),
            }
        }
        ("timestamptz", 2) => assert!(
            matches!(value, Value::TimestampTz(Timestamp::PgMicros(m)) if *m == -MICROS_2000)
        ),
        ("interval", 0) => match value {
            Value::Interval(iv) => {
                assert_eq!((iv.months, iv.days, iv.micros), (14, 3, 14_706_789_000))
            }
            other => panic!("{other:?}"),
        },
        ("interval", 1) => match value {
            Value::Interval(iv) => {
                assert_eq!((iv.months, iv.days, iv.micros), (0, -1, 7_380_000_000))
            }
            other => panic!("{other:?}"),
        },
        ("inet", 1) => assert!(matches!(value, Value::Inet(Inet { prefix: 8, .. }))),
        ("inet", 2) => {
            assert!(matches!(value, Value::Inet(Inet { prefix: 64, addr }) if addr.is_ipv6()))
        }
        ("cidr", 0) => assert!(matches!(value, Value::Cidr(Inet { prefix: 8, .. }))),
        ("mood", _) => {
            assert_eq!(*pg_type, PgType::Enum);
            assert!(matches!(value, Value::Enum(t) if t == text));
        }
        ("int4[]", 0) => match value {
            Value::Array(items) => {
                assert!(matches!(
                    items[..],
                    [Some(Value::Int4(1)), None, Some(Value::Int4(-3))]
                ))
            }
            other => panic!("{other:?}"),
        },
        ("int4[]", 1) => assert!(matches!(value, Value::Array(items) if items.is_empty())),
        ("text[]", 0) => match value {
            Value::Array(items) => {
                let texts: Vec<Option<&str>> = items
                    .iter()
                    .map(|v| match v {
                        Some(Value::Text(t)) => Some(&**t),
                        None => None,
                        other => panic!("{other:?}"),
                    })
                    .collect();
                assert_eq!(
                    texts,
                    [
                        Some("a,b"),
                        None,
                        Some("NULL"),
                        Some(""),
                        Some("q\"uote"),
                        Some(r"back\\slash")
                    ]
                );
            }
            other => panic!("{other:?}"),
        },
        ("timestamptz[]", 0) => match value {
            Value::Array(items) => {
                assert!(items[1].is_none());
                assert!(matches!(
                    items[2],
                    Some(Value::TimestampTz(Timestamp::PosInfinity))
                ));
            }
            other => panic!("{other:?}"),
        },
        ("mood[]", 0) => {
            assert_eq!(*pg_type, PgType::Array(Box::new(PgType::Enum)));
            assert!(
                matches!(value, Value::Array(items) if matches!(&items[1], Some(Value::Enum(t)) if t == "so-so"))
            );
        }
        ("point", 0) => assert!(matches!(value, Value::Other(t) if t == "(1.5,2)")),
        _ => {}
    }
}
