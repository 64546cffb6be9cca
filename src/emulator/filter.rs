//! The OData filter subset of the REST API's `filter` parameter: identifiers `userId`,
//! `connectionId`, `groups`; `eq ne gt ge lt le in`, `and or not`, parentheses, string/number/
//! boolean/null literals, and the string functions `tolower toupper trim length startswith
//! endswith contains`. Strings compare case-insensitively, as the service documents.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Lit(Value),
    Var(String),
    List(Vec<Expr>),
    Not(Box<Expr>),
    /// Two or more terms: a chain is one flat node, so evaluating and dropping a filter of a
    /// thousand `and`s does not recurse a thousand deep (that overflowed a 2 MiB stack).
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Cmp(String, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Expr);

/// Why a filter does not parse (the REST API answers 400 `invalid filter: …`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilterError {
    #[error("unterminated string")]
    UnterminatedString,
    #[error("bad number {0:?}")]
    BadNumber(String),
    #[error("unexpected character {0:?}")]
    UnexpectedChar(char),
    #[error("filter too long")]
    TooLong,
    #[error("filter nested too deeply")]
    TooDeep,
    #[error("missing )")]
    MissingClose,
    #[error("{0} needs (")]
    CallNeedsOpen(String),
    #[error("unknown identifier {0:?}")]
    UnknownIdentifier(String),
    /// The token as `Debug` renders it (`None` at the end of the input), as the message always
    /// showed it.
    #[error("unexpected {0}")]
    Unexpected(String),
}

impl FilterError {
    fn unexpected(tok: impl fmt::Debug) -> FilterError {
        FilterError::Unexpected(format!("{tok:?}"))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Num(f64),
    Word(String),
    Open,
    Close,
    Comma,
}

fn lex(s: &str) -> Result<Vec<Tok>, FilterError> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1
            }
            ')' => {
                out.push(Tok::Close);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match cs.get(i) {
                        None => return Err(FilterError::UnterminatedString),
                        Some('\'') if cs.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            v.push(*ch);
                            i += 1
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while i < cs.len() && (cs[i].is_ascii_digit() || cs[i] == '.') {
                    i += 1
                }
                let n: String = cs[start..i].iter().collect();
                let Ok(num) = n.parse() else {
                    return Err(FilterError::BadNumber(n));
                };
                out.push(Tok::Num(num));
            }
            c if c.is_alphabetic() => {
                let start = i;
                while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_') {
                    i += 1
                }
                out.push(Tok::Word(cs[start..i].iter().collect()));
            }
            other => return Err(FilterError::UnexpectedChar(other)),
        }
        if out.len() > 2000 {
            return Err(FilterError::TooLong);
        }
    }
    Ok(out)
}

/// One term as itself, more as one `And`/`Or` node.
fn flat(mut terms: Vec<Expr>, node: fn(Vec<Expr>) -> Expr) -> Expr {
    if terms.len() == 1 {
        terms.pop().unwrap_or(Expr::Lit(Value::Null))
    } else {
        node(terms)
    }
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Expr, FilterError> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(FilterError::TooDeep);
        }
        let mut terms = vec![self.and()?];
        while self.peek_word("or") {
            self.pos += 1;
            terms.push(self.and()?);
        }
        self.depth -= 1;
        Ok(flat(terms, Expr::Or))
    }
    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut terms = vec![self.unary()?];
        while self.peek_word("and") {
            self.pos += 1;
            terms.push(self.unary()?);
        }
        Ok(flat(terms, Expr::And))
    }
    fn unary(&mut self) -> Result<Expr, FilterError> {
        if self.peek_word("not") {
            self.pos += 1;
            // `not` nests like a parenthesis: without the limit, a filter of 2000 `not`s
            // overflowed a worker thread's stack (debug build, 2 MiB), aborting the emulator.
            self.depth += 1;
            if self.depth > 64 {
                return Err(FilterError::TooDeep);
            }
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        let l = self.operand()?;
        for op in ["eq", "ne", "gt", "ge", "lt", "le", "in"] {
            if self.peek_word(op) {
                self.pos += 1;
                let r = self.operand()?;
                return Ok(Expr::Cmp(op.into(), Box::new(l), Box::new(r)));
            }
        }
        Ok(l)
    }
    fn operand(&mut self) -> Result<Expr, FilterError> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Expr::Lit(Value::from(s))),
            Some(Tok::Num(n)) => Ok(Expr::Lit(
                serde_json::Number::from_f64(n)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
            )),
            Some(Tok::Open) => {
                let first = self.or()?;
                let mut items = vec![first];
                while self.toks.get(self.pos) == Some(&Tok::Comma) {
                    self.pos += 1;
                    items.push(self.or()?);
                }
                if self.next() != Some(Tok::Close) {
                    return Err(FilterError::MissingClose);
                }
                Ok(if items.len() == 1 {
                    items.pop().unwrap_or(Expr::Lit(Value::Null))
                } else {
                    Expr::List(items)
                })
            }
            Some(Tok::Word(w)) => match w.to_ascii_lowercase().as_str() {
                "true" => Ok(Expr::Lit(Value::Bool(true))),
                "false" => Ok(Expr::Lit(Value::Bool(false))),
                "null" => Ok(Expr::Lit(Value::Null)),
                "userid" | "connectionid" | "groups" => Ok(Expr::Var(w.to_ascii_lowercase())),
                f @ ("tolower" | "toupper" | "trim" | "length" | "startswith" | "endswith"
                | "contains") => {
                    if self.next() != Some(Tok::Open) {
                        return Err(FilterError::CallNeedsOpen(f.to_string()));
                    }
                    let mut args = vec![self.or()?];
                    while self.toks.get(self.pos) == Some(&Tok::Comma) {
                        self.pos += 1;
                        args.push(self.or()?);
                    }
                    if self.next() != Some(Tok::Close) {
                        return Err(FilterError::MissingClose);
                    }
                    Ok(Expr::Call(f.to_string(), args))
                }
                other => Err(FilterError::UnknownIdentifier(other.to_string())),
            },
            other => Err(FilterError::unexpected(other)),
        }
    }
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter, FilterError> {
        let mut p = Parser {
            toks: lex(s)?,
            pos: 0,
            depth: 0,
        };
        let e = p.or()?;
        if p.pos != p.toks.len() {
            return Err(FilterError::unexpected(&p.toks[p.pos]));
        }
        Ok(Filter(e))
    }

    pub fn eval(&self, vars: &HashMap<&str, Value>) -> bool {
        eval(&self.0, vars) == Value::Bool(true)
    }
}

fn s_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.eq_ignore_ascii_case(y),
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn eval(e: &Expr, vars: &HashMap<&str, Value>) -> Value {
    match e {
        Expr::Lit(v) => v.clone(),
        Expr::Var(n) => vars.get(n.as_str()).cloned().unwrap_or(Value::Null),
        Expr::List(items) => Value::Array(items.iter().map(|i| eval(i, vars)).collect()),
        Expr::Not(x) => Value::Bool(eval(x, vars) != Value::Bool(true)),
        Expr::And(terms) => Value::Bool(terms.iter().all(|t| eval(t, vars) == Value::Bool(true))),
        Expr::Or(terms) => Value::Bool(terms.iter().any(|t| eval(t, vars) == Value::Bool(true))),
        Expr::Cmp(op, a, b) => {
            let (a, b) = (eval(a, vars), eval(b, vars));
            let ord = match (&a, &b) {
                (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()),
                (Value::String(x), Value::String(y)) => {
                    Some(x.to_lowercase().cmp(&y.to_lowercase()))
                }
                _ => None,
            };
            Value::Bool(match op.as_str() {
                "eq" => s_eq(&a, &b),
                "ne" => !s_eq(&a, &b),
                "gt" => ord == Some(std::cmp::Ordering::Greater),
                "ge" => matches!(
                    ord,
                    Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
                ),
                "lt" => ord == Some(std::cmp::Ordering::Less),
                "le" => matches!(
                    ord,
                    Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                ),
                "in" => b
                    .as_array()
                    .is_some_and(|items| items.iter().any(|i| s_eq(&a, i))),
                _ => false,
            })
        }
        Expr::Call(f, args) => {
            let v: Vec<Value> = args.iter().map(|a| eval(a, vars)).collect();
            let s = |i: usize| v.get(i).and_then(Value::as_str).map(str::to_lowercase);
            match (f.as_str(), s(0), s(1)) {
                ("tolower", Some(x), _) => Value::from(x),
                ("toupper", _, _) => v
                    .first()
                    .and_then(Value::as_str)
                    .map(|x| Value::from(x.to_uppercase()))
                    .unwrap_or(Value::Null),
                ("trim", _, _) => v
                    .first()
                    .and_then(Value::as_str)
                    .map(|x| Value::from(x.trim()))
                    .unwrap_or(Value::Null),
                ("length", _, _) => match v.first() {
                    Some(Value::String(x)) => Value::from(x.chars().count()),
                    Some(Value::Array(a)) => Value::from(a.len()),
                    _ => Value::Null,
                },
                ("startswith", Some(x), Some(y)) => Value::Bool(x.starts_with(&y)),
                ("endswith", Some(x), Some(y)) => Value::Bool(x.ends_with(&y)),
                ("contains", Some(x), Some(y)) => Value::Bool(x.contains(&y)),
                _ => Value::Null,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(user: &str, groups: &[&str]) -> HashMap<&'static str, Value> {
        let mut m = HashMap::new();
        m.insert("userid", Value::from(user));
        m.insert("connectionid", Value::from("c1"));
        m.insert(
            "groups",
            Value::from(groups.iter().map(|g| g.to_string()).collect::<Vec<_>>()),
        );
        m
    }

    #[test]
    fn documented_examples() {
        let v = vars("alice", &["g1"]);
        for (f, want) in [
            ("userId eq 'alice'", true),
            ("userId eq 'ALICE'", true),
            ("userId ne 'alice'", false),
            ("'g1' in groups", true),
            ("'g2' in groups", false),
            ("userId in ('a', 'alice') and 'g1' in groups", true),
            ("not ('g1' in groups) or connectionId eq 'c1'", true),
            ("startswith(userId, 'al') and length(groups) eq 1", true),
            ("userId eq 'user''1'", false),
            ("tolower(userId) eq 'alice'", true),
        ] {
            assert_eq!(Filter::parse(f).unwrap().eval(&v), want, "{f}");
        }
        assert!(Filter::parse("userId eq 'x''y'")
            .unwrap()
            .eval(&vars("x'y", &[])));
        for bad in [
            "userId eq",
            "'unterminated",
            "bogus eq 1",
            "(userId eq 'a'",
            "userId eq 'a' 'b'",
            "#",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        assert!(Filter::parse(&"(".repeat(500)).is_err());
        // The reasons the REST API puts after `invalid filter: `.
        for (bad, reason) in [
            ("userId eq", "unexpected None"),
            ("userId eq 'a' 'b'", "unexpected Str(\"b\")"),
            ("bogus eq 1", "unknown identifier \"bogus\""),
            ("#", "unexpected character '#'"),
            ("'x", "unterminated string"),
        ] {
            assert_eq!(Filter::parse(bad).unwrap_err().to_string(), reason, "{bad}");
        }
    }

    #[test]
    fn the_deepest_filter_fits_a_worker_threads_stack() {
        // The REST API parses and evaluates on a tokio worker (2 MiB stack), and a debug build
        // has the largest frames. 2000 `not`s (the token limit) used to overflow it.
        let on_worker_stack = |f: String| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || Filter::parse(&f).map(|f| f.eval(&HashMap::new())))
                .unwrap()
                .join()
                .unwrap()
        };
        assert_eq!(
            on_worker_stack(format!("{}true", "not ".repeat(1999))),
            Err(FilterError::TooDeep)
        );
        assert_eq!(
            on_worker_stack(format!("{}true", "not ".repeat(62))),
            Ok(true)
        );
        assert_eq!(
            on_worker_stack(format!("{}(true)", "not (".repeat(40))),
            Err(FilterError::TooDeep)
        );
        // The deepest nesting the limit lets through.
        let parens = format!("{}true{}", "(".repeat(63), ")".repeat(63));
        assert_eq!(on_worker_stack(parens), Ok(true));
        let calls = format!("{}'A'{} eq 'a'", "tolower(".repeat(62), ")".repeat(62));
        assert_eq!(on_worker_stack(calls), Ok(true));
        // Chains of `and`/`or` are one flat node each.
        assert_eq!(
            on_worker_stack(format!("{}true", "true and ".repeat(999))),
            Ok(true)
        );
        assert_eq!(
            on_worker_stack(format!("{}true", "false or ".repeat(999))),
            Ok(true)
        );
    }
}
