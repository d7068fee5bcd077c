//! Parsing of MLflow filters and `order_by` clauses with `sqlparser`: the bounds on a filter,
//! its tokens split into comparisons at the top-level `AND`s, each comparison parsed on its
//! own into identifier, operator and value, and an `order_by` clause split into key and
//! direction. Nothing here knows the entities' identifiers; see the module docs for why a
//! filter is parsed one comparison at a time.

use sqlparser::ast::{BinaryOperator, Expr, InTarget, UnaryOperator, Value};
use sqlparser::dialect::Dialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use super::{
    Entity, MAX_CLAUSE_TOKENS, MAX_FILTER_BYTES, MAX_FILTER_CLAUSES, SearchError, invalid, py_list,
};

/// A comparison operator as MLflow spells it; `Other` keeps one MLflow rejects (`<>`, `==`,
/// `NOT LIKE`) for the error message.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    ILike,
    In,
    NotIn,
    IsNull,
    IsNotNull,
    Other(String),
}

impl Op {
    fn as_str(&self) -> &str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Like => "LIKE",
            Op::ILike => "ILIKE",
            Op::In => "IN",
            Op::NotIn => "NOT IN",
            Op::IsNull => "IS NULL",
            Op::IsNotNull => "IS NOT NULL",
            Op::Other(s) => s,
        }
    }

    pub(super) fn is_one_of(&self, ops: &[&str]) -> bool {
        ops.contains(&self.as_str())
    }

    pub(super) fn is_null_test(&self) -> bool {
        matches!(self, Op::IsNull | Op::IsNotNull)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The right-hand side of a comparison, classified as MLflow's sqlparse tokens are.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
    /// A single- or double-quoted string (MLflow takes both), with its quote character.
    Str(String, char),
    /// A number literal as written; `float` when it has a fraction or exponent.
    Num { text: String, float: bool },
    /// An unquoted or backtick-quoted identifier, as written (MLflow: "not quoted").
    Bare(String),
    /// A parenthesized list (`IN` / `NOT IN`).
    List(Vec<Val>),
    /// Anything else, as written.
    Other(String),
    /// No value (`IS NULL` / `IS NOT NULL`).
    Absent,
}

impl Val {
    /// The value as MLflow shows it in messages (its token text).
    pub(super) fn shown(&self) -> String {
        match self {
            Val::Str(s, q) => format!("{q}{s}{q}"),
            Val::Num { text, .. } => text.clone(),
            Val::Bare(s) | Val::Other(s) => s.clone(),
            Val::List(items) => {
                let items: Vec<String> = items.iter().map(Val::shown).collect();
                format!("({})", items.join(", "))
            }
            Val::Absent => String::new(),
        }
    }
}

/// One comparison of the filter: the identifier as written (quotes kept), operator, value.
#[derive(Debug, Clone)]
pub(super) struct Cmp {
    pub(super) ident: String,
    pub(super) op: Op,
    pub(super) val: Val,
    pub(super) shown: String,
}

/// Backticks and double quotes delimit identifiers (sqlparse's `Symbol`/`Name`), single quotes
/// strings; MLflow reads a double-quoted identifier in value position as a string.
#[derive(Debug)]
struct FilterDialect;

impl Dialect for FilterDialect {
    fn is_identifier_start(&self, ch: char) -> bool {
        ch.is_alphabetic() || ch == '_'
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        ch.is_alphanumeric() || ch == '_'
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        ch == '`' || ch == '"'
    }
}

/// Byte offset of a tokenizer location (1-based line and column, in characters).
fn byte_offset(src: &str, loc: Location) -> Option<usize> {
    let mut line_start = 0;
    for _ in 1..loc.line {
        line_start += src[line_start..].find('\n')? + 1;
    }
    let column = usize::try_from(loc.column).ok()?.checked_sub(1)?;
    src[line_start..]
        .char_indices()
        .nth(column)
        .map(|(i, _)| line_start + i)
}

pub(super) fn parse_filter(entity: Entity, filter: &str) -> Result<Vec<Cmp>, SearchError> {
    if filter.len() > MAX_FILTER_BYTES {
        return Err(invalid(format!(
            "Invalid filter string: it is {} bytes long, more than the {MAX_FILTER_BYTES} \
             bytes a filter may have.",
            filter.len()
        )));
    }
    let parse_error = || invalid(format!("Error on parsing filter '{filter}'"));
    let dialect = FilterDialect;
    let mut tokens = Tokenizer::new(&dialect, filter)
        .tokenize_with_location()
        .map_err(|_| parse_error())?;
    for t in &mut tokens {
        // sqlparser reads `==` as `=` and `<>` like `!=`; MLflow rejects both.
        let rejected = match &t.token {
            Token::SemiColon => {
                return Err(invalid(format!(
                    "Search filter contained multiple expression '{filter}'. \
                     Provide AND-ed expression list."
                )));
            }
            Token::DoubleEq => Some("=="),
            Token::Neq => match byte_offset(filter, t.span.start) {
                Some(i) if filter[i..].starts_with('<') => Some("<>"),
                _ => None,
            },
            _ => None,
        };
        if let Some(op) = rejected {
            t.token = Token::CustomBinaryOperator(op.to_owned());
        }
    }
    split_clauses(tokens)?
        .into_iter()
        .map(|clause| {
            let mut parser = Parser::new(&dialect).with_tokens_with_locations(clause);
            let expr = parser.parse_expr().map_err(|_| parse_error())?;
            let next = parser.peek_token();
            if next.token != Token::EOF {
                let rest = byte_offset(filter, next.span.start).map_or(filter, |i| &filter[i..]);
                return Err(invalid_clause(entity, filter, rest.trim()));
            }
            comparison(entity, filter, expr)
        })
        .collect()
}

/// Splits a filter's tokens into its comparisons at the `AND`s outside parentheses (and not
/// after a `.`, where `AND` is a key: `tags.AND`), dropping whitespace and comments, and
/// enforces [`MAX_FILTER_CLAUSES`] and [`MAX_CLAUSE_TOKENS`] before any clause is parsed.
/// This is where the conjunction is taken apart, iteratively: a conjunction parsed whole
/// would be a tree as deep as the filter has `AND`s.
fn split_clauses(tokens: Vec<TokenWithSpan>) -> Result<Vec<Vec<TokenWithSpan>>, SearchError> {
    let mut clauses = Vec::new();
    let mut clause = Vec::new();
    let mut counted = 0;
    let mut depth = 0usize;
    let mut after_period = false;
    for t in tokens {
        let is_and = matches!(&t.token, Token::Word(w) if w.keyword == Keyword::AND && w.quote_style.is_none());
        match &t.token {
            Token::Whitespace(_) => continue,
            _ if is_and && depth == 0 && !after_period => {
                clauses.push(std::mem::take(&mut clause));
                counted = 0;
                if clauses.len() >= MAX_FILTER_CLAUSES {
                    return Err(too_many_clauses());
                }
                after_period = false;
                continue;
            }
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
        after_period = t.token == Token::Period;
        if counts_toward_depth(&t.token) {
            counted += 1;
            if counted > MAX_CLAUSE_TOKENS {
                return Err(invalid(format!(
                    "Invalid filter string: a comparison has more than {MAX_CLAUSE_TOKENS} \
                     tokens besides its values."
                )));
            }
        }
        clause.push(t);
    }
    clauses.push(clause);
    Ok(clauses)
}

fn too_many_clauses() -> SearchError {
    invalid(format!(
        "Invalid filter string: it has more than {MAX_FILTER_CLAUSES} comparisons joined \
         with 'AND'."
    ))
}

/// Whether a token can add a level to a comparison's syntax tree: anything but a literal
/// (quoted string or identifier, number) and the comma between list items.
fn counts_toward_depth(token: &Token) -> bool {
    match token {
        Token::Comma
        | Token::Number(..)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_) => false,
        Token::Word(w) => w.quote_style.is_none(),
        _ => true,
    }
}

fn invalid_clause(entity: Entity, filter: &str, clause: &str) -> SearchError {
    match entity {
        Entity::LoggedModels => invalid(format!(
            "Invalid filter string: '{filter}'. Expected a list of comparisons separated by \
             'AND' (e.g. 'metrics.loss > 0.1 AND params.lr = 0.01')."
        )),
        Entity::Runs => invalid(format!("Invalid clause(s) in filter string: '{clause}'")),
        _ => invalid(format!("Invalid clause(s) in filter string: {clause}")),
    }
}

fn comparison(entity: Entity, filter: &str, expr: Expr) -> Result<Cmp, SearchError> {
    let shown = expr.to_string();
    let clause_error = || invalid_clause(entity, filter, &shown);
    let (left, op, val) = match expr {
        Expr::BinaryOp { left, op, right } => {
            let op = match op {
                BinaryOperator::Eq => Op::Eq,
                BinaryOperator::NotEq => Op::Ne,
                BinaryOperator::Lt => Op::Lt,
                BinaryOperator::LtEq => Op::Le,
                BinaryOperator::Gt => Op::Gt,
                BinaryOperator::GtEq => Op::Ge,
                BinaryOperator::Custom(s) => Op::Other(s),
                _ => return Err(clause_error()),
            };
            (left, op, value(*right))
        }
        Expr::Like {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => {
            let op = if negated {
                Op::Other("NOT LIKE".to_owned())
            } else {
                Op::Like
            };
            (expr, op, value(*pattern))
        }
        Expr::ILike {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => {
            let op = if negated {
                Op::Other("NOT ILIKE".to_owned())
            } else {
                Op::ILike
            };
            (expr, op, value(*pattern))
        }
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated,
            global: false,
        } => {
            let op = if negated { Op::NotIn } else { Op::In };
            (expr, op, Val::List(list.into_iter().map(value).collect()))
        }
        Expr::IsNull(expr) => (expr, Op::IsNull, Val::Absent),
        Expr::IsNotNull(expr) => (expr, Op::IsNotNull, Val::Absent),
        _ => return Err(clause_error()),
    };
    if entity == Entity::LoggedModels && op.is_null_test() {
        return Err(invalid(format!(
            "Invalid comparison: {shown}. Expected a comparison with 3 tokens."
        )));
    }
    let ident = match *left {
        e @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => e.to_string(),
        other => {
            return Err(invalid(format!(
                "Invalid comparison clause. Expected 'Identifier' found '{other}'"
            )));
        }
    };
    Ok(Cmp {
        ident,
        op,
        val,
        shown,
    })
}

fn value(expr: Expr) -> Val {
    match expr {
        Expr::Value(v) => match v.value {
            Value::SingleQuotedString(s) => Val::Str(s, '\''),
            Value::DoubleQuotedString(s) => Val::Str(s, '"'),
            Value::Number(text, _) => number(text),
            other => Val::Other(other.to_string()),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match *expr {
            Expr::Value(v) => match v.value {
                Value::Number(text, _) => number(format!("-{text}")),
                other => Val::Other(format!("-{other}")),
            },
            other => Val::Other(format!("-{other}")),
        },
        Expr::Identifier(id) if id.quote_style == Some('"') => Val::Str(id.value, '"'),
        e @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_)) => Val::Bare(e.to_string()),
        other => Val::Other(other.to_string()),
    }
}

fn number(text: String) -> Val {
    let float = text.contains(['.', 'e', 'E']);
    Val::Num { text, float }
}

fn is_quoted(s: &str, q: char) -> bool {
    s.len() >= 2 && s.starts_with(q) && s.ends_with(q)
}

/// MLflow's `_trim_backticks`.
pub(super) fn trim_backticks(s: &str) -> &str {
    if is_quoted(s, '`') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// MLflow's `_strip_quotes` (single or double quotes).
pub(super) fn strip_quotes(s: &str) -> &str {
    if is_quoted(s, '\'') || is_quoted(s, '"') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// Splits one order_by clause into its key (quotes removed, parts joined by dots, as MLflow's
/// shlex split leaves it) and whether it is ascending.
pub(super) fn parse_order_clause(clause: &str) -> Result<(String, bool), SearchError> {
    let unparsable = || {
        invalid(format!(
            "Invalid order_by clause '{clause}'. Could not be parsed."
        ))
    };
    let tokens = Tokenizer::new(&FilterDialect, clause)
        .tokenize()
        .map_err(|_| unparsable())?;
    let tokens: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let mut parts = Vec::new();
    let mut i = 0;
    loop {
        match tokens.get(i) {
            Some(Token::Word(w)) => parts.push(w.value.clone()),
            _ => return Err(unparsable()),
        }
        i += 1;
        if tokens.get(i) != Some(&Token::Period) {
            break;
        }
        i += 1;
    }
    let ascending = match tokens.get(i) {
        None => true,
        Some(Token::Word(w)) if w.quote_style.is_none() && i + 1 == tokens.len() => {
            match w.value.to_ascii_lowercase().as_str() {
                "asc" => true,
                "desc" => false,
                _ => {
                    return Err(invalid(format!(
                        "Invalid ordering key in order_by clause '{clause}'."
                    )));
                }
            }
        }
        Some(_) => return Err(unparsable()),
    };
    Ok((parts.join("."), ascending))
}

pub(super) fn duplicate_fields<S: AsRef<str>>(clauses: &[S]) -> SearchError {
    let names: Vec<&str> = clauses.iter().map(AsRef::as_ref).collect();
    invalid(format!(
        "`order_by` contains duplicate fields: {}",
        py_list(&names)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::test_support::{err, ok, text};

    /// `clause AND clause AND …`, `count` comparisons.
    fn conjunction(clause: &str, count: usize) -> String {
        vec![clause; count].join(" AND ")
    }

    /// Runs `check` on a thread with a 512 KiB stack, a quarter of a tokio worker's: a walk
    /// whose depth grows with the filter would overflow it and abort the test binary.
    fn on_small_stack(check: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(check)
            .unwrap()
            .join()
            .unwrap();
    }

    const ALL: [Entity; 5] = [
        Entity::Runs,
        Entity::Experiments,
        Entity::RegisteredModels,
        Entity::ModelVersions,
        Entity::LoggedModels,
    ];

    #[test]
    fn hostile_filters_are_refused_without_deep_recursion() {
        on_small_stack(|| {
            // The filter that overflowed a worker's stack: refused on its length.
            let huge = conjunction("attributes.status = 'x'", 20_000);
            for entity in ALL {
                assert!(err(entity, &huge).contains("more than the 65536 bytes"));
            }
            // Under the length bound, too many comparisons are refused before any is parsed.
            let many = conjunction("name = 'x'", MAX_FILTER_CLAUSES + 1);
            assert!(many.len() < MAX_FILTER_BYTES);
            for entity in ALL {
                assert_eq!(
                    err(entity, &many),
                    "Invalid filter string: it has more than 256 comparisons joined with 'AND'."
                );
            }
            // Chains sqlparser would build as deep trees inside one comparison: OR, +,
            // NOT, parentheses, each just under the length bound.
            let or = vec!["name = 'x'"; 4000].join(" OR ");
            let plus = format!("metrics.m > {}", vec!["1"; 15_000].join(" + "));
            let nots = format!("{}name = 'x'", "NOT ".repeat(10_000));
            let parens = format!("{}name = 'x'{}", "(".repeat(20_000), ")".repeat(20_000));
            for hostile in [&or, &plus, &nots, &parens] {
                assert!(hostile.len() <= MAX_FILTER_BYTES, "{}", hostile.len());
                for entity in ALL {
                    assert_eq!(
                        err(entity, hostile),
                        "Invalid filter string: a comparison has more than 64 tokens besides \
                         its values."
                    );
                }
            }
        });
    }

    #[test]
    fn filters_at_the_bounds_translate() {
        on_small_stack(|| {
            let most = conjunction("attributes.status = 'x'", MAX_FILTER_CLAUSES);
            let sql = ok(Entity::Runs, &most);
            assert_eq!(sql.binds.len(), MAX_FILTER_CLAUSES);
            assert_eq!(sql.text.matches(" AND ").count(), MAX_FILTER_CLAUSES - 1);
            // A long IN list is flat: its values and commas do not count as tokens.
            let list = vec!["'r'"; 16_000].join(",");
            let sql = ok(Entity::Runs, &format!("run_id IN ({list})"));
            assert_eq!(sql.binds.len(), 16_000);
            // Every comparison MLflow accepts is far below the token bound.
            let widest = "tags.mlflow.source.git.commit = 'a' AND \
                          attributes.run_id NOT IN ('a', 'b') AND tags.`a.b` IS NOT NULL AND \
                          attributes.run_name ILIKE 'x%'";
            assert_eq!(ok(Entity::Runs, widest).binds.len(), 6);
        });
    }

    #[test]
    fn and_is_only_a_separator_between_comparisons() {
        assert_eq!(
            ok(Entity::Runs, "tags.AND = 'x'").binds,
            [text("AND"), text("x")]
        );
        assert_eq!(
            ok(Entity::Runs, "tags.`AND` = 'x'").binds,
            [text("AND"), text("x")]
        );
        assert_eq!(
            ok(Entity::Runs, "tags.k = 'a AND b'").binds,
            [text("k"), text("a AND b")]
        );
        for dangling in [
            "name = 'x' AND",
            "AND name = 'x'",
            "name = 'x' AND AND name = 'y'",
        ] {
            assert_eq!(
                err(Entity::Experiments, dangling),
                format!("Error on parsing filter '{dangling}'")
            );
        }
        assert_eq!(
            err(Entity::Runs, "(tags.a = 'x' AND tags.b = 'y')"),
            "Invalid clause(s) in filter string: '(tags.a = 'x' AND tags.b = 'y')'"
        );
    }
}
