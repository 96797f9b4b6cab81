//! Mapping transformers: the per-tenant reshaping of a source row into a target row.
//!
//! ```text
//!   mapping text (config) ──parse_expr / parse_filter──▶ Expr, Filter      (once, at start)
//!        + Relation, column types, tenant attributes ──compile──▶ CompiledMapping
//!                                                                    │ (names → indexes,
//!                                                                    │  types inferred, casts,
//!                                                                    │  constants folded)
//!   Tuple (source row, text) ─┐                                      ▼
//!   tenant attributes ────────┴──▶ filter ──rejects──▶ None
//!                                    │ matches
//!                                    ▼
//!                             column expressions ──▶ [Cell] (text / NULL / Unchanged)
//! ```
//!
//! **Why a hand-written parser rather than an expression crate.** The syntax is SQL's:
//! `'it''s'`, `"Quoted Name"`, `x::date`, `settings->>'plan'`, `IN (…)`, `IS NOT NULL`,
//! case-insensitive keywords, and SQL's three-valued logic. General expression crates
//! (evalexpr, rhai, cel…) speak their own syntax and two-valued logic, so we would translate
//! into them and still get NULL and typed comparisons wrong; a full SQL parser (sqlparser)
//! gives a huge AST of which we would reject nearly every node. And the hot path wants the
//! split they do not offer: compile once — resolve column names to tuple indexes, infer types
//! from the relation, fold constants, pre-parse comparison literals, report every problem
//! at start — then evaluate per row over the tuple's text with no lookups and, for
//! pass-through columns, no copies. The grammar is small (see [`parse`]'s module comment), so
//! a recursive-descent parser is a few hundred lines with precise error positions.
//!
//! **Values.** Everything stays PostgreSQL text of the value's static type — what pgoutput
//! sends and what the writers send on — borrowed from the tuple when unchanged. Comparisons
//! parse each side into a typed key (integers, exact decimals, floats, booleans, uuids,
//! dates/timestamps as UTC microseconds, text by bytes as in the C collation); casts convert
//! text to text through [`crate::value`]'s parsers. Untyped literals (`'2024-01-01'`, `NULL`)
//! take the type of their context, as in PostgreSQL, and a literal that does not fit is a
//! compile error. The walsender runs with `TimeZone=UTC`, so `timestamptz::date` is the UTC
//! date and `timestamp` ↔ `timestamptz` conversions assume UTC.
//!
//! **Unchanged TOAST.** pgoutput does not resend a TOASTed value an update left alone. An
//! output that depends on such a value is [`Cell::Unchanged`] and the writer keeps the
//! target's value (for a row the target does not hold, the fan-out reads the value from the
//! source and evaluates the mapping again). That is exact for expressions over that one column (pass-through, casts,
//! `lower`, `hash`, JSON access); for an expression that also reads other columns the target
//! keeps its old value even if the other inputs changed — callers that have the old row
//! (REPLICA IDENTITY FULL) should substitute its values before evaluating. `IS NULL` on an
//! unchanged value is decided (a TOASTed value is not null); a filter whose outcome depends on
//! one is [`EvalError::UnchangedInFilter`].
//!
//! **Errors never carry row values**, only the mapped column, the source column and the type.

mod compile;
mod eval;
mod json;
mod parse;
#[cfg(test)]
mod tests;
mod typed;

use std::fmt;
use std::str::FromStr;

use crate::change::{Relation, Tuple};
use crate::problems::Problems;
use crate::value::{PgType, ValueError};

use compile::{CExpr, CPred, Compiler, Scope, Ty};
use eval::{Ctx, Fail, Tri};

pub use eval::{Cell, SharedText, SHARE_AT};
pub use parse::{ParseError, MAX_DEPTH};

/// A parsed value expression (the right-hand side of a `[mappings.columns]` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    text: String,
    node: parse::Node,
    columns: Vec<String>,
    tenant_attributes: Vec<String>,
}

impl Expr {
    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Source columns read, each once, in order of appearance.
    pub fn columns(&self) -> impl Iterator<Item = &str> + '_ {
        self.columns.iter().map(String::as_str)
    }

    /// Tenant attributes read (`tenant.x`), each once.
    pub fn tenant_attributes(&self) -> impl Iterator<Item = &str> + '_ {
        self.tenant_attributes.iter().map(String::as_str)
    }

    /// The bare source column `name` (a `columns = "*"` mapping's expression for each column).
    pub fn column(name: &str) -> Expr {
        Expr {
            text: crate::sql::quote_ident(name),
            node: parse::Node::Column {
                name: name.to_owned(),
                pos: 0,
            },
            columns: vec![name.to_owned()],
            tenant_attributes: Vec::new(),
        }
    }

    /// `Some(name)` when the expression is a bare source column.
    pub fn as_column(&self) -> Option<&str> {
        match &self.node {
            parse::Node::Column { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// A parsed row filter: an expression that must be a condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Expr);

impl Filter {
    pub fn text(&self) -> &str {
        self.0.text()
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.columns()
    }

    pub fn tenant_attributes(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.tenant_attributes()
    }
}

/// Parses a column expression such as `coalesce(display_name, lower(email), 'anonymous')`.
pub fn parse_expr(text: &str) -> Result<Expr, ParseError> {
    let node = parse::parse(text)?;
    let (columns, tenant_attributes) = node.references();
    Ok(Expr {
        text: text.to_owned(),
        node,
        columns,
        tenant_attributes,
    })
}

/// Why `text` cannot be a mapping's column expression (`filter`: its row filter) while
/// loading the configuration, or `Ok`: it must parse, and it may read `tenant.x` only when
/// there is a `[tenants]` section (`has_tenants`) to supply the attributes. What needs the
/// source's catalog (columns, types) is checked when the mapping is compiled.
pub fn check_expression(text: &str, filter: bool, has_tenants: bool) -> Result<(), String> {
    let what = if filter { "filter" } else { "expression" };
    let expr = parse_expr(text).map_err(|e| format!("cannot parse the {what} {e}"))?;
    let attributes: Vec<&str> = expr.tenant_attributes().collect();
    if has_tenants || attributes.is_empty() {
        return Ok(());
    }
    let read: Vec<String> = attributes.iter().map(|a| format!("tenant.{a}")).collect();
    Err(format!(
        "reads {}, but there is no [tenants] section to supply tenant attributes; add one whose query returns {}, or remove the reference",
        read.join(", "),
        attributes.join(", ")
    ))
}

/// Parses a row filter such as `is_anonymous = false AND tenancy_id IN ('a', 'b')`. That it
/// is a condition is checked by [`CompiledMapping::compile`], which knows the column types.
pub fn parse_filter(text: &str) -> Result<Filter, ParseError> {
    parse_expr(text).map(Filter)
}

impl FromStr for Expr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_expr(s)
    }
}

impl FromStr for Filter {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_filter(s)
    }
}

/// One problem found while compiling a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The target column whose expression has the problem; `None` for the filter.
    pub target: Option<String>,
    /// The expression text.
    pub expression: String,
    /// Character offset into the expression.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Some(t) => write!(f, "column {t} = {:?}", self.expression)?,
            None => write!(f, "filter {:?}", self.expression)?,
        }
        write!(f, ", at {}: {}", self.position, self.message)
    }
}

/// Every problem of a mapping, so that one run of `pgfanout check` shows them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CompileError {
    /// `schema.table` of the source relation.
    pub relation: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "the mapping of {} has {n} problem{}",
            self.relation,
            if n == 1 { "" } else { "s" }
        )?;
        let list: Problems = self.problems.iter().map(Problem::to_string).collect();
        write!(f, "{list}")
    }
}

/// Which part of the mapping an evaluation error arose in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Column(String),
    Filter,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Column(c) => write!(f, "mapped column {c}"),
            Place::Filter => f.write_str("the filter"),
        }
    }
}

/// A row the mapping could not transform. Names columns and types, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("{place} of {relation}")]
    Value {
        relation: String,
        place: Place,
        #[source]
        source: ValueError,
    },
    #[error("{place} of {relation}: source column {column} is not valid UTF-8")]
    NotUtf8 {
        relation: String,
        place: Place,
        column: String,
    },
    #[error("{place} of {relation}: the JSON value is malformed")]
    Json { relation: String, place: Place },
    #[error("{place} of {relation}: tenant attribute {attribute} was not supplied")]
    MissingTenantAttribute {
        relation: String,
        place: Place,
        attribute: String,
    },
    #[error(
        "a tuple of {relation} carries {got} columns but the mapping was compiled for {expected}"
    )]
    TupleShape {
        relation: String,
        got: usize,
        expected: usize,
    },
    #[error("the filter of the mapping of {relation} reads column {column}, whose unchanged TOAST value the change does not carry; set REPLICA IDENTITY FULL and fill it from the old row, or filter on other columns")]
    UnchangedInFilter { relation: String, column: String },
}

/// A mapping bound to one relation: evaluate it per row with [`CompiledMapping::eval`].
#[derive(Debug, Clone)]
pub struct CompiledMapping {
    relation: String,
    source_columns: Vec<String>,
    tenant_attributes: Vec<String>,
    outputs: Vec<(String, PgType)>,
    pass_through: Vec<Option<usize>>,
    exprs: Vec<CExpr>,
    filter: Option<CPred>,
    filter_columns: Vec<usize>,
}

/// Output of one row: one cell per target column, in mapping order.
pub type Row<'a> = Vec<Cell<'a>>;

impl CompiledMapping {
    /// Binds `columns` (target name, expression) and `filter` to `relation`. Column types
    /// come from `type_of(type_oid)` (pass `PgType::from_oid`, or a function that also knows
    /// the database's enum oids); tenant attributes are `(name, type)` in the order the
    /// tenant row will hold them at [`CompiledMapping::eval`].
    pub fn compile(
        relation: &Relation,
        type_of: &dyn Fn(u32) -> PgType,
        tenant_attrs: &[(&str, PgType)],
        columns: &[(String, Expr)],
        filter: Option<&Filter>,
    ) -> Result<Self, CompileError> {
        let scope = Scope {
            relation,
            types: relation
                .columns
                .iter()
                .map(|c| type_of(c.type_oid))
                .collect(),
            tenant: tenant_attrs,
        };
        let mut problems = Vec::new();
        let mut record = |target: Option<&str>, text: &str, found: Vec<(usize, String)>| {
            problems.extend(found.into_iter().map(|(position, message)| Problem {
                target: target.map(str::to_owned),
                expression: text.to_owned(),
                position,
                message,
            }));
        };

        let mut outputs = Vec::with_capacity(columns.len());
        let mut exprs = Vec::with_capacity(columns.len());
        let mut pass_through = Vec::with_capacity(columns.len());
        for (i, (target, expr)) in columns.iter().enumerate() {
            let mut c = Compiler {
                scope: &scope,
                text: &expr.text,
                problems: Vec::new(),
            };
            if columns[..i].iter().any(|(t, _)| t == target) {
                c.problems
                    .push((0, format!("target column {target} is mapped twice")));
            }
            let compiled = c.expr(&expr.node);
            record(Some(target), &expr.text, c.problems);
            if let Some((ce, ty)) = compiled {
                let ty = match ty {
                    Ty::Unknown => PgType::Text,
                    Ty::Known(t) => t,
                };
                pass_through.push(match ce {
                    CExpr::Column(i) => Some(i),
                    _ => None,
                });
                outputs.push((target.clone(), ty));
                exprs.push(ce);
            }
        }

        let mut compiled_filter = None;
        let mut filter_columns = Vec::new();
        if let Some(f) = filter {
            let mut c = Compiler {
                scope: &scope,
                text: &f.0.text,
                problems: Vec::new(),
            };
            compiled_filter = c.pred(&f.0.node);
            record(None, &f.0.text, c.problems);
            filter_columns = f
                .columns()
                .filter_map(|name| relation.columns.iter().position(|c| c.name == name))
                .collect();
        }

        let relation_name = format!("{}.{}", relation.schema, relation.name);
        if !problems.is_empty() {
            return Err(CompileError {
                relation: relation_name,
                problems,
            });
        }
        Ok(CompiledMapping {
            relation: relation_name,
            source_columns: relation.columns.iter().map(|c| c.name.clone()).collect(),
            tenant_attributes: tenant_attrs.iter().map(|(a, _)| (*a).to_owned()).collect(),
            outputs,
            pass_through,
            exprs,
            filter: compiled_filter,
            filter_columns,
        })
    }

    /// Target columns and their types: the source type for a plain column, the cast's type
    /// for a cast, text for text functions, the common type for coalesce.
    pub fn output_types(&self) -> &[(String, PgType)] {
        &self.outputs
    }

    /// For each target column, the source column index when it is a plain copy of one, so a
    /// writer creating tables can copy its exact declared type (typmod, enum name).
    pub fn pass_through(&self) -> &[Option<usize>] {
        &self.pass_through
    }

    /// Whether the filter accepts the row (always true without a filter). `tenant` holds the
    /// tenant's attribute values in the order given at compile time.
    pub fn matches<T: AsRef<str>>(
        &self,
        tuple: &Tuple,
        tenant: &[Option<T>],
    ) -> Result<bool, EvalError> {
        self.check_shape(tuple)?;
        let Some(filter) = &self.filter else {
            return Ok(true);
        };
        let cx = Ctx { tuple, tenant };
        match cx.pred(filter) {
            Ok(Tri::True) => Ok(true),
            Ok(Tri::False | Tri::Null) => Ok(false),
            Ok(Tri::Unchanged) => Err(self.unchanged_in_filter(tuple)),
            Err(f) => Err(self.error(Place::Filter, f)),
        }
    }

    /// Transforms one row: `None` when the filter rejects it, else one cell per target
    /// column, borrowing from `tuple` where the value passes through unchanged.
    pub fn eval<'a, T: AsRef<str>>(
        &'a self,
        tuple: &'a Tuple,
        tenant: &'a [Option<T>],
    ) -> Result<Option<Row<'a>>, EvalError> {
        let mut out = Vec::with_capacity(self.exprs.len());
        Ok(self.eval_into(tuple, tenant, &mut out)?.then_some(out))
    }

    /// [`CompiledMapping::eval`] into a caller's buffer (cleared first); returns whether the
    /// filter matched (when it did not, `out` is left empty).
    pub fn eval_into<'a, T: AsRef<str>>(
        &'a self,
        tuple: &'a Tuple,
        tenant: &'a [Option<T>],
        out: &mut Vec<Cell<'a>>,
    ) -> Result<bool, EvalError> {
        out.clear();
        if !self.matches(tuple, tenant)? {
            return Ok(false);
        }
        let cx = Ctx { tuple, tenant };
        for (e, (target, _)) in self.exprs.iter().zip(&self.outputs) {
            match cx.value(e) {
                Ok(v) => out.push(v),
                Err(f) => {
                    out.clear();
                    return Err(self.error(Place::Column(target.clone()), f));
                }
            }
        }
        Ok(true)
    }

    fn check_shape(&self, tuple: &Tuple) -> Result<(), EvalError> {
        if tuple.0.len() == self.source_columns.len() {
            return Ok(());
        }
        Err(EvalError::TupleShape {
            relation: self.relation.clone(),
            got: tuple.0.len(),
            expected: self.source_columns.len(),
        })
    }

    fn unchanged_in_filter(&self, tuple: &Tuple) -> EvalError {
        let column = self
            .filter_columns
            .iter()
            .find(|&&i| matches!(tuple.0.get(i), Some(crate::change::Datum::UnchangedToast)))
            .and_then(|&i| self.source_columns.get(i))
            .cloned()
            .unwrap_or_default();
        EvalError::UnchangedInFilter {
            relation: self.relation.clone(),
            column,
        }
    }

    fn error(&self, place: Place, f: Fail) -> EvalError {
        let relation = self.relation.clone();
        match f {
            Fail::Value(source) => EvalError::Value {
                relation,
                place,
                source,
            },
            Fail::NotUtf8(i) => EvalError::NotUtf8 {
                relation,
                place,
                column: self.source_columns.get(i).cloned().unwrap_or_default(),
            },
            Fail::Json => EvalError::Json { relation, place },
            Fail::MissingTenant(i) => EvalError::MissingTenantAttribute {
                relation,
                place,
                attribute: self.tenant_attributes.get(i).cloned().unwrap_or_default(),
            },
            Fail::Shape => EvalError::TupleShape {
                relation,
                got: 0,
                expected: self.source_columns.len(),
            },
        }
    }
}
