//! Lexer and recursive-descent parser for mapping expressions and filters.
//!
//! One grammar serves both: a filter is an expression that must type as boolean (checked when
//! compiling), which is also how SQL treats `WHERE`. Precedence follows PostgreSQL, lowest
//! first:
//!
//! ```text
//! or      := and  (OR and)*
//! and     := not  (AND not)*
//! not     := NOT not | is
//! is      := cmp  (IS [NOT] NULL)*
//! cmp     := in   [(= | <> | != | < | <= | > | >=) in]        -- does not chain
//! in      := json [[NOT] IN '(' or (',' or)* ')']
//! json    := cast ((-> | ->>) key)*                           -- key: 'text' or [-]integer
//! cast    := primary ('::' type)*
//! primary := literal | column | "quoted column" | tenant.attr | func '(' args ')' | '(' or ')'
//! ```
//!
//! So `x->>'k'::int` casts the key, as in PostgreSQL; write `(x->>'k')::int`.
//!
//! Positions are byte offsets internally and character offsets in [`ParseError`]. Nesting is
//! bounded ([`MAX_DEPTH`]) so that no input can exhaust the stack here, when compiling, or
//! when evaluating.

use crate::value::PgType;

/// Deepest expression tree accepted. Generous for hand-written mappings, small enough that
/// the recursive compiler and evaluator stay far from the stack limit.
pub const MAX_DEPTH: usize = 64;

/// Where parsing stopped and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {position}: {message}")]
pub struct ParseError {
    /// Character (not byte) offset into the expression text.
    pub position: usize,
    /// What was expected, and what was found instead.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Coalesce,
    Lower,
    Upper,
    Concat,
    Hash,
}

impl Func {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Func::Coalesce => "coalesce",
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::Concat => "concat",
            Func::Hash => "hash",
        }
    }

    fn from_name(name: &str) -> Option<Func> {
        Some(match name {
            "coalesce" => Func::Coalesce,
            "lower" => Func::Lower,
            "upper" => Func::Upper,
            "concat" => Func::Concat,
            "hash" => Func::Hash,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    /// An integer literal; the text is canonical (no sign if positive, no leading zeros).
    Int(String),
    /// A decimal literal in canonical numeric text.
    Decimal(String),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsonKey {
    Field(String),
    Index(i64),
}

/// The syntax tree. `pos` is the byte offset of the construct in the expression text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Column {
        name: String,
        pos: usize,
    },
    Tenant {
        name: String,
        pos: usize,
    },
    Lit {
        lit: Lit,
        pos: usize,
    },
    Cast {
        inner: Box<Node>,
        ty: PgType,
        pos: usize,
    },
    Call {
        func: Func,
        args: Vec<Node>,
        pos: usize,
    },
    Json {
        inner: Box<Node>,
        key: JsonKey,
        as_text: bool,
        pos: usize,
    },
    Cmp {
        op: CmpOp,
        left: Box<Node>,
        right: Box<Node>,
        pos: usize,
    },
    In {
        inner: Box<Node>,
        list: Vec<Node>,
        negated: bool,
        pos: usize,
    },
    IsNull {
        inner: Box<Node>,
        negated: bool,
        pos: usize,
    },
    And(Vec<Node>),
    Or(Vec<Node>),
    Not {
        inner: Box<Node>,
        pos: usize,
    },
}

impl Node {
    pub(crate) fn pos(&self) -> usize {
        match self {
            Node::Column { pos, .. }
            | Node::Tenant { pos, .. }
            | Node::Lit { pos, .. }
            | Node::Cast { pos, .. }
            | Node::Call { pos, .. }
            | Node::Json { pos, .. }
            | Node::Cmp { pos, .. }
            | Node::In { pos, .. }
            | Node::IsNull { pos, .. }
            | Node::Not { pos, .. } => *pos,
            Node::And(items) | Node::Or(items) => items.first().map_or(0, Node::pos),
        }
    }

    fn children(&self) -> Vec<&Node> {
        match self {
            Node::Column { .. } | Node::Tenant { .. } | Node::Lit { .. } => Vec::new(),
            Node::Cast { inner, .. }
            | Node::Json { inner, .. }
            | Node::IsNull { inner, .. }
            | Node::Not { inner, .. } => vec![inner],
            Node::Call { args, .. } => args.iter().collect(),
            Node::Cmp { left, right, .. } => vec![left, right],
            Node::In { inner, list, .. } => std::iter::once(&**inner).chain(list).collect(),
            Node::And(items) | Node::Or(items) => items.iter().collect(),
        }
    }

    /// Depth of the tree, computed without recursion.
    fn depth(&self) -> usize {
        let mut max = 0;
        let mut stack = vec![(self, 1usize)];
        while let Some((node, d)) = stack.pop() {
            max = max.max(d);
            stack.extend(node.children().into_iter().map(|c| (c, d + 1)));
        }
        max
    }

    /// Source columns and tenant attributes referenced, each once, in order of appearance.
    pub(crate) fn references(&self) -> (Vec<String>, Vec<String>) {
        let mut columns: Vec<String> = Vec::new();
        let mut attrs: Vec<String> = Vec::new();
        let mut stack = vec![self];
        let mut found = Vec::new();
        while let Some(node) = stack.pop() {
            found.push(node);
            let mut children = node.children();
            children.reverse();
            stack.extend(children);
        }
        for node in found {
            match node {
                Node::Column { name, .. } if !columns.contains(name) => columns.push(name.clone()),
                Node::Tenant { name, .. } if !attrs.contains(name) => attrs.push(name.clone()),
                _ => {}
            }
        }
        (columns, attrs)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word, folded to lower case.
    Word(String),
    /// A double-quoted identifier, case kept.
    Quoted(String),
    Str(String),
    /// Digits with at most one '.', as written.
    Num(String),
    LParen,
    RParen,
    Comma,
    Dot,
    DoubleColon,
    Arrow,
    ArrowText,
    Op(CmpOp),
    Minus,
    End,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Quoted(w) => format!("\"{w}\""),
        Tok::Str(_) => "a string literal".into(),
        Tok::Num(n) => format!("'{n}'"),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Comma => "','".into(),
        Tok::Dot => "'.'".into(),
        Tok::DoubleColon => "'::'".into(),
        Tok::Arrow => "'->'".into(),
        Tok::ArrowText => "'->>'".into(),
        Tok::Op(op) => format!("'{}'", op.symbol()),
        Tok::Minus => "'-'".into(),
        Tok::End => "end of input".into(),
    }
}

/// Byte offset → character offset.
pub(crate) fn char_pos(text: &str, byte: usize) -> usize {
    let mut b = byte.min(text.len());
    while !text.is_char_boundary(b) {
        b -= 1;
    }
    text.get(..b).map_or(0, |s| s.chars().count())
}

fn err(text: &str, byte: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        position: char_pos(text, byte),
        message: message.into(),
    }
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        let two = |next: char| {
            let mut it = text.get(pos..).unwrap_or("").chars();
            it.next();
            it.next() == Some(next)
        };
        let tok = match c {
            c if c.is_whitespace() => {
                chars.next();
                continue;
            }
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '.' if !text
                .get(pos + 1..)
                .is_some_and(|s| s.starts_with(|d: char| d.is_ascii_digit())) =>
            {
                Tok::Dot
            }
            ':' if two(':') => {
                chars.next();
                Tok::DoubleColon
            }
            '-' if two('>') => {
                chars.next();
                chars.next();
                if chars.peek().map(|&(_, c)| c) == Some('>') {
                    chars.next();
                    out.push((Tok::ArrowText, pos));
                } else {
                    out.push((Tok::Arrow, pos));
                }
                continue;
            }
            '-' if two('-') => return Err(err(text, pos, "comments are not supported")),
            '-' => Tok::Minus,
            '=' => Tok::Op(CmpOp::Eq),
            '!' if two('=') => {
                chars.next();
                Tok::Op(CmpOp::Ne)
            }
            '<' if two('>') => {
                chars.next();
                Tok::Op(CmpOp::Ne)
            }
            '<' if two('=') => {
                chars.next();
                Tok::Op(CmpOp::Le)
            }
            '<' => Tok::Op(CmpOp::Lt),
            '>' if two('=') => {
                chars.next();
                Tok::Op(CmpOp::Ge)
            }
            '>' => Tok::Op(CmpOp::Gt),
            '\'' | '"' => {
                let quote = c;
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, ch)) if ch == quote => {
                            if chars.peek().map(|&(_, c)| c) == Some(quote) {
                                chars.next();
                                s.push(quote);
                            } else {
                                break;
                            }
                        }
                        Some((_, ch)) => s.push(ch),
                        None => {
                            let what = if quote == '\'' {
                                "a closing ' for the string literal started here"
                            } else {
                                "a closing \" for the identifier started here"
                            };
                            return Err(err(text, pos, format!("expected {what}")));
                        }
                    }
                }
                if quote == '"' && s.is_empty() {
                    return Err(err(text, pos, "expected a name between the double quotes"));
                }
                out.push((
                    if quote == '\'' {
                        Tok::Str(s)
                    } else {
                        Tok::Quoted(s)
                    },
                    pos,
                ));
                continue;
            }
            c if c.is_ascii_digit() || c == '.' => {
                let mut s = String::new();
                let mut dot = false;
                while let Some(&(_, ch)) = chars.peek() {
                    if ch.is_ascii_digit() || (ch == '.' && !dot) {
                        dot |= ch == '.';
                        s.push(ch);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if let Some(&(p, ch)) = chars.peek() {
                    if ch.is_alphanumeric() || ch == '_' || ch == '.' {
                        return Err(err(text, p, "expected an operator after the number"));
                    }
                }
                out.push((Tok::Num(s), pos));
                continue;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(&(_, ch)) = chars.peek() {
                    if ch.is_alphanumeric() || ch == '_' || ch == '$' {
                        s.push(ch.to_ascii_lowercase());
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push((Tok::Word(s), pos));
                continue;
            }
            other => {
                return Err(err(
                    text,
                    pos,
                    format!("expected an expression or operator, found '{other}'"),
                ))
            }
        };
        chars.next();
        out.push((tok, pos));
    }
    out.push((Tok::End, text.len()));
    Ok(out)
}

const RESERVED: [&str; 8] = ["and", "or", "not", "in", "is", "null", "true", "false"];

struct Parser<'t> {
    text: &'t str,
    toks: Vec<(Tok, usize)>,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.toks.get(self.at).map_or(&Tok::End, |(t, _)| t)
    }

    fn peek2(&self) -> &Tok {
        self.toks.get(self.at + 1).map_or(&Tok::End, |(t, _)| t)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.at).map_or(self.text.len(), |&(_, p)| p)
    }

    fn bump(&mut self) -> (Tok, usize) {
        let t = self
            .toks
            .get(self.at)
            .cloned()
            .unwrap_or((Tok::End, self.text.len()));
        if self.at < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Word(w) if w == kw)
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn fail<T>(&self, expected: &str) -> Result<T, ParseError> {
        Err(err(
            self.text,
            self.pos(),
            format!("expected {expected}, found {}", describe(self.peek())),
        ))
    }

    fn expect(&mut self, tok: &Tok, expected: &str) -> Result<(), ParseError> {
        if self.peek() == tok {
            self.at += 1;
            Ok(())
        } else {
            self.fail(expected)
        }
    }

    fn nest(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err(self.text, self.pos(), "expression nested too deeply"));
        }
        Ok(())
    }

    /// Bounds the left-nested chains (`::`, `->`, `IS`) that loops rather than recursion build.
    fn wrap(&self, wraps: &mut usize) -> Result<(), ParseError> {
        *wraps += 1;
        if *wraps > MAX_DEPTH {
            return Err(err(self.text, self.pos(), "expression nested too deeply"));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Node, ParseError> {
        let mut items = vec![self.and()?];
        while self.eat_kw("or") {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Node::Or(items)
        })
    }

    fn and(&mut self) -> Result<Node, ParseError> {
        let mut items = vec![self.not()?];
        while self.eat_kw("and") {
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Node::And(items)
        })
    }

    fn not(&mut self) -> Result<Node, ParseError> {
        if self.is_kw("not") {
            let pos = self.pos();
            self.at += 1;
            self.nest()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Node::Not {
                inner: Box::new(inner),
                pos,
            });
        }
        self.is()
    }

    fn is(&mut self) -> Result<Node, ParseError> {
        let mut node = self.cmp()?;
        let mut wraps = 0;
        while self.is_kw("is") {
            self.wrap(&mut wraps)?;
            let pos = self.pos();
            self.at += 1;
            let negated = self.eat_kw("not");
            if !self.eat_kw("null") {
                return self.fail(if negated {
                    "NULL after IS NOT"
                } else {
                    "NULL or NOT NULL after IS"
                });
            }
            node = Node::IsNull {
                inner: Box::new(node),
                negated,
                pos,
            };
        }
        Ok(node)
    }

    fn cmp(&mut self) -> Result<Node, ParseError> {
        let left = self.in_list()?;
        let Tok::Op(op) = *self.peek() else {
            return Ok(left);
        };
        let pos = self.pos();
        self.at += 1;
        let right = self.in_list()?;
        if let Tok::Op(_) = self.peek() {
            return self.fail("AND or OR between comparisons (comparisons do not chain)");
        }
        Ok(Node::Cmp {
            op,
            left: Box::new(left),
            right: Box::new(right),
            pos,
        })
    }

    fn in_list(&mut self) -> Result<Node, ParseError> {
        let inner = self.json()?;
        let negated = self.is_kw("not") && matches!(self.peek2(), Tok::Word(w) if w == "in");
        if !negated && !self.is_kw("in") {
            return Ok(inner);
        }
        let pos = self.pos();
        self.at += if negated { 2 } else { 1 };
        self.expect(&Tok::LParen, "'(' after IN")?;
        self.nest()?;
        let mut list = vec![self.or()?];
        while self.peek() == &Tok::Comma {
            self.at += 1;
            list.push(self.or()?);
        }
        self.expect(&Tok::RParen, "',' or ')' in the IN list")?;
        self.depth -= 1;
        Ok(Node::In {
            inner: Box::new(inner),
            list,
            negated,
            pos,
        })
    }

    fn json(&mut self) -> Result<Node, ParseError> {
        let mut node = self.cast()?;
        let mut wraps = 0;
        loop {
            let as_text = match self.peek() {
                Tok::Arrow => false,
                Tok::ArrowText => true,
                _ => return Ok(node),
            };
            self.wrap(&mut wraps)?;
            let pos = self.pos();
            self.at += 1;
            let negative = self.peek() == &Tok::Minus;
            if negative {
                self.at += 1;
            }
            let key = match self.peek().clone() {
                Tok::Str(s) if !negative => JsonKey::Field(s),
                Tok::Num(n) if !n.contains('.') => {
                    let v: i64 = n
                        .parse()
                        .map_err(|_| err(self.text, self.pos(), "array index out of range"))?;
                    JsonKey::Index(if negative { -v } else { v })
                }
                _ => {
                    let arrow = if as_text { "->>" } else { "->" };
                    return self.fail(&format!("a quoted key or an integer index after {arrow}"));
                }
            };
            self.at += 1;
            node = Node::Json {
                inner: Box::new(node),
                key,
                as_text,
                pos,
            };
        }
    }

    fn cast(&mut self) -> Result<Node, ParseError> {
        let mut node = self.primary()?;
        let mut wraps = 0;
        while self.peek() == &Tok::DoubleColon {
            self.wrap(&mut wraps)?;
            let pos = self.pos();
            self.at += 1;
            let ty = self.type_name()?;
            node = Node::Cast {
                inner: Box::new(node),
                ty,
                pos,
            };
        }
        Ok(node)
    }

    fn type_name(&mut self) -> Result<PgType, ParseError> {
        const EXPECTED: &str = "a type (text, int, bigint, smallint, numeric, bool, date, \
                                timestamptz, timestamp, uuid, jsonb, json, float8) after '::'";
        let Tok::Word(word) = self.peek().clone() else {
            return self.fail(EXPECTED);
        };
        let start = self.pos();
        self.at += 1;
        let ty = match word.as_str() {
            "text" | "varchar" => PgType::Text,
            "int" | "int4" | "integer" => PgType::Int4,
            "bigint" | "int8" => PgType::Int8,
            "smallint" | "int2" => PgType::Int2,
            "numeric" | "decimal" => PgType::Numeric,
            "bool" | "boolean" => PgType::Bool,
            "date" => PgType::Date,
            "timestamptz" => PgType::TimestampTz,
            "timestamp" => {
                if self.is_kw("with") || self.is_kw("without") {
                    let with = self.eat_kw("with");
                    if !with {
                        self.at += 1;
                    }
                    if !(self.eat_kw("time") && self.eat_kw("zone")) {
                        return self.fail("TIME ZONE");
                    }
                    if with {
                        PgType::TimestampTz
                    } else {
                        PgType::Timestamp
                    }
                } else {
                    PgType::Timestamp
                }
            }
            "uuid" => PgType::Uuid,
            "jsonb" => PgType::Jsonb,
            "json" => PgType::Json,
            "float8" => PgType::Float8,
            "double" => {
                if !self.eat_kw("precision") {
                    return self.fail("PRECISION after DOUBLE");
                }
                PgType::Float8
            }
            _ => {
                return Err(err(
                    self.text,
                    start,
                    format!("expected {EXPECTED}, found '{word}'"),
                ))
            }
        };
        if self.peek() == &Tok::LParen {
            return Err(err(
                self.text,
                self.pos(),
                "type modifiers such as numeric(10,2) or varchar(20) are not supported",
            ));
        }
        Ok(ty)
    }

    fn number(&self, digits: &str, negative: bool, pos: usize) -> Result<Lit, ParseError> {
        if digits == "." {
            return Err(err(self.text, pos, "expected digits around '.'"));
        }
        if !digits.contains('.') {
            let trimmed = digits.trim_start_matches('0');
            let trimmed = if trimmed.is_empty() { "0" } else { trimmed };
            let sign = if negative && trimmed != "0" { "-" } else { "" };
            let text = format!("{sign}{trimmed}");
            return Ok(if text.parse::<i64>().is_ok() {
                Lit::Int(text)
            } else {
                Lit::Decimal(text)
            });
        }
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let int = int.trim_start_matches('0');
        let zero = int.is_empty() && frac.bytes().all(|b| b == b'0');
        let sign = if negative && !zero { "-" } else { "" };
        let int = if int.is_empty() { "0" } else { int };
        Ok(Lit::Decimal(if frac.is_empty() {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{frac}")
        }))
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let (tok, pos) = self.bump();
        match tok {
            Tok::Str(s) => Ok(Node::Lit {
                lit: Lit::Str(s),
                pos,
            }),
            Tok::Num(n) => Ok(Node::Lit {
                lit: self.number(&n, false, pos)?,
                pos,
            }),
            Tok::Minus => match self.bump() {
                (Tok::Num(n), _) => Ok(Node::Lit {
                    lit: self.number(&n, true, pos)?,
                    pos,
                }),
                _ => {
                    self.at -= 1;
                    self.fail("a number after '-' (only literals can be negated)")
                }
            },
            Tok::LParen => {
                self.nest()?;
                let node = self.or()?;
                if self.peek() != &Tok::RParen {
                    return self.fail(&format!(
                        "')' to close the '(' at {}",
                        char_pos(self.text, pos)
                    ));
                }
                self.at += 1;
                self.depth -= 1;
                Ok(node)
            }
            Tok::Quoted(name) => {
                if self.peek() == &Tok::Dot {
                    return self.fail("an operator (only tenant.<attribute> is qualified)");
                }
                Ok(Node::Column { name, pos })
            }
            Tok::Word(word) => self.word(word, pos),
            other => {
                self.at -= 1;
                let _ = other;
                self.fail("an expression")
            }
        }
    }

    fn word(&mut self, word: String, pos: usize) -> Result<Node, ParseError> {
        match word.as_str() {
            "null" => {
                return Ok(Node::Lit {
                    lit: Lit::Null,
                    pos,
                })
            }
            "true" | "false" => {
                return Ok(Node::Lit {
                    lit: Lit::Bool(word == "true"),
                    pos,
                })
            }
            _ => {}
        }
        if RESERVED.contains(&word.as_str()) {
            return Err(err(
                self.text,
                pos,
                format!(
                    "expected an expression, found keyword {} (quote a column with that name: \"{word}\")",
                    word.to_uppercase()
                ),
            ));
        }
        if self.peek() == &Tok::LParen {
            let Some(func) = Func::from_name(&word) else {
                return Err(err(
                    self.text,
                    pos,
                    format!(
                        "unknown function '{word}'; expected coalesce, lower, upper, concat or hash"
                    ),
                ));
            };
            self.at += 1;
            self.nest()?;
            let mut args = Vec::new();
            if self.peek() != &Tok::RParen {
                args.push(self.or()?);
                while self.peek() == &Tok::Comma {
                    self.at += 1;
                    args.push(self.or()?);
                }
            }
            if self.peek() != &Tok::RParen {
                return self.fail(&format!("')' after the arguments of {}", func.name()));
            }
            self.at += 1;
            self.depth -= 1;
            let arity_ok = match func {
                Func::Coalesce | Func::Concat => !args.is_empty(),
                Func::Lower | Func::Upper | Func::Hash => args.len() == 1,
            };
            if !arity_ok {
                let want = match func {
                    Func::Coalesce | Func::Concat => "at least one argument",
                    _ => "exactly one argument",
                };
                return Err(err(
                    self.text,
                    pos,
                    format!("{} takes {want}, got {}", func.name(), args.len()),
                ));
            }
            return Ok(Node::Call { func, args, pos });
        }
        if self.peek() == &Tok::Dot {
            if word != "tenant" {
                return Err(err(
                    self.text,
                    pos,
                    format!(
                        "unknown qualifier '{word}': only tenant.<attribute> is qualified; \
                         quote a column whose name contains a dot"
                    ),
                ));
            }
            self.at += 1;
            return match self.bump() {
                (Tok::Word(name) | Tok::Quoted(name), _) => Ok(Node::Tenant { name, pos }),
                _ => {
                    self.at -= 1;
                    self.fail("an attribute name after 'tenant.'")
                }
            };
        }
        Ok(Node::Column { name: word, pos })
    }
}

pub(crate) fn parse(text: &str) -> Result<Node, ParseError> {
    let toks = lex(text)?;
    let mut p = Parser {
        text,
        toks,
        at: 0,
        depth: 0,
    };
    let node = p.or()?;
    if p.peek() != &Tok::End {
        return p.fail("an operator or the end of the expression");
    }
    if node.depth() > MAX_DEPTH {
        return Err(err(text, node.pos(), "expression nested too deeply"));
    }
    Ok(node)
}
