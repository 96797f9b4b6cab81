//! Binding a parsed expression to a relation: column names become indexes, every node gets a
//! type, implicit conversions become explicit [`CExpr::Cast`] nodes, constants are folded
//! and comparison constants pre-parsed. Every problem is collected, none stops the others.

use crate::change::Relation;
use crate::value::PgType;

use super::parse::{char_pos, CmpOp, Func, JsonKey, Lit, Node};
use super::typed::{convert, is_texty, key, Key, Kind};

/// A compiled value expression. Evaluates to PostgreSQL text for its static type.
#[derive(Debug, Clone)]
pub(crate) enum CExpr {
    Column(usize),
    Tenant(usize),
    Const(Option<Box<str>>),
    Cast {
        inner: Box<CExpr>,
        from: PgType,
        to: PgType,
    },
    Coalesce(Vec<CExpr>),
    Lower(Box<CExpr>),
    Upper(Box<CExpr>),
    Hash(Box<CExpr>),
    Concat(Vec<CExpr>),
    Json {
        inner: Box<CExpr>,
        key: JsonKey,
        as_text: bool,
    },
    /// A condition used as a value: `t`, `f` or NULL.
    Pred(Box<CPred>),
}

/// A compiled condition (three-valued).
#[derive(Debug, Clone)]
pub(crate) enum CPred {
    Cmp {
        op: CmpOp,
        kind: Kind,
        left: Operand,
        right: Operand,
    },
    In {
        kind: Kind,
        inner: Operand,
        list: Vec<Operand>,
        negated: bool,
    },
    IsNull {
        inner: CExpr,
        negated: bool,
    },
    And(Vec<CPred>),
    Or(Vec<CPred>),
    Not(Box<CPred>),
    /// A boolean-typed value (`is_active`, `NULL`).
    Value(CExpr),
}

/// One side of a comparison: its expression and type, and for constants the key parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Operand {
    pub(crate) expr: CExpr,
    pub(crate) ty: PgType,
    pub(crate) fixed: Option<Key<'static>>,
}

/// Static type during compilation; `Unknown` is an untyped literal (`'x'`, `NULL`), which
/// like in PostgreSQL takes the type its context needs. Invariant: an `Unknown` expression is
/// always a [`CExpr::Const`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ty {
    Unknown,
    Known(PgType),
}

impl Ty {
    fn or_text(self) -> PgType {
        match self {
            Ty::Unknown => PgType::Text,
            Ty::Known(t) => t,
        }
    }
}

fn int_rank(t: &PgType) -> Option<u8> {
    Some(match t {
        PgType::Int2 => 1,
        PgType::Int4 => 2,
        PgType::Int8 => 3,
        PgType::Numeric => 4,
        PgType::Float4 => 5,
        PgType::Float8 => 6,
        _ => return None,
    })
}

fn time_rank(t: &PgType) -> Option<u8> {
    Some(match t {
        PgType::Date => 1,
        PgType::Timestamp => 2,
        PgType::TimestampTz => 3,
        _ => return None,
    })
}

/// The common type of two types, following PostgreSQL's resolution for the types we handle.
fn unify(a: &PgType, b: &PgType) -> Option<PgType> {
    if a == b {
        return Some(a.clone());
    }
    if let (Some(x), Some(y)) = (int_rank(a), int_rank(b)) {
        let floaty = x >= 5 || y >= 5;
        return Some(if floaty {
            PgType::Float8
        } else if x > y {
            a.clone()
        } else {
            b.clone()
        });
    }
    if let (Some(x), Some(y)) = (time_rank(a), time_rank(b)) {
        return Some(if x > y { a.clone() } else { b.clone() });
    }
    if is_texty(a) && is_texty(b) {
        return Some(PgType::Text);
    }
    if matches!(a, PgType::Json | PgType::Jsonb) && matches!(b, PgType::Json | PgType::Jsonb) {
        return Some(PgType::Jsonb);
    }
    None
}

fn kind_of(t: &PgType) -> Option<Kind> {
    Some(match t {
        PgType::Int2 | PgType::Int4 | PgType::Int8 => Kind::Int,
        PgType::Numeric => Kind::Dec,
        PgType::Float4 | PgType::Float8 => Kind::Float,
        PgType::Bool => Kind::Bool,
        PgType::Uuid => Kind::Uuid,
        PgType::Date | PgType::Timestamp | PgType::TimestampTz => Kind::Time,
        PgType::Text | PgType::Enum | PgType::Other => Kind::Text,
        _ => return None,
    })
}

/// Whether a cast from `from` to `to` exists (the runtime conversion is [`convert`]).
fn castable(from: &PgType, to: &PgType) -> bool {
    if from == to || *to == PgType::Text || is_texty(from) {
        return true;
    }
    let numeric = |t: &PgType| int_rank(t).is_some();
    let int = |t: &PgType| matches!(t, PgType::Int2 | PgType::Int4 | PgType::Int8);
    (numeric(from) && numeric(to))
        || (*from == PgType::Bool && int(to))
        || (int(from) && *to == PgType::Bool)
        || (time_rank(from).is_some() && time_rank(to).is_some())
        || (matches!(from, PgType::Json | PgType::Jsonb)
            && matches!(to, PgType::Json | PgType::Jsonb))
}

/// Conversions whose text output is already valid, canonical text of the target type.
fn same_text(from: &PgType, to: &PgType) -> bool {
    from == to
        || matches!(
            (from, to),
            (PgType::Int2, PgType::Int4 | PgType::Int8 | PgType::Numeric)
                | (PgType::Int4, PgType::Int8 | PgType::Numeric)
                | (PgType::Int8, PgType::Numeric)
                | (PgType::Enum | PgType::Other, PgType::Text)
                | (PgType::Json, PgType::Jsonb)
                | (PgType::Jsonb, PgType::Json)
        )
        || (*to == PgType::Text && *from != PgType::Bool)
}

fn what(n: &Node) -> String {
    match n {
        Node::Column { name, .. } => format!("column \"{name}\""),
        Node::Tenant { name, .. } => format!("tenant attribute \"{name}\""),
        Node::Lit { .. } => "a literal".into(),
        _ => format!("the expression at {}", n.pos()),
    }
}

/// What one expression needs from its surroundings.
pub(crate) struct Scope<'r> {
    pub(crate) relation: &'r Relation,
    pub(crate) types: Vec<PgType>,
    pub(crate) tenant: &'r [(&'r str, PgType)],
}

pub(crate) struct Compiler<'r, 's> {
    pub(crate) scope: &'s Scope<'r>,
    pub(crate) text: &'s str,
    /// (character position, message)
    pub(crate) problems: Vec<(usize, String)>,
}

impl Compiler<'_, '_> {
    fn problem(&mut self, byte: usize, message: String) {
        self.problems.push((char_pos(self.text, byte), message));
    }

    pub(crate) fn expr(&mut self, n: &Node) -> Option<(CExpr, Ty)> {
        match n {
            Node::Column { name, pos } => {
                let rel = self.scope.relation;
                if let Some(i) = rel.columns.iter().position(|c| c.name == *name) {
                    let ty = self.scope.types.get(i).cloned().unwrap_or(PgType::Other);
                    return Some((CExpr::Column(i), Ty::Known(ty)));
                }
                let hint = match rel
                    .columns
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(name))
                {
                    Some(c) => format!(
                        "; unquoted names are folded to lower case, write \"{}\"",
                        c.name
                    ),
                    None => String::new(),
                };
                self.problem(
                    *pos,
                    format!(
                        "unknown source column \"{name}\" in {}.{}{hint}",
                        rel.schema, rel.name
                    ),
                );
                None
            }
            Node::Tenant { name, pos } => {
                if let Some(i) = self.scope.tenant.iter().position(|(a, _)| a == name) {
                    return Some((CExpr::Tenant(i), Ty::Known(self.scope.tenant[i].1.clone())));
                }
                let known: Vec<&str> = self.scope.tenant.iter().map(|(a, _)| *a).collect();
                let hint = if known.is_empty() {
                    "no tenant attributes are configured ([tenants] query)".to_owned()
                } else {
                    format!("known: {}", known.join(", "))
                };
                self.problem(*pos, format!("unknown tenant attribute \"{name}\"; {hint}"));
                None
            }
            Node::Lit { lit, .. } => Some(match lit {
                Lit::Null => (CExpr::Const(None), Ty::Unknown),
                Lit::Str(s) => (CExpr::Const(Some(s.as_str().into())), Ty::Unknown),
                Lit::Bool(b) => (
                    CExpr::Const(Some(if *b { "t" } else { "f" }.into())),
                    Ty::Known(PgType::Bool),
                ),
                Lit::Int(t) => {
                    let ty = if t.parse::<i32>().is_ok() {
                        PgType::Int4
                    } else {
                        PgType::Int8
                    };
                    (CExpr::Const(Some(t.as_str().into())), Ty::Known(ty))
                }
                Lit::Decimal(t) => (
                    CExpr::Const(Some(t.as_str().into())),
                    Ty::Known(PgType::Numeric),
                ),
            }),
            Node::Cast { inner, ty, pos } => {
                let (ce, from) = self.expr(inner)?;
                let ce = self.cast(ce, from, ty, *pos, inner)?;
                Some((ce, Ty::Known(ty.clone())))
            }
            Node::Call { func, args, pos } => self.call(*func, args, *pos),
            Node::Json {
                inner,
                key,
                as_text,
                pos,
            } => {
                let (ce, ty) = self.expr(inner)?;
                let arrow = if *as_text { "->>" } else { "->" };
                let json_ty = match &ty {
                    Ty::Known(t @ (PgType::Json | PgType::Jsonb)) => t.clone(),
                    Ty::Known(t) => {
                        self.problem(
                            *pos,
                            format!(
                                "operator {arrow} needs json or jsonb on its left, but {} is {}",
                                what(inner),
                                t.name()
                            ),
                        );
                        return None;
                    }
                    Ty::Unknown => PgType::Jsonb,
                };
                let ce = self.cast(ce, ty, &json_ty, inner.pos(), inner)?;
                let out = if *as_text { PgType::Text } else { json_ty };
                Some((
                    CExpr::Json {
                        inner: Box::new(ce),
                        key: key.clone(),
                        as_text: *as_text,
                    },
                    Ty::Known(out),
                ))
            }
            Node::Cmp { .. }
            | Node::In { .. }
            | Node::IsNull { .. }
            | Node::And(_)
            | Node::Or(_)
            | Node::Not { .. } => {
                let p = self.pred(n)?;
                Some((CExpr::Pred(Box::new(p)), Ty::Known(PgType::Bool)))
            }
        }
    }

    /// An explicit cast or an implicit coercion; folds constants (so a bad literal is a
    /// compile error) and drops conversions that leave the text as it is.
    fn cast(
        &mut self,
        ce: CExpr,
        from: Ty,
        to: &PgType,
        pos: usize,
        inner: &Node,
    ) -> Option<CExpr> {
        let from = from.or_text();
        if !castable(&from, to) {
            self.problem(
                pos,
                format!(
                    "cannot convert {} of type {} to {}",
                    what(inner),
                    from.name(),
                    to.name()
                ),
            );
            return None;
        }
        if let CExpr::Const(c) = &ce {
            return match c {
                None => Some(CExpr::Const(None)),
                Some(text) => match convert(text, &from, to) {
                    Ok(v) => Some(CExpr::Const(Some(v.as_ref().into()))),
                    Err(e) => {
                        self.problem(
                            inner.pos(),
                            format!(
                                "literal '{text}' is not a valid {}: {}",
                                to.name(),
                                e.reason
                            ),
                        );
                        None
                    }
                },
            };
        }
        if same_text(&from, to) {
            return Some(ce);
        }
        Some(CExpr::Cast {
            inner: Box::new(ce),
            from,
            to: to.clone(),
        })
    }

    fn call(&mut self, func: Func, args: &[Node], pos: usize) -> Option<(CExpr, Ty)> {
        let compiled: Vec<Option<(CExpr, Ty)>> = args.iter().map(|a| self.expr(a)).collect();
        let compiled: Vec<(CExpr, Ty)> = compiled.into_iter().collect::<Option<_>>()?;
        match func {
            Func::Coalesce => {
                let mut result: Option<PgType> = None;
                for ((_, ty), node) in compiled.iter().zip(args) {
                    let Ty::Known(t) = ty else { continue };
                    result = match result {
                        None => Some(t.clone()),
                        Some(r) => match unify(&r, t) {
                            Some(u) => Some(u),
                            None => {
                                self.problem(
                                    pos,
                                    format!(
                                        "coalesce arguments have no common type: {} and {} ({})",
                                        r.name(),
                                        t.name(),
                                        what(node)
                                    ),
                                );
                                return None;
                            }
                        },
                    };
                }
                let result = result.unwrap_or(PgType::Text);
                let mut out = Vec::with_capacity(compiled.len());
                let mut ok = true;
                for ((ce, ty), node) in compiled.into_iter().zip(args) {
                    match self.cast(ce, ty, &result, node.pos(), node) {
                        Some(c) => out.push(c),
                        None => ok = false,
                    }
                }
                ok.then_some((CExpr::Coalesce(out), Ty::Known(result)))
            }
            Func::Lower | Func::Upper => {
                let (ce, ty) = compiled.into_iter().next()?;
                if let Ty::Known(t) = &ty {
                    if !matches!(t, PgType::Text | PgType::Other) {
                        self.problem(
                            pos,
                            format!(
                                "{} needs text, but {} is {}; cast it with ::text",
                                func.name(),
                                args.first().map_or_else(String::new, what),
                                t.name()
                            ),
                        );
                        return None;
                    }
                }
                let b = Box::new(ce);
                let e = if func == Func::Lower {
                    CExpr::Lower(b)
                } else {
                    CExpr::Upper(b)
                };
                Some((e, Ty::Known(PgType::Text)))
            }
            Func::Hash => {
                let (ce, _) = compiled.into_iter().next()?;
                Some((CExpr::Hash(Box::new(ce)), Ty::Known(PgType::Text)))
            }
            Func::Concat => Some((
                CExpr::Concat(compiled.into_iter().map(|(c, _)| c).collect()),
                Ty::Known(PgType::Text),
            )),
        }
    }

    /// The comparison kind for operands of these types, or a problem naming them.
    fn resolve(&mut self, ops: &[(&Ty, &Node)], op: CmpOp, pos: usize) -> Option<(PgType, Kind)> {
        let mut common: Option<(PgType, &Node)> = None;
        for &(ty, node) in ops {
            let Ty::Known(t) = ty else { continue };
            common = match common {
                None => Some((t.clone(), node)),
                Some((c, first)) => match unify(&c, t) {
                    Some(u) => Some((u, first)),
                    None => {
                        self.problem(
                            pos,
                            format!(
                                "cannot compare {} ({}) with {} ({}); cast one side, e.g. ::text",
                                what(first),
                                c.name(),
                                what(node),
                                t.name()
                            ),
                        );
                        return None;
                    }
                },
            };
        }
        let common = common.map_or(PgType::Text, |(t, _)| t);
        let Some(kind) = kind_of(&common) else {
            self.problem(
                pos,
                format!(
                    "values of type {} cannot be compared; extract a field with ->> (and cast it)",
                    common.name()
                ),
            );
            return None;
        };
        if !matches!(op, CmpOp::Eq | CmpOp::Ne) && matches!(common, PgType::Enum | PgType::Other) {
            self.problem(
                pos,
                format!(
                    "only = and <> compare {} values here (their order is not known); cast to text to compare as text",
                    common.name()
                ),
            );
            return None;
        }
        Some((common, kind))
    }

    fn operand(
        &mut self,
        ce: CExpr,
        ty: Ty,
        common: &PgType,
        kind: Kind,
        node: &Node,
    ) -> Option<Operand> {
        let (ce, ty) = match ty {
            Ty::Unknown => (
                self.cast(ce, Ty::Unknown, common, node.pos(), node)?,
                common.clone(),
            ),
            Ty::Known(t) => (ce, t),
        };
        let fixed = match &ce {
            CExpr::Const(Some(text)) => match key(kind, &ty, text) {
                Ok(k) => k.into_static(),
                Err(e) => {
                    self.problem(
                        node.pos(),
                        format!(
                            "literal '{text}' is not a valid {}: {}",
                            ty.name(),
                            e.reason
                        ),
                    );
                    return None;
                }
            },
            _ => None,
        };
        Some(Operand {
            expr: ce,
            ty,
            fixed,
        })
    }

    pub(crate) fn pred(&mut self, n: &Node) -> Option<CPred> {
        match n {
            Node::Cmp {
                op,
                left,
                right,
                pos,
            } => {
                let l = self.expr(left);
                let r = self.expr(right);
                let ((lc, lt), (rc, rt)) = (l?, r?);
                let (common, kind) = self.resolve(&[(&lt, left), (&rt, right)], *op, *pos)?;
                let left = self.operand(lc, lt, &common, kind, left);
                let right = self.operand(rc, rt, &common, kind, right);
                Some(CPred::Cmp {
                    op: *op,
                    kind,
                    left: left?,
                    right: right?,
                })
            }
            Node::In {
                inner,
                list,
                negated,
                pos,
            } => {
                let i = self.expr(inner);
                let items: Vec<Option<(CExpr, Ty)>> = list.iter().map(|n| self.expr(n)).collect();
                let i = i?;
                let items: Vec<(CExpr, Ty)> = items.into_iter().collect::<Option<_>>()?;
                let mut tys = vec![(&i.1, &**inner)];
                tys.extend(items.iter().map(|(_, t)| t).zip(list));
                let (common, kind) = self.resolve(&tys, CmpOp::Eq, *pos)?;
                let inner_op = self.operand(i.0, i.1, &common, kind, inner);
                let mut ops = Vec::with_capacity(items.len());
                for ((ce, ty), node) in items.into_iter().zip(list) {
                    ops.push(self.operand(ce, ty, &common, kind, node));
                }
                Some(CPred::In {
                    kind,
                    inner: inner_op?,
                    list: ops.into_iter().collect::<Option<_>>()?,
                    negated: *negated,
                })
            }
            Node::IsNull { inner, negated, .. } => {
                let (ce, _) = self.expr(inner)?;
                Some(CPred::IsNull {
                    inner: ce,
                    negated: *negated,
                })
            }
            Node::And(items) | Node::Or(items) => {
                let ps: Vec<Option<CPred>> = items.iter().map(|i| self.pred(i)).collect();
                let ps: Vec<CPred> = ps.into_iter().collect::<Option<_>>()?;
                Some(if matches!(n, Node::And(_)) {
                    CPred::And(ps)
                } else {
                    CPred::Or(ps)
                })
            }
            Node::Not { inner, .. } => Some(CPred::Not(Box::new(self.pred(inner)?))),
            _ => {
                let (ce, ty) = self.expr(n)?;
                match ty {
                    Ty::Known(PgType::Bool) => Some(CPred::Value(ce)),
                    Ty::Unknown => {
                        let ce = self.cast(ce, ty, &PgType::Bool, n.pos(), n)?;
                        Some(CPred::Value(ce))
                    }
                    Ty::Known(t) => {
                        self.problem(
                            n.pos(),
                            format!(
                                "expected a condition (a boolean), but {} is {}",
                                what(n),
                                t.name()
                            ),
                        );
                        None
                    }
                }
            }
        }
    }
}
