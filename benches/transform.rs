//! Mapping transformer cost per row: a 6-column mapping with a 2-condition filter over a
//! 10-column tuple.
//!
//! ```text
//! cargo bench --bench transform -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use pgfanout::change::{Column, Datum, Relation, ReplicaIdentity, Tuple};
use pgfanout::transform::{parse_expr, parse_filter, CompiledMapping, Expr};
use pgfanout::value::PgType;

/// (name, type oid, text value) of a typical application row.
const ROW: [(&str, u32, &str); 10] = [
    ("id", 20, "9223372036854"),
    ("tenant_id", 23, "4711"),
    ("uuid", 2950, "3f2a9c1e-8b7d-4e6f-a1b2-c3d4e5f60718"),
    ("email", 1043, "Alice.Smith@example.com"),
    ("created_at", 1184, "2026-03-14 15:09:26.535897+00"),
    ("name", 25, "Alice Smith"),
    ("status", 25, "active"),
    ("score", 1700, "1234.56"),
    ("is_admin", 16, "f"),
    (
        "settings",
        3802,
        r#"{"theme": "dark", "plan": "pro", "limits": {"seats": 5}}"#,
    ),
];

const COLUMNS: [(&str, &str); 6] = [
    ("id", "id"),
    ("project_id", "tenant.project_id"),
    ("display_name", "coalesce(name, lower(email), 'anonymous')"),
    ("email_hash", "hash(email)"),
    ("plan", "settings->>'plan'"),
    ("signed_up_at", "created_at::date"),
];

const FILTER: &str = "is_admin = false AND score > 100";

fn mapping() -> (CompiledMapping, Tuple) {
    let relation = Relation {
        oid: 16384,
        schema: "public".into(),
        name: "project_user".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: ROW
            .iter()
            .map(|&(name, type_oid, _)| Column {
                name: name.into(),
                type_oid,
                type_modifier: -1,
                is_key: name == "id",
            })
            .collect(),
    };
    let columns: Vec<(String, Expr)> = COLUMNS
        .iter()
        .map(|(t, e)| ((*t).to_owned(), parse_expr(e).expect("valid expression")))
        .collect();
    let filter = parse_filter(FILTER).expect("valid filter");
    let m = CompiledMapping::compile(
        &relation,
        &PgType::from_oid,
        &[("project_id", PgType::Uuid)],
        &columns,
        Some(&filter),
    )
    .expect("mapping compiles");
    let tuple = Tuple(
        ROW.iter()
            .map(|&(_, _, v)| Datum::Text(Bytes::from_static(v.as_bytes())))
            .collect(),
    );
    (m, tuple)
}

fn bench(c: &mut Criterion) {
    let (m, tuple) = mapping();
    let tenant = [Some("0b5c1a2e-0000-4000-8000-000000000001")];
    assert!(m.eval(&tuple, &tenant).expect("row evaluates").is_some());

    let mut g = c.benchmark_group("transform");
    g.throughput(Throughput::Elements(1));
    g.bench_function("eval_6_columns_2_condition_filter", |b| {
        b.iter(|| black_box(m.eval(black_box(&tuple), &tenant).ok()).is_some())
    });
    g.bench_function("eval_into_reused_buffer", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            let matched = m.eval_into(black_box(&tuple), &tenant, &mut out).ok();
            black_box(&out);
            matched
        })
    });
    g.bench_function("filter_only", |b| {
        b.iter(|| m.matches(black_box(&tuple), &tenant).ok())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
