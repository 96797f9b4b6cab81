use std::borrow::Cow;

use bytes::Bytes;
use proptest::prelude::*;

use super::parse::{CmpOp, Lit, Node};
use super::*;
use crate::change::{Column, Datum, ReplicaIdentity};

const ENUM_OID: u32 = 99_999;

/// (name, type oid)
const COLUMNS: [(&str, u32); 15] = [
    ("id", 20),
    ("email", 25),
    ("display_name", 25),
    ("settings", 3802),
    ("created_at", 1184),
    ("score", 1700),
    ("ratio", 701),
    ("is_anonymous", 16),
    ("tenancy_id", 2950),
    ("Mixed Case", 25),
    ("n", 23),
    ("d", 1082),
    ("bio", 25),
    ("status", ENUM_OID),
    ("deleted_at", 1184),
];

fn relation() -> Relation {
    Relation {
        oid: 1,
        schema: "public".into(),
        name: "project_user".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: COLUMNS
            .iter()
            .map(|&(name, type_oid)| Column {
                name: name.into(),
                type_oid,
                type_modifier: -1,
                is_key: name == "id",
            })
            .collect(),
    }
}

fn type_of(oid: u32) -> PgType {
    if oid == ENUM_OID {
        PgType::Enum
    } else {
        PgType::from_oid(oid)
    }
}

const TENANT: [(&str, PgType); 2] = [("project_id", PgType::Uuid), ("name", PgType::Text)];

fn tenant() -> Vec<Option<String>> {
    vec![Some("0b5c1a2e-0000-4000-8000-000000000001".into()), None]
}

/// A row with every column NULL except `set`.
fn row(set: &[(&str, Datum)]) -> Tuple {
    Tuple(
        COLUMNS
            .iter()
            .map(|(name, _)| {
                set.iter()
                    .find(|(n, _)| n == name)
                    .map_or(Datum::Null, |(_, d)| d.clone())
            })
            .collect(),
    )
}

fn t(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn compile(cols: &[(&str, &str)], filter: Option<&str>) -> Result<CompiledMapping, CompileError> {
    let columns: Vec<(String, Expr)> = cols
        .iter()
        .map(|(target, e)| ((*target).to_owned(), parse_expr(e).unwrap()))
        .collect();
    let filter = filter.map(|f| parse_filter(f).unwrap());
    CompiledMapping::compile(&relation(), &type_of, &TENANT, &columns, filter.as_ref())
}

/// Evaluates one expression over `set`.
fn eval1(expr: &str, set: &[(&str, Datum)]) -> Cell<'static> {
    let m = compile(&[("out", expr)], None).unwrap_or_else(|e| panic!("{e}"));
    let tuple = row(set);
    let ten = tenant();
    let out = m.eval(&tuple, &ten).unwrap().unwrap();
    out.into_iter().next().unwrap().into_owned()
}

fn text(expr: &str, set: &[(&str, Datum)]) -> Option<String> {
    match eval1(expr, set) {
        Cell::Text(s) => Some(s.into_owned()),
        Cell::Shared(s) => panic!("evaluation made a shared cell ({s:?}) for {expr}"),
        Cell::Null => None,
        Cell::Unchanged => panic!("unexpected Unchanged for {expr}"),
    }
}

/// Whether `filter` accepts the row.
fn accepts(filter: &str, set: &[(&str, Datum)]) -> bool {
    let m = compile(&[("id", "id")], Some(filter)).unwrap_or_else(|e| panic!("{e}"));
    m.matches(&row(set), &tenant()).unwrap()
}

fn compile_err(cols: &[(&str, &str)], filter: Option<&str>) -> CompileError {
    match compile(cols, filter) {
        Ok(_) => panic!("expected a compile error"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------- parser

#[test]
fn parses_every_construct() {
    for text in [
        "project_user_id",
        "\"Mixed Case\"",
        "\"with \"\"quote\"\"\"",
        "tenant.project_id",
        "tenant.\"Odd Attr\"",
        "'it''s'",
        "42",
        "-7",
        "3.25",
        ".5",
        "true",
        "FALSE",
        "NULL",
        "created_at::date",
        "x::timestamp with time zone::double precision",
        "x::int::bigint::smallint::numeric::bool::boolean::timestamptz::timestamp::uuid::jsonb::json::float8::text::int4::int8::integer",
        "(a)",
        "coalesce(display_name, lower(email), 'anonymous')",
        "CONCAT(a, ' ', b)",
        "upper(x)",
        "hash(email)",
        "settings->'a'->>'b'",
        "settings->0->>-1",
        "a = 1",
        "a <> 1 OR a != 2 OR a < 1 OR a <= 1 OR a > 1 OR a >= 1",
        "a IN ('x', 'y')",
        "a NOT IN (1)",
        "a IS NULL",
        "a is not null",
        "NOT a AND b OR c",
        "is_anonymous = false AND tenancy_id IN ('a', 'b') AND NOT (deleted_at IS NOT NULL)",
    ] {
        parse_expr(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

fn col(name: &str) -> String {
    name.into()
}

fn cmp_of(n: &Node) -> (CmpOp, String) {
    match n {
        Node::Cmp { op, left, .. } => match &**left {
            Node::Column { name, .. } => (*op, name.clone()),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn and_binds_tighter_than_or_and_not_tighter_than_and() {
    let e = parse_expr("a = 1 OR b = 2 AND c = 3").unwrap();
    let Node::Or(items) = &e.node else {
        panic!("{:?}", e.node)
    };
    assert_eq!(items.len(), 2);
    assert_eq!(cmp_of(&items[0]), (CmpOp::Eq, col("a")));
    let Node::And(inner) = &items[1] else {
        panic!("{:?}", items[1])
    };
    assert_eq!(cmp_of(&inner[0]).1, "b");
    assert_eq!(cmp_of(&inner[1]).1, "c");

    let e = parse_expr("NOT a = 1 AND b").unwrap();
    let Node::And(items) = &e.node else {
        panic!("{:?}", e.node)
    };
    assert!(matches!(&items[0], Node::Not { inner, .. } if matches!(**inner, Node::Cmp { .. })));
    assert!(matches!(&items[1], Node::Column { name, .. } if name == "b"));
}

#[test]
fn json_arrow_binds_tighter_than_comparison_and_cast_tighter_than_arrow() {
    let e = parse_expr("settings->>'plan' = 'pro'").unwrap();
    let Node::Cmp { left, right, .. } = &e.node else {
        panic!("{:?}", e.node)
    };
    assert!(matches!(&**left, Node::Json { as_text: true, .. }));
    assert!(matches!(&**right, Node::Lit { lit: Lit::Str(s), .. } if s == "pro"));

    let e = parse_expr("(settings->>'n')::int").unwrap();
    assert!(matches!(&e.node, Node::Cast { inner, ty: PgType::Int4, .. }
        if matches!(**inner, Node::Json { .. })));
}

#[test]
fn identifiers_fold_unless_quoted_and_references_are_listed_once() {
    let e =
        parse_expr("concat(Email, \"Mixed Case\", EMAIL, tenant.Project_ID, tenant.project_id)")
            .unwrap();
    assert_eq!(e.columns().collect::<Vec<_>>(), ["email", "Mixed Case"]);
    assert_eq!(e.tenant_attributes().collect::<Vec<_>>(), ["project_id"]);
    assert_eq!(parse_expr("\"Id\"").unwrap().as_column(), Some("Id"));
    assert_eq!(parse_expr("ID").unwrap().as_column(), Some("id"));
    let e = parse_expr("'it''s'").unwrap();
    assert!(matches!(&e.node, Node::Lit { lit: Lit::Str(s), .. } if s == "it's"));
    let e = parse_expr("-007.50").unwrap();
    assert!(matches!(&e.node, Node::Lit { lit: Lit::Decimal(s), .. } if s == "-7.50"));
    let e = parse_expr("99999999999999999999").unwrap();
    assert!(matches!(
        &e.node,
        Node::Lit {
            lit: Lit::Decimal(_),
            ..
        }
    ));
}

#[test]
fn parse_errors_give_the_position_and_what_was_expected() {
    let cases: [(&str, usize, &str); 14] = [
        (
            "coalesce(a, b",
            13,
            "expected ')' after the arguments of coalesce, found end of input",
        ),
        (
            "coalesce(a b)",
            11,
            "expected ')' after the arguments of coalesce, found 'b'",
        ),
        ("a = ", 4, "expected an expression, found end of input"),
        ("", 0, "expected an expression, found end of input"),
        ("'abc", 0, "closing '"),
        ("\"abc", 0, "closing \""),
        ("frobnicate(x)", 0, "unknown function 'frobnicate'"),
        ("lower(a, b)", 0, "lower takes exactly one argument, got 2"),
        ("a = 1 = 2", 6, "comparisons do not chain"),
        ("x::numeric(10,2)", 10, "type modifiers"),
        ("x::money", 3, "expected a type"),
        ("a IS 5", 5, "NULL or NOT NULL after IS"),
        ("(a = 1", 6, "expected ')' to close the '(' at 0"),
        ("éé = ?", 5, "found '?'"),
    ];
    for (text, pos, msg) in cases {
        let e = parse_expr(text).expect_err(text);
        assert_eq!(e.position, pos, "{text}: {e}");
        assert!(e.message.contains(msg), "{text}: {e}");
        assert!(e.to_string().starts_with(&format!("at {pos}: ")), "{e}");
    }
    for text in [
        "a b",
        "x->",
        "x->>y",
        "tenant.",
        "other.col",
        "AND",
        "a IN ()",
        "a NOT b",
        "- a",
        "1x",
        "x::timestamp with",
        "x::double",
    ] {
        assert!(parse_expr(text).is_err(), "{text}");
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for text in [
        format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000)),
        "NOT ".repeat(10_000) + "a",
        "a".to_owned() + &"::int".repeat(10_000),
        "a".to_owned() + &"->'k'".repeat(10_000),
        "a".to_owned() + &" IS NULL".repeat(10_000),
        "lower(".repeat(10_000),
    ] {
        let e = parse_expr(&text).unwrap_err();
        assert!(e.message.contains("nested too deeply"), "{e}");
    }
    // Long flat chains are fine.
    let flat = vec!["a = 1"; 2_000].join(" AND ");
    parse_filter(&flat).unwrap();
}

proptest! {
    #[test]
    fn parsing_arbitrary_text_never_panics(s in ".{0,200}") {
        let _ = parse_expr(&s);
        let _ = parse_filter(&s);
    }

    #[test]
    fn parsing_and_compiling_token_soup_never_panics(
        toks in proptest::collection::vec(prop_oneof![
            Just("id"), Just("email"), Just("settings"), Just("created_at"), Just("score"),
            Just("tenant.project_id"), Just("'x'"), Just("'2024-01-01'"), Just("1"), Just("-2.5"),
            Just("NULL"), Just("true"), Just("("), Just(")"), Just(","), Just("="), Just("<>"),
            Just("<"), Just(">="), Just("AND"), Just("OR"), Just("NOT"), Just("IN"), Just("IS"),
            Just("::int"), Just("::date"), Just("::text"), Just("->"), Just("->>"),
            Just("coalesce("), Just("lower("), Just("concat("), Just("hash("), Just("\""),
        ], 0..24)
    ) {
        let text = toks.join(" ");
        if let Ok(e) = parse_expr(&text) {
            if let Ok(m) = CompiledMapping::compile(
                &relation(), &type_of, &TENANT, &[("c".into(), e.clone())], None)
            {
                let tuple = row(&[("id", t("1")), ("email", t("a@b")), ("settings", t("{\"k\":1}")),
                    ("created_at", t("2024-01-01 00:00:00+00")), ("score", t("1.5"))]);
                let _ = m.eval(&tuple, &tenant());
            }
            let f = Filter(e);
            let _ = CompiledMapping::compile(&relation(), &type_of, &TENANT, &[], Some(&f));
        }
    }
}

// ---------------------------------------------------------------- compile

#[test]
fn compile_reports_every_problem_with_target_column_and_expression() {
    let e = compile_err(
        &[
            ("id", "project_user_id"),
            ("project", "tenant.branch_id"),
            ("plan", "id->>'plan'"),
            ("ok", "email"),
            ("two", "concat(emal, tenant.nope)"),
        ],
        Some("is_anonymous = 'maybe' AND nonexistent IS NULL"),
    );
    let msgs: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(e.problems.len(), 7, "{e}");
    assert!(msgs[0].contains("column id = \"project_user_id\", at 0: unknown source column \"project_user_id\" in public.project_user"), "{}", msgs[0]);
    assert!(
        msgs[1].contains("unknown tenant attribute \"branch_id\"; known: project_id, name"),
        "{}",
        msgs[1]
    );
    assert!(
        msgs[2].contains("column plan")
            && msgs[2].contains("->> needs json or jsonb")
            && msgs[2].contains("column \"id\" is int8"),
        "{}",
        msgs[2]
    );
    assert!(
        msgs[3].contains("\"emal\"") && msgs[4].contains("\"nope\""),
        "{e}"
    );
    assert!(
        msgs[5].starts_with("filter \"is_anonymous")
            && msgs[5].contains("'maybe' is not a valid bool"),
        "{}",
        msgs[5]
    );
    assert!(msgs[6].contains("\"nonexistent\""), "{}", msgs[6]);
    assert_eq!(e.problems[6].position, 27);
    assert!(
        e.to_string()
            .starts_with("the mapping of public.project_user has 7 problems\n  - column id"),
        "{e}"
    );
}

#[test]
fn compile_rejects_type_errors() {
    for (expr, msg) in [
        (
            "email = 1",
            "cannot compare column \"email\" (text) with a literal (int4)",
        ),
        ("settings = settings", "jsonb cannot be compared"),
        ("created_at > id", "cannot compare"),
        ("n = 'seven'", "'seven' is not a valid int4"),
        ("created_at < 'yesterday'", "is not a valid timestamptz"),
        ("status < 'b'", "only = and <>"),
        ("lower(id)", "lower needs text, but column \"id\" is int8"),
        (
            "coalesce(id, email)",
            "coalesce arguments have no common type: int8 and text",
        ),
        (
            "settings::int",
            "cannot convert column \"settings\" of type jsonb to int4",
        ),
        ("'x'::int", "literal 'x' is not a valid int4"),
        ("tenancy_id IN ('not-a-uuid')", "is not a valid uuid"),
    ] {
        let e = compile_err(&[("c", expr)], None);
        assert!(e.to_string().contains(msg), "{expr}: {e}");
    }
    let e = compile_err(&[("id", "id")], Some("email"));
    assert!(
        e.to_string()
            .contains("expected a condition (a boolean), but column \"email\" is text"),
        "{e}"
    );
    let e = compile_err(&[("id", "id"), ("id", "n")], None);
    assert!(
        e.to_string().contains("target column id is mapped twice"),
        "{e}"
    );
    let e = compile_err(&[("c", "\"mixed case\"")], None);
    assert!(e.to_string().contains("write \"Mixed Case\""), "{e}");
}

#[test]
fn output_types_default_from_source_and_follow_casts() {
    let m = compile(
        &[
            ("id", "id"),
            ("day", "created_at::date"),
            ("name", "coalesce(display_name, lower(email), 'anonymous')"),
            ("plan", "settings->>'plan'"),
            ("obj", "settings->'a'"),
            ("big", "coalesce(n, score)"),
            ("when", "coalesce(d, created_at)"),
            ("lit", "'x'"),
            ("flag", "n > 3"),
            ("pid", "tenant.project_id"),
            ("status", "status"),
        ],
        None,
    )
    .unwrap();
    let types: Vec<(&str, &str)> = m
        .output_types()
        .iter()
        .map(|(n, t)| (n.as_str(), t.name()))
        .collect();
    assert_eq!(
        types,
        [
            ("id", "int8"),
            ("day", "date"),
            ("name", "text"),
            ("plan", "text"),
            ("obj", "jsonb"),
            ("big", "numeric"),
            ("when", "timestamptz"),
            ("lit", "text"),
            ("flag", "bool"),
            ("pid", "uuid"),
            ("status", "enum"),
        ]
    );
    assert_eq!(m.pass_through()[0], Some(0));
    assert_eq!(m.pass_through()[1], None);
    assert_eq!(m.pass_through()[10], Some(13));
}

// ---------------------------------------------------------------- eval

#[test]
fn plain_columns_and_tenant_attributes_pass_through_borrowed() {
    let m = compile(
        &[
            ("id", "id"),
            ("pid", "tenant.project_id"),
            ("n", "tenant.name"),
        ],
        None,
    )
    .unwrap();
    let tuple = row(&[("id", t("42"))]);
    let ten = tenant();
    let out = m.eval(&tuple, &ten).unwrap().unwrap();
    assert!(matches!(&out[0], Cell::Text(Cow::Borrowed("42"))));
    assert_eq!(
        out[1].as_str(),
        Some("0b5c1a2e-0000-4000-8000-000000000001")
    );
    assert_eq!(out[2], Cell::Null);
    assert_eq!(
        text("\"Mixed Case\"", &[("Mixed Case", t("MC"))]).as_deref(),
        Some("MC")
    );
}

#[test]
fn text_functions() {
    let set = [
        ("email", t("Alice@Example.COM")),
        ("display_name", t("Ünïcode Ä")),
    ];
    assert_eq!(text("lower(email)", &set).unwrap(), "alice@example.com");
    assert_eq!(text("upper(email)", &set).unwrap(), "ALICE@EXAMPLE.COM");
    assert_eq!(text("lower(display_name)", &set).unwrap(), "ünïcode ä");
    assert_eq!(text("upper(display_name)", &set).unwrap(), "ÜNÏCODE Ä");
    assert_eq!(text("lower(bio)", &set), None);
    assert_eq!(
        text("concat(display_name, ' <', email, '>', bio, n, true)", &set).unwrap(),
        "Ünïcode Ä <Alice@Example.COM>t"
    );
    assert_eq!(text("concat(bio, NULL)", &set).unwrap(), "");
    assert_eq!(
        text("coalesce(bio, lower(email), 'anonymous')", &set).unwrap(),
        "alice@example.com"
    );
    assert_eq!(
        text("coalesce(bio, display_name::text, 'anonymous')", &[]).unwrap(),
        "anonymous"
    );
    assert_eq!(text("coalesce(bio, NULL)", &[]), None);
    assert_eq!(
        text("coalesce(n, score)", &[("score", t("2.50"))]).unwrap(),
        "2.50"
    );
    assert_eq!(
        text("coalesce(d, created_at)", &[("d", t("2024-02-29"))]).unwrap(),
        "2024-02-29 00:00:00+00"
    );
}

#[test]
fn hash_is_hex_sha256_of_the_text_and_keeps_null() {
    assert_eq!(
        text("hash(email)", &[("email", t("abc"))]).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        text("hash('')", &[]).unwrap(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(text("hash(email)", &[]), None);
}

#[test]
fn casts_convert_text_to_text() {
    let set = [
        ("created_at", t("2024-03-01 01:30:00.25+00")),
        ("email", t(" 17 ")),
        ("score", t("-2.5")),
        ("ratio", t("2.5")),
        ("is_anonymous", t("t")),
        ("n", t("0")),
        ("d", t("0044-03-15 BC")),
        ("display_name", t("2024-01-01T10:00:00+02:00")),
        ("bio", t("0B5C1A2E00004000800000000000000A")),
    ];
    for (expr, want) in [
        ("created_at::date", "2024-03-01"),
        ("created_at::timestamp", "2024-03-01 01:30:00.25"),
        ("created_at::text", "2024-03-01 01:30:00.25+00"),
        ("email::int", "17"),
        ("email::bigint::numeric", "17"),
        ("score::int", "-3"),
        ("ratio::int", "2"),
        ("'3.5'::float8::int", "4"),
        ("score::float8", "-2.5"),
        ("n::float8", "0"),
        ("'1e300'::float8", "1e+300"),
        ("'0.00001'::double precision", "1e-05"),
        ("ratio::numeric", "2.5"),
        ("is_anonymous::text", "true"),
        ("is_anonymous::int", "1"),
        ("n::bool", "f"),
        ("'yes'::boolean", "t"),
        ("d::timestamptz", "0044-03-15 00:00:00+00 BC"),
        ("display_name::timestamptz", "2024-01-01 08:00:00+00"),
        ("display_name::timestamptz::date", "2024-01-01"),
        ("bio::uuid", "0b5c1a2e-0000-4000-8000-00000000000a"),
        ("'{\"a\": [1, 2]}'::jsonb->'a'->>1", "2"),
        ("'007'::int", "7"),
        ("12::text", "12"),
        ("'1.50'::numeric", "1.50"),
    ] {
        assert_eq!(text(expr, &set).as_deref(), Some(want), "{expr}");
    }
    assert_eq!(text("bio::int", &[]), None);
}

#[test]
fn a_failed_cast_names_the_target_column_but_not_the_value() {
    let m = compile(&[("id", "id"), ("age", "email::int")], None).unwrap();
    let tuple = row(&[("email", t("secret@example.com"))]);
    let err = m.eval(&tuple, &tenant()).unwrap_err();
    let msg = crate::report::Chain(&err).to_string();
    assert!(
        msg.contains("mapped column age of public.project_user"),
        "{msg}"
    );
    assert!(msg.contains("int4"), "{msg}");
    assert!(!msg.contains("secret"), "{msg}");
    assert!(matches!(err, EvalError::Value { place: Place::Column(ref c), .. } if c == "age"));

    let tuple = row(&[("email", t("99999999999"))]);
    let msg = crate::report::Chain(&m.eval(&tuple, &tenant()).unwrap_err()).to_string();
    assert!(
        msg.contains("out of range") && !msg.contains("9999"),
        "{msg}"
    );
}

#[test]
fn three_valued_logic() {
    let none: [(&str, Datum); 0] = [];
    let one = [("n", t("1"))];
    // NULL comparisons are NULL, which does not match, and neither does its negation.
    assert!(!accepts("n = 1", &none));
    assert!(!accepts("NOT (n = 1)", &none));
    assert!(!accepts("n <> 1", &none));
    assert!(accepts("n IS NULL", &none));
    assert!(!accepts("n IS NOT NULL", &none));
    assert!(accepts("n = 1 OR true", &none));
    assert!(!accepts("n = 1 OR false", &none));
    assert!(!accepts("n = 1 AND true", &none));
    assert!(accepts("NOT (n = 1 AND false)", &none));
    assert!(!accepts("NOT (n = 1 OR false)", &none));
    assert!(!accepts("NULL", &none));
    // IN with NULLs: a match wins, otherwise NULL poisons the result.
    assert!(accepts("n IN (2, NULL, 1)", &one));
    assert!(!accepts("n IN (2, NULL)", &one));
    assert!(!accepts("n NOT IN (2, NULL)", &one));
    assert!(accepts("n NOT IN (2, 3)", &one));
    assert!(!accepts("n NOT IN (1, 3)", &one));
    assert!(!accepts("n IN (1, 2)", &none));
    assert_eq!(text("n = 1", &none), None);
    assert_eq!(text("n = 1", &one).as_deref(), Some("t"));
    assert_eq!(text("n IS NULL", &one).as_deref(), Some("f"));
}

#[test]
fn the_example_filter() {
    let f = "is_anonymous = false AND tenancy_id IN ('0B5C1A2E-0000-4000-8000-000000000001', \
             '0b5c1a2e-0000-4000-8000-000000000002') AND NOT (deleted_at IS NOT NULL)";
    let good = [
        ("is_anonymous", t("f")),
        ("tenancy_id", t("0b5c1a2e-0000-4000-8000-000000000001")),
    ];
    assert!(accepts(f, &good));
    let mut anon = good.clone();
    anon[0].1 = t("t");
    assert!(!accepts(f, &anon));
    let mut other = good.clone();
    other[1].1 = t("0b5c1a2e-0000-4000-8000-000000000003");
    assert!(!accepts(f, &other));
    let mut deleted = good.to_vec();
    deleted.push(("deleted_at", t("2024-01-01 00:00:00+00")));
    assert!(!accepts(f, &deleted));
    assert!(accepts("is_anonymous", &[("is_anonymous", t("t"))]));
    assert!(accepts("NOT is_anonymous", &[("is_anonymous", t("f"))]));
    assert!(accepts(
        "tenancy_id = tenant.project_id",
        &[("tenancy_id", t("0b5c1a2e-0000-4000-8000-000000000001"))]
    ));

    let m = compile(&[("id", "id"), ("email", "email")], Some(f)).unwrap();
    let tuple = row(&anon);
    assert_eq!(m.eval(&tuple, &tenant()).unwrap(), None);
    let ten = tenant();
    let mut buf = Vec::new();
    assert!(!m.eval_into(&tuple, &ten, &mut buf).unwrap());
    assert!(buf.is_empty());
    let tuple = row(&good);
    assert!(m.eval_into(&tuple, &ten, &mut buf).unwrap());
    assert_eq!(buf, [Cell::Null, Cell::Null]);
}

#[test]
fn numbers_compare_numerically_across_int_numeric_and_float() {
    let set = [
        ("id", t("9223372036854775807")),
        ("n", t("10")),
        ("score", t("10.000")),
        ("ratio", t("9.5")),
    ];
    for f in [
        "n = score",
        "n = 10.0",
        "score = 10",
        "score > 9.99",
        "score < 10.0001",
        "ratio < n",
        "ratio < score",
        "ratio = 9.5",
        "ratio > 9",
        "n > 9",
        "n >= 10 AND n <= 10",
        "id = 9223372036854775807",
        "id > n",
        "id < 99999999999999999999",
        "score IN (1, 10)",
        "-1 < n",
        "n > '9'",
        "score <> 'NaN'",
    ] {
        assert!(accepts(f, &set), "{f}");
    }
    for f in [
        "n = 9",
        "score > 10",
        "ratio >= score",
        "n < -1.5",
        "score = 'NaN'",
    ] {
        assert!(!accepts(f, &set), "{f}");
    }
    // Lexical order would get these wrong.
    assert!(accepts("score > 9", &[("score", t("10"))]));
    assert!(accepts("score < -9", &[("score", t("-10.5"))]));
    assert!(accepts("score > 0.45", &[("score", t("0.5"))]));
    assert!(accepts("score > 1000000", &[("score", t("NaN"))]));
    assert!(accepts("ratio > 1000000", &[("ratio", t("Infinity"))]));
    assert!(accepts("ratio > 1000000", &[("ratio", t("NaN"))]));
}

#[test]
fn timestamps_compare_by_instant_across_offsets_and_with_dates() {
    let set = [
        ("created_at", t("2024-01-01 10:00:00+00")),
        ("d", t("2024-01-01")),
    ];
    for f in [
        "created_at = '2024-01-01 12:00:00+02'",
        "created_at = '2024-01-01T05:30:00-04:30'",
        "created_at < '2024-01-01 10:00:00.000001+00'",
        "created_at > '2024-01-01 12:00:00+03'",
        "created_at > d",
        "created_at::date = d",
        "d < created_at",
        "d >= '2023-12-31'",
        "d < 'infinity'",
        "created_at > '-infinity'",
        "created_at IN ('2024-01-01 11:00:00+01')",
    ] {
        assert!(accepts(f, &set), "{f}");
    }
    assert!(!accepts("created_at > '2024-01-01 11:00:00+00'", &set));
}

#[test]
fn text_compares_by_bytes_and_enums_by_label() {
    let set = [("email", t("b")), ("status", t("active"))];
    assert!(accepts("email > 'a'", &set));
    assert!(accepts("email < 'ba'", &set));
    assert!(accepts("email > 'B'", &set));
    assert!(accepts("status = 'active'", &set));
    assert!(accepts("status NOT IN ('banned')", &set));
    assert!(accepts("lower(upper(email)) = email", &set));
}

#[test]
fn json_access_on_nested_objects_and_arrays() {
    let doc = r#"{"plan": "pro", "n": 12345678901234567890.5, "nested": {"a": {"b": "deep \"quoted\" \u00e9"}},
        "list": [10, {"k": null}, "x"], "nil": null, "dup": 1, "dup": 2, "esc\"key": true}"#;
    let set = [("settings", t(doc))];
    for (expr, want) in [
        ("settings->>'plan'", Some("pro")),
        ("settings->'plan'", Some("\"pro\"")),
        ("settings->>'n'", Some("12345678901234567890.5")),
        ("settings->'nested'->'a'->>'b'", Some("deep \"quoted\" é")),
        (
            "settings->'nested'->'a'",
            Some("{\"b\": \"deep \\\"quoted\\\" \\u00e9\"}"),
        ),
        ("settings->'list'->>0", Some("10")),
        ("settings->'list'->>-1", Some("x")),
        ("settings->'list'->1->>'k'", None),
        ("settings->'list'->1->'k'", Some("null")),
        ("settings->'list'->>7", None),
        ("settings->>'nil'", None),
        ("settings->'nil'", Some("null")),
        ("settings->>'missing'", None),
        ("settings->'plan'->>'x'", None),
        ("settings->>'dup'", Some("2")),
        ("settings->>'esc\"key'", Some("true")),
        ("(settings->>'dup')::int", Some("2")),
    ] {
        assert_eq!(text(expr, &set).as_deref(), want, "{expr}");
    }
    assert!(accepts("settings->>'plan' = 'pro'", &set));
    assert!(accepts("(settings->'nested'->'a'->>'b') IS NOT NULL", &set));
    assert_eq!(text("settings->>'plan'", &[]), None);

    let m = compile(&[("p", "settings->>'plan'")], None).unwrap();
    let tuple = row(&[("settings", t("{\"plan\": "))]);
    let err = m.eval(&tuple, &tenant()).unwrap_err();
    assert!(matches!(err, EvalError::Json { .. }), "{err}");
}

#[test]
fn unchanged_toast_passes_through_as_a_marker() {
    let m = compile(
        &[
            ("bio", "bio"),
            ("bio_lower", "lower(bio)"),
            ("bio_hash", "hash(bio)"),
            ("mixed", "concat(email, bio)"),
            ("first", "coalesce(email, bio)"),
            ("has_bio", "bio IS NOT NULL"),
            ("email", "email"),
        ],
        None,
    )
    .unwrap();
    let tuple = row(&[("bio", Datum::UnchangedToast), ("email", t("e"))]);
    let ten = tenant();
    let out = m.eval(&tuple, &ten).unwrap().unwrap();
    assert_eq!(
        out,
        [
            Cell::Unchanged,
            Cell::Unchanged,
            Cell::Unchanged,
            Cell::Unchanged,
            Cell::Text("e".into()),
            Cell::Text("t".into()),
            Cell::Text("e".into()),
        ]
    );

    // A filter decided without the value is fine; one that needs it is an error naming it.
    assert!(accepts(
        "bio IS NOT NULL",
        &[("bio", Datum::UnchangedToast)]
    ));
    assert!(!accepts(
        "bio = 'x' AND false",
        &[("bio", Datum::UnchangedToast)]
    ));
    assert!(accepts(
        "bio = 'x' OR true",
        &[("bio", Datum::UnchangedToast)]
    ));
    let m = compile(&[("id", "id")], Some("bio = 'x'")).unwrap();
    let err = m
        .matches(&row(&[("bio", Datum::UnchangedToast)]), &tenant())
        .unwrap_err();
    assert!(
        matches!(err, EvalError::UnchangedInFilter { ref column, .. } if column == "bio"),
        "{err}"
    );
}

#[test]
fn malformed_rows_are_errors() {
    let m = compile(&[("id", "id"), ("e", "email")], None).unwrap();
    let short = Tuple(vec![t("1")]);
    assert!(matches!(
        m.eval(&short, &tenant()),
        Err(EvalError::TupleShape {
            got: 1,
            expected: 15,
            ..
        })
    ));
    let bad = row(&[("email", Datum::Text(Bytes::from_static(b"\xff")))]);
    let err = m.eval(&bad, &tenant()).unwrap_err();
    assert!(err.to_string().contains("source column email"), "{err}");
    let m = compile(&[("p", "tenant.name")], None).unwrap();
    let err = m.eval(&row(&[]), &[Some("only one")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("tenant attribute name was not supplied"),
        "{err}"
    );
    let m = compile(&[("flag", "is_anonymous")], Some("is_anonymous")).unwrap();
    let err = m
        .eval(&row(&[("is_anonymous", t("maybe"))]), &tenant())
        .unwrap_err();
    assert!(
        matches!(
            err,
            EvalError::Value {
                place: Place::Filter,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_large_value_outlives_its_change_shared_not_copied() {
    let big = "x".repeat(SHARE_AT);
    let doc = format!("{{\"plan\": \"{big}\"}}");
    let tuple = row(&[
        ("display_name", t(&big)),
        ("bio", t("small")),
        ("settings", t(&doc)),
    ]);
    let m = compile(
        &[
            ("name", "display_name"),
            ("bio", "bio"),
            ("plan", "settings->>'plan'"),
            ("upper", "upper(display_name)"),
        ],
        None,
    )
    .unwrap();
    let cells: Vec<Cell<'static>> = m
        .eval(&tuple, &tenant())
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|c| c.into_static(&tuple))
        .collect();
    let Datum::Text(name_buf) = &tuple.0[2] else {
        unreachable!()
    };
    // The column's own buffer, and a slice of the JSON document's.
    match &cells[0] {
        Cell::Shared(s) => assert_eq!(s.bytes().as_ptr(), name_buf.as_ptr()),
        other => panic!("not shared: {other:?}"),
    }
    assert!(matches!(&cells[1], Cell::Text(Cow::Owned(s)) if s == "small"));
    match &cells[2] {
        Cell::Shared(s) => assert_eq!(s.as_str(), big),
        other => panic!("not shared: {other:?}"),
    }
    // Computed text is not in the tuple: copied.
    assert!(matches!(&cells[3], Cell::Text(Cow::Owned(_))));
    // Equal by text, however held; the Debug of a shared value shows its length only.
    assert_eq!(cells[0], Cell::Text(Cow::Borrowed(big.as_str())));
    assert_ne!(cells[0], cells[3]);
    assert_eq!(
        format!("{:?}", cells[0]),
        format!("Shared(SharedText({} bytes))", SHARE_AT)
    );
}

#[test]
fn a_cell_is_no_larger_than_its_text() {
    // Rows are vectors of cells on the hot path: the rare shared variant is boxed so that it
    // does not grow every cell.
    assert_eq!(
        std::mem::size_of::<Cell<'static>>(),
        std::mem::size_of::<Cow<'static, str>>()
    );
}
