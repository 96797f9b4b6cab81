//! Per-row evaluation of compiled expressions.
//!
//! Every value is carried as PostgreSQL text of its static type (what pgoutput sends and what
//! the writers send on), borrowed from the tuple whenever no function changes it. Typed
//! parsing happens only where an operation needs it: comparisons parse each side into a
//! [`Key`] of the comparison's [`Kind`], casts go through [`convert`].

use std::borrow::Cow;
use std::cmp::Ordering;

use bytes::Bytes;

use crate::digest::sha256_hex;

use crate::change::{Datum, Tuple};
use crate::value::{PgType, ValueError};

use super::compile::{CExpr, CPred, Operand};
use super::json;
use super::parse::{CmpOp, JsonKey};
use super::typed::{bad, bool_in, cmp_keys, convert, key, Key, Kind};

/// One output value, or the marker that the source did not send it.
///
/// Evaluation borrows text from the tuple ([`Cell::Text`]); a cell that must outlive the
/// change ([`Cell::into_static`]) copies it, except a large value, which is shared with the
/// buffer it was decoded from ([`Cell::Shared`]): a huge value reaches every writer without a
/// copy. Two cells are equal when they hold the same text, whichever way they hold it.
#[derive(Debug, Clone)]
pub enum Cell<'a> {
    Null,
    /// Computed from an unchanged TOAST value the change does not carry: the writer keeps the
    /// target's current value.
    Unchanged,
    /// PostgreSQL text format of the column's output type.
    Text(Cow<'a, str>),
    /// The same, shared with the buffer it was decoded from (never made by evaluation). Boxed:
    /// it is rare, and every other cell stays as small as before.
    Shared(Box<SharedText>),
}

/// Text at least this long is shared, not copied, when a cell outlives its change: below it
/// a copy costs less than sharing a buffer between threads.
pub const SHARE_AT: usize = 64 * 1024;

impl<'a> Cell<'a> {
    /// This cell, owning its text: [`Cell::Text`] copies it.
    pub fn into_owned(self) -> Cell<'static> {
        match self {
            Cell::Null => Cell::Null,
            Cell::Unchanged => Cell::Unchanged,
            Cell::Text(t) => Cell::Text(Cow::Owned(t.into_owned())),
            Cell::Shared(t) => Cell::Shared(t),
        }
    }

    /// This cell, independent of `tuple`, the tuple it was evaluated from: text of at least
    /// [`SHARE_AT`] bytes borrowed from one of its values shares that value's buffer; other
    /// text is copied.
    pub fn into_static(self, tuple: &Tuple) -> Cell<'static> {
        match self {
            Cell::Text(Cow::Borrowed(s)) if s.len() >= SHARE_AT => {
                match SharedText::within(tuple, s) {
                    Some(shared) => Cell::Shared(Box::new(shared)),
                    None => Cell::Text(Cow::Owned(s.to_owned())),
                }
            }
            other => other.into_owned(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Cell::Text(t) => Some(t),
            Cell::Shared(t) => Some(t.as_str()),
            _ => None,
        }
    }

    /// Whether the cell holds text (not NULL, not unchanged).
    pub fn is_text(&self) -> bool {
        matches!(self, Cell::Text(_) | Cell::Shared(_))
    }
}

impl PartialEq for Cell<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Cell::Null, Cell::Null) | (Cell::Unchanged, Cell::Unchanged) => true,
            _ => match (self.as_str(), other.as_str()) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
        }
    }
}

impl Eq for Cell<'_> {}

/// UTF-8 text in a shared buffer: a slice of the frame or record a value was decoded from.
/// Its `Debug` shows the length only (a huge value in a log line would be useless, and row
/// values stay out of logs).
#[derive(Clone, PartialEq, Eq)]
pub struct SharedText(Bytes);

impl SharedText {
    /// `text`, shared with the value of `tuple` it is a part of (`None`: it is in none).
    fn within(tuple: &Tuple, text: &str) -> Option<SharedText> {
        let (start, len) = (text.as_ptr() as usize, text.len());
        tuple.0.iter().find_map(|d| match d {
            Datum::Text(b)
                if start >= b.as_ptr() as usize && start + len <= b.as_ptr() as usize + b.len() =>
            {
                Some(SharedText(b.slice_ref(text.as_bytes())))
            }
            _ => None,
        })
    }

    /// `bytes` as text, when they are UTF-8.
    pub fn new(bytes: Bytes) -> Option<SharedText> {
        std::str::from_utf8(&bytes).ok()?;
        Some(SharedText(bytes))
    }

    // Never inlined: evaluation matches on it in several places but never meets it, and the
    // UTF-8 check inlined there slowed the hot path down (eval into a reused buffer: +5–8%).
    #[cold]
    #[inline(never)]
    pub fn as_str(&self) -> &str {
        // Checked to be UTF-8 when made: this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The text's bytes, shared.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl std::fmt::Debug for SharedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedText({} bytes)", self.0.len())
    }
}

/// Why evaluating one expression failed; the caller adds which column it was computing.
#[derive(Debug)]
pub(crate) enum Fail {
    Value(ValueError),
    NotUtf8(usize),
    Json,
    MissingTenant(usize),
    Shape,
}

impl From<ValueError> for Fail {
    fn from(e: ValueError) -> Self {
        Fail::Value(e)
    }
}

/// Three-valued logic plus "depends on a value the change does not carry".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tri {
    True,
    False,
    Null,
    Unchanged,
}

impl From<bool> for Tri {
    fn from(b: bool) -> Self {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }
}

enum Side<'a> {
    Missing(Tri),
    Fixed(Key<'static>),
    Text(Cow<'a, str>),
}

fn key_of<'s>(side: &'s Side<'_>, kind: Kind, ty: &PgType) -> Result<Option<Key<'s>>, Fail> {
    Ok(match side {
        Side::Missing(_) => None,
        Side::Fixed(k) => Some(*k),
        Side::Text(s) => Some(key(kind, ty, s)?),
    })
}

fn map_text<'a>(
    v: Cell<'a>,
    f: impl FnOnce(Cow<'a, str>) -> Result<Cow<'a, str>, Fail>,
) -> Result<Cell<'a>, Fail> {
    Ok(match v {
        Cell::Text(s) => Cell::Text(f(s)?),
        other => other,
    })
}

fn lower(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(s.to_ascii_lowercase())
        } else {
            s
        }
    } else {
        Cow::Owned(s.to_lowercase())
    }
}

fn upper(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_lowercase()) {
            Cow::Owned(s.to_ascii_uppercase())
        } else {
            s
        }
    } else {
        Cow::Owned(s.to_uppercase())
    }
}

fn json_step<'d>(doc: &'d str, key: &JsonKey, as_text: bool) -> Result<Cell<'d>, Fail> {
    let found = match key {
        JsonKey::Field(k) => json::field(doc, k),
        JsonKey::Index(i) => json::element(doc, *i),
    }
    .map_err(|_| Fail::Json)?;
    let Some(v) = found else {
        return Ok(Cell::Null);
    };
    if !as_text {
        return Ok(Cell::Text(Cow::Borrowed(v)));
    }
    Ok(match json::as_text(v).map_err(|_| Fail::Json)? {
        Some(t) => Cell::Text(t),
        None => Cell::Null,
    })
}

/// One row's inputs.
pub(crate) struct Ctx<'a, T> {
    pub(crate) tuple: &'a Tuple,
    pub(crate) tenant: &'a [Option<T>],
}

impl<'a, T: AsRef<str>> Ctx<'a, T> {
    pub(crate) fn value(&self, e: &'a CExpr) -> Result<Cell<'a>, Fail> {
        Ok(match e {
            CExpr::Column(i) => match self.tuple.0.get(*i) {
                None => return Err(Fail::Shape),
                Some(Datum::Null) => Cell::Null,
                Some(Datum::UnchangedToast) => Cell::Unchanged,
                Some(Datum::Text(b)) => Cell::Text(Cow::Borrowed(
                    std::str::from_utf8(b).map_err(|_| Fail::NotUtf8(*i))?,
                )),
            },
            CExpr::Tenant(i) => match self.tenant.get(*i) {
                None => return Err(Fail::MissingTenant(*i)),
                Some(None) => Cell::Null,
                Some(Some(v)) => Cell::Text(Cow::Borrowed(v.as_ref())),
            },
            CExpr::Const(c) => match c {
                None => Cell::Null,
                Some(s) => Cell::Text(Cow::Borrowed(s)),
            },
            CExpr::Cast { inner, from, to } => map_text(self.value(inner)?, |s| {
                Ok(match s {
                    Cow::Borrowed(b) => convert(b, from, to)?,
                    Cow::Owned(o) => Cow::Owned(convert(&o, from, to)?.into_owned()),
                })
            })?,
            CExpr::Coalesce(args) => {
                for a in args {
                    match self.value(a)? {
                        Cell::Null => {}
                        v => return Ok(v),
                    }
                }
                Cell::Null
            }
            CExpr::Lower(inner) => map_text(self.value(inner)?, |s| Ok(lower(s)))?,
            CExpr::Upper(inner) => map_text(self.value(inner)?, |s| Ok(upper(s)))?,
            CExpr::Hash(inner) => map_text(self.value(inner)?, |s| {
                Ok(Cow::Owned(sha256_hex(s.as_bytes())))
            })?,
            CExpr::Concat(args) => {
                let mut out = String::new();
                for a in args {
                    match self.value(a)? {
                        Cell::Null => {}
                        Cell::Unchanged => return Ok(Cell::Unchanged),
                        Cell::Text(s) => out.push_str(&s),
                        Cell::Shared(s) => out.push_str(s.as_str()),
                    }
                }
                Cell::Text(Cow::Owned(out))
            }
            CExpr::Json {
                inner,
                key,
                as_text,
            } => match self.value(inner)? {
                Cell::Text(Cow::Borrowed(doc)) => json_step(doc, key, *as_text)?,
                Cell::Text(Cow::Owned(doc)) => json_step(&doc, key, *as_text)?.into_owned(),
                Cell::Shared(doc) => json_step(doc.as_str(), key, *as_text)?.into_owned(),
                other => other,
            },
            CExpr::Pred(p) => match self.pred(p)? {
                Tri::True => Cell::Text(Cow::Borrowed("t")),
                Tri::False => Cell::Text(Cow::Borrowed("f")),
                Tri::Null => Cell::Null,
                Tri::Unchanged => Cell::Unchanged,
            },
        })
    }

    fn side(&self, o: &'a Operand) -> Result<Side<'a>, Fail> {
        if let Some(k) = o.fixed {
            return Ok(Side::Fixed(k));
        }
        Ok(match self.value(&o.expr)? {
            Cell::Null => Side::Missing(Tri::Null),
            Cell::Unchanged => Side::Missing(Tri::Unchanged),
            Cell::Text(s) => Side::Text(s),
            Cell::Shared(s) => Side::Text(Cow::Owned(s.as_str().to_owned())),
        })
    }

    pub(crate) fn pred(&self, p: &'a CPred) -> Result<Tri, Fail> {
        Ok(match p {
            CPred::Cmp {
                op,
                kind,
                left,
                right,
            } => {
                let a = self.side(left)?;
                let b = self.side(right)?;
                match (&a, &b) {
                    (Side::Missing(Tri::Null), _) | (_, Side::Missing(Tri::Null)) => {
                        return Ok(Tri::Null)
                    }
                    (Side::Missing(t), _) | (_, Side::Missing(t)) => return Ok(*t),
                    _ => {}
                }
                let (Some(ka), Some(kb)) =
                    (key_of(&a, *kind, &left.ty)?, key_of(&b, *kind, &right.ty)?)
                else {
                    return Ok(Tri::Null);
                };
                let ord = cmp_keys(&ka, &kb);
                Tri::from(match op {
                    CmpOp::Eq => ord == Ordering::Equal,
                    CmpOp::Ne => ord != Ordering::Equal,
                    CmpOp::Lt => ord == Ordering::Less,
                    CmpOp::Le => ord != Ordering::Greater,
                    CmpOp::Gt => ord == Ordering::Greater,
                    CmpOp::Ge => ord != Ordering::Less,
                })
            }
            CPred::In {
                kind,
                inner,
                list,
                negated,
            } => {
                let x = self.side(inner)?;
                if let Side::Missing(t) = x {
                    return Ok(t);
                }
                let Some(kx) = key_of(&x, *kind, &inner.ty)? else {
                    return Ok(Tri::Null);
                };
                let mut missing = None;
                for item in list {
                    let s = self.side(item)?;
                    match key_of(&s, *kind, &item.ty)? {
                        Some(k) if cmp_keys(&kx, &k) == Ordering::Equal => {
                            return Ok(Tri::from(!negated))
                        }
                        Some(_) => {}
                        None => {
                            if let Side::Missing(t) = s {
                                if missing != Some(Tri::Unchanged) {
                                    missing = Some(t);
                                }
                            }
                        }
                    }
                }
                missing.unwrap_or(Tri::from(*negated))
            }
            CPred::IsNull { inner, negated } => match self.value(inner)? {
                Cell::Null => Tri::from(!negated),
                // A TOASTed value is never null.
                Cell::Unchanged | Cell::Text(_) | Cell::Shared(_) => Tri::from(*negated),
            },
            CPred::And(items) => {
                let mut out = Tri::True;
                for i in items {
                    match self.pred(i)? {
                        Tri::False => return Ok(Tri::False),
                        Tri::Null if out == Tri::True => out = Tri::Null,
                        Tri::Unchanged => out = Tri::Unchanged,
                        _ => {}
                    }
                }
                out
            }
            CPred::Or(items) => {
                let mut out = Tri::False;
                for i in items {
                    match self.pred(i)? {
                        Tri::True => return Ok(Tri::True),
                        Tri::Null if out == Tri::False => out = Tri::Null,
                        Tri::Unchanged => out = Tri::Unchanged,
                        _ => {}
                    }
                }
                out
            }
            CPred::Not(inner) => match self.pred(inner)? {
                Tri::True => Tri::False,
                Tri::False => Tri::True,
                t => t,
            },
            CPred::Value(e) => match self.value(e)? {
                Cell::Null => Tri::Null,
                Cell::Unchanged => Tri::Unchanged,
                Cell::Text(s) => {
                    Tri::from(bool_in(&s).ok_or_else(|| bad(&PgType::Bool, "expected a boolean"))?)
                }
                Cell::Shared(s) => Tri::from(
                    bool_in(s.as_str()).ok_or_else(|| bad(&PgType::Bool, "expected a boolean"))?,
                ),
            },
        })
    }
}
