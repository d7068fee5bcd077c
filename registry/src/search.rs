//! MLflow search syntax: `filter` strings and `order_by` clauses translated into SQL
//! fragments with bound values, following MLflow 3.17's `SqlAlchemyStore`s (tracking and
//! model registry) and `mlflow/utils/search_utils.py`.
//!
//! The fragments refer to these table aliases, which the calling queries must use:
//! `runs r`, `experiments e`, `registered_models m`, `model_versions v`, `logged_models l`.
//! Placeholders are `$1, $2, …` (accepted by both SQLite and PostgreSQL); [`filter`] and
//! [`order_by_from`] take the number of their first placeholder so that they can follow
//! other conditions. Every value and key taken from the request is bound, never written into
//! the SQL text, so no string escaping rule of either database matters.
//!
//! A filter is untrusted input and is bounded before anything is built from it: at most
//! [`MAX_FILTER_BYTES`] bytes and [`MAX_FILTER_CLAUSES`] comparisons, each of at most
//! [`MAX_CLAUSE_TOKENS`] tokens besides its literals. The tokens are split into comparisons at
//! the top-level `AND`s, and `sqlparser` parses each comparison on its own: a syntax tree is
//! only ever built for one bounded comparison, so no walk over it (parse, display, drop)
//! recurses deeper than a few dozen levels, however long the filter.
//!
//! As in MLflow, only an `AND`-conjunction of comparisons `<identifier> <op> <value>` is
//! accepted. Identifiers are
//! `[<prefix>.]<key>` where key and prefix may be quoted with backticks or double quotes, and a
//! key may contain dots (`tags.mlflow.runName`). String values are quoted with single or double
//! quotes, numbers are bare.
//!
//! Semantics (MLflow's SQL stores):
//! * tags/params/metrics: `EXISTS` a row with that key whose value satisfies the comparison, so
//!   `tags.k != 'x'` means "tag k exists with another value"; `IS NULL` / `IS NOT NULL` (runs'
//!   tags and params, experiments' tags) test the key's absence / presence.
//! * metrics on runs compare numerically with `latest_metrics`; on logged models with any
//!   logged point of the model in `metrics` (rows whose `model_id` is the model's), as MLflow
//!   does with its `logged_model_metrics` table. Dataset-scoped metric filters/orderings and
//!   run `datasets.*` filters are not supported (the schema keeps no dataset columns) and give
//!   `Invalid`.
//! * `LIKE` is emitted as `LIKE` (case-sensitive: the SQLite connection runs
//!   `PRAGMA case_sensitive_like = ON`), `ILIKE` as `LOWER(x) LIKE LOWER($n)`.
//! * `attributes.run_name` compares the `runs.run_name` column (MLflow compares the
//!   `mlflow.runName` tag, which this server keeps equal to the column).
//! * registered models and model versions that are prompts (tag `mlflow.prompt.is_prompt` =
//!   `'true'`) are excluded unless the filter asks for prompts, as MLflow does; so the
//!   fragment for those two entities is never just `TRUE`. The `Deleted_Internal` stage and
//!   lifecycle/experiment restrictions are left to the caller.
//! * ordering puts rows without the ordered value last (`NULLS LAST`) in both directions and
//!   appends MLflow's tie-breakers.
//!
//! Deliberate deviations, all on inputs where MLflow misbehaves: a doubled quote inside a
//! string literal is unescaped (MLflow keeps both quotes); keyword comparators are accepted in
//! any case for experiments too; inputs on which MLflow raises an internal error (e.g.
//! `IS NULL` on registry entities, an unknown logged-model attribute) give `Invalid`; logged
//! model values may be double-quoted like everywhere else.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sqlparser::ast::{BinaryOperator, Expr, InTarget, UnaryOperator, Value};
use sqlparser::dialect::Dialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

/// The searchable entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Runs,
    Experiments,
    RegisteredModels,
    ModelVersions,
    LoggedModels,
}

/// A value bound to a `$N` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
}

/// An SQL fragment and the values of its placeholders, in placeholder order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
}

/// Longest filter accepted, in bytes. It bounds the work one search request can cause, and
/// with it the placeholders of the longest `IN` list (one per three bytes, `'',`) stay under
/// SQLite's limit of 32,766 bound values per statement.
pub const MAX_FILTER_BYTES: usize = 64 * 1024;

/// Most comparisons one filter may AND together; each becomes one condition (for tags,
/// params and metrics a subquery) of the search's SQL.
pub const MAX_FILTER_CLAUSES: usize = 256;

/// Most tokens one comparison may have, not counting its literals (quoted strings and
/// identifiers, numbers) and the commas between list items. A comparison MLflow accepts
/// needs about a dozen (`tags.mlflow.source.name NOT IN ('a', 'b')`); every level of the
/// tree sqlparser builds needs at least one such token (an operator, keyword or
/// parenthesis), so the bound is also a bound on that tree's depth.
pub const MAX_CLAUSE_TOKENS: usize = 64;

/// A rejected filter, ordering or page token; maps to MLflow's `INVALID_PARAMETER_VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    Invalid(String),
}

/// One `order_by` entry of MLflow's `SearchLoggedModels` request (`field_name`, `ascending`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldOrder {
    pub field_name: String,
    pub ascending: bool,
}

/// The WHERE condition (without `WHERE`) for `filter`; `TRUE` when it has no comparisons
/// (registered models and model versions: the prompt exclusion). Placeholders start at `$first`.
pub fn filter(entity: Entity, filter: &str, first: usize) -> Result<Sql, SearchError> {
    let comparisons = if filter.trim().is_empty() {
        Vec::new()
    } else {
        parse_filter(entity, filter)?
    };
    let mut out = Out::new(first);
    match entity {
        Entity::Runs => runs_filter(&comparisons, &mut out)?,
        Entity::Experiments => experiments_filter(&comparisons, &mut out)?,
        Entity::RegisteredModels | Entity::ModelVersions => {
            registry_filter(entity, &comparisons, &mut out)?
        }
        Entity::LoggedModels => logged_models_filter(&comparisons, &mut out)?,
    }
    Ok(out.finish(" AND ", "TRUE"))
}

/// [`order_by_from`] with placeholders starting at `$1`.
pub fn order_by<S: AsRef<str>>(entity: Entity, clauses: &[S]) -> Result<Sql, SearchError> {
    order_by_from(entity, clauses, 1)
}

/// The ORDER BY list (without `ORDER BY`) for MLflow `order_by` clauses (`<key> [ASC|DESC]`),
/// MLflow's default order when `clauses` is empty, and its tie-breakers. The keys of
/// metrics/params/tags ordered through scalar subqueries are bound, from `$first` on.
/// For logged models a clause is `<field_name> [ASC|DESC]`, see [`order_by_logged_models`].
pub fn order_by_from<S: AsRef<str>>(
    entity: Entity,
    clauses: &[S],
    first: usize,
) -> Result<Sql, SearchError> {
    let clauses: Vec<&str> = clauses.iter().map(AsRef::as_ref).collect();
    match entity {
        Entity::Runs => runs_order_by(&clauses, first),
        Entity::Experiments => experiments_order_by(&clauses),
        Entity::RegisteredModels => registered_models_order_by(&clauses),
        Entity::ModelVersions => model_versions_order_by(&clauses),
        Entity::LoggedModels => {
            let fields = clauses
                .iter()
                .map(|clause| {
                    let (field_name, ascending) = parse_order_clause(clause)?;
                    Ok(FieldOrder {
                        field_name,
                        ascending,
                    })
                })
                .collect::<Result<Vec<_>, SearchError>>()?;
            order_by_logged_models(&fields, first)
        }
    }
}

/// The ORDER BY list for `SearchLoggedModels`' structured `order_by` (attribute names or
/// `metrics.<key>`, ordered by the model's latest value of that metric); metric keys are
/// bound from `$first` on.
pub fn order_by_logged_models(fields: &[FieldOrder], first: usize) -> Result<Sql, SearchError> {
    let mut out = Out::new(first);
    let mut has_creation = false;
    let mut has_model_id = false;
    for field in fields {
        let direction = if field.ascending { "ASC" } else { "DESC" };
        let name = field.field_name.as_str();
        if let Some((entity, key)) = name.split_once('.') {
            if entity != "metrics" {
                return Err(invalid(format!(
                    "Invalid order by field name: {name}. Only metrics are supported."
                )));
            }
            let k = out.bind_key(key)?;
            out.push(format!(
                "(SELECT mx.value FROM metrics mx WHERE mx.model_id = l.model_id AND mx.key = {k} \
                 ORDER BY mx.timestamp DESC, mx.step DESC, mx.run_uuid ASC LIMIT 1) \
                 {direction} NULLS LAST"
            ));
        } else {
            let column = logged_model_column(name.trim())
                .ok_or_else(|| invalid(format!("Invalid order by field name: {name}")))?;
            has_creation |= column == "creation_timestamp_ms";
            has_model_id |= column == "model_id";
            out.push(format!("l.{column} {direction}"));
        }
    }
    if !has_creation {
        out.push("l.creation_timestamp_ms DESC".to_owned());
    }
    if !has_model_id {
        out.push("l.model_id ASC".to_owned());
    }
    Ok(out.finish(", ", ""))
}

/// An MLflow page token: base64 of `{"offset": n}`.
pub fn encode_page_token(offset: u64) -> String {
    BASE64.encode(format!("{{\"offset\": {offset}}}"))
}

/// The offset in an MLflow page token; an empty token is offset 0. Like MLflow, a token whose
/// offset is missing or 0 is rejected (MLflow never issues one).
pub fn decode_page_token(token: &str) -> Result<u64, SearchError> {
    if token.is_empty() {
        return Ok(0);
    }
    let decoded = BASE64
        .decode(token.trim())
        .map_err(|_| invalid("Invalid page token, could not base64-decode"))?;
    let parsed: serde_json::Value = serde_json::from_slice(&decoded).map_err(|_| {
        invalid(format!(
            "Invalid page token, decoded value={}",
            String::from_utf8_lossy(&decoded)
        ))
    })?;
    let offset = parsed.get("offset");
    let falsy = match offset {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(serde_json::Value::String(s)) => s.is_empty(),
        Some(serde_json::Value::Bool(b)) => !b,
        _ => false,
    };
    if falsy {
        return Err(invalid(format!(
            "Invalid page token, parsed value={parsed}"
        )));
    }
    let offset = offset.expect("checked above");
    let value = match offset {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    value.ok_or_else(|| invalid(format!("Invalid page token, not stringable {offset}")))
}

// ---------------------------------------------------------------------------------------------
// Shared vocabulary

fn invalid(message: impl Into<String>) -> SearchError {
    SearchError::Invalid(message.into())
}

/// Formats names the way Python prints a set of strings: `{'a', 'b'}`.
fn py_set(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("{{{}}}", quoted.join(", "))
}

/// Formats names the way Python prints a list of strings: `['a', 'b']`.
fn py_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

const NUMERIC_OPS: &[&str] = &[">", ">=", "!=", "=", "<", "<="];
const STRING_ATTRIBUTE_OPS: &[&str] = &["!=", "=", "LIKE", "ILIKE", "IN", "NOT IN"];
const PARAM_TAG_OPS: &[&str] = &["!=", "=", "LIKE", "ILIKE", "IS NULL", "IS NOT NULL"];
const IS_PROMPT_TAG_KEY: &str = "mlflow.prompt.is_prompt";

/// A comparison operator as MLflow spells it; `Other` keeps one MLflow rejects (`<>`, `==`,
/// `NOT LIKE`) for the error message.
#[derive(Debug, Clone, PartialEq)]
enum Op {
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

    fn is_one_of(&self, ops: &[&str]) -> bool {
        ops.contains(&self.as_str())
    }

    fn is_null_test(&self) -> bool {
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
enum Val {
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
    fn shown(&self) -> String {
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
struct Cmp {
    ident: String,
    op: Op,
    val: Val,
    shown: String,
}

/// What a comparison binds: one value, or the members of an `IN` list.
enum Arg {
    One(Bind),
    Many(Vec<Bind>),
}

// ---------------------------------------------------------------------------------------------
// Parsing (sqlparser)

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

fn parse_filter(entity: Entity, filter: &str) -> Result<Vec<Cmp>, SearchError> {
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
fn trim_backticks(s: &str) -> &str {
    if is_quoted(s, '`') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// MLflow's `_strip_quotes` (single or double quotes).
fn strip_quotes(s: &str) -> &str {
    if is_quoted(s, '\'') || is_quoted(s, '"') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// Splits one order_by clause into its key (quotes removed, parts joined by dots, as MLflow's
/// shlex split leaves it) and whether it is ascending.
fn parse_order_clause(clause: &str) -> Result<(String, bool), SearchError> {
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

fn duplicate_fields<S: AsRef<str>>(clauses: &[S]) -> SearchError {
    let names: Vec<&str> = clauses.iter().map(AsRef::as_ref).collect();
    invalid(format!(
        "`order_by` contains duplicate fields: {}",
        py_list(&names)
    ))
}

// ---------------------------------------------------------------------------------------------
// Values (MLflow's `_get_value` family)

fn not_quoted(raw: &str) -> SearchError {
    invalid(format!(
        "Parameter value is either not quoted or unidentified quote types used for string \
         value {raw}. Use either single or double quotes."
    ))
}

/// A tag or param value: a quoted string.
fn tag_value(val: &Val, kind: &str) -> Result<String, SearchError> {
    match val {
        Val::Str(s, _) => Ok(s.clone()),
        Val::Bare(raw) => Err(not_quoted(raw)),
        other => Err(invalid(format!(
            "Expected a quoted string value for {kind} (e.g. 'my-value'). Got value {}",
            other.shown()
        ))),
    }
}

/// A parenthesized list of quoted strings (MLflow's `_parse_list_from_sql_token`).
fn string_list(items: &[Val]) -> Result<Vec<Bind>, SearchError> {
    if items.is_empty() {
        return Err(invalid(
            "While parsing a list in the query, expected a non-empty list of string values, \
             but got empty list",
        ));
    }
    items
        .iter()
        .map(|item| match item {
            Val::Str(s, _) => Ok(Bind::Text(s.clone())),
            Val::Num { .. } => Err(invalid(format!(
                "While parsing a list in the query, expected string value, punctuation, or \
                 whitespace, but got different type in list: {}",
                Val::List(items.to_vec()).shown()
            ))),
            _ => Err(invalid(
                "While parsing a list in the query, expected a non-empty list of string values, \
                 but got ill-formed list.",
            )),
        })
        .collect()
}

fn check_list_supported(key: &str, supported: &[&str]) -> Result<(), SearchError> {
    if supported.contains(&key) {
        Ok(())
    } else {
        Err(invalid(format!(
            "Only {} attributes support comparison with a list of quoted string values.",
            py_list(supported)
        )))
    }
}

fn number_bind(text: &str, float: bool) -> Result<Bind, SearchError> {
    if !float && let Ok(i) = text.parse::<i64>() {
        return Ok(Bind::Int(i));
    }
    text.parse::<f64>()
        .map(Bind::Float)
        .map_err(|_| invalid(format!("Invalid numeric value {text}")))
}

/// A tracking string attribute: quoted string, or a list for the keys that support one.
fn string_attribute_value(val: &Val, key: &str, list_keys: &[&str]) -> Result<Arg, SearchError> {
    match val {
        Val::Str(s, _) => Ok(Arg::One(Bind::Text(s.clone()))),
        Val::Bare(raw) => Err(not_quoted(raw)),
        Val::List(items) => {
            check_list_supported(key, list_keys)?;
            Ok(Arg::Many(string_list(items)?))
        }
        other => Err(invalid(format!(
            "Expected a quoted string value for attributes. Got value {}",
            other.shown()
        ))),
    }
}

/// A tracking numeric attribute: a number literal.
fn numeric_attribute_value(val: &Val, key: &str) -> Result<Bind, SearchError> {
    match val {
        Val::Num { text, float } => number_bind(text, *float),
        other => Err(invalid(format!(
            "Expected numeric value type for numeric attribute: {key}. Found {}",
            other.shown()
        ))),
    }
}

/// A metric value: a number literal.
fn metric_value(val: &Val) -> Result<Bind, SearchError> {
    match val {
        Val::Num { text, .. } => text
            .parse::<f64>()
            .map(Bind::Float)
            .map_err(|_| invalid(format!("Invalid numeric value {text}"))),
        other => Err(invalid(format!(
            "Expected numeric value type for metric. Found {}",
            other.shown()
        ))),
    }
}

fn check_op(op: &Op, allowed: &[&str]) -> Result<(), SearchError> {
    if op.is_one_of(allowed) {
        Ok(())
    } else {
        Err(invalid(format!(
            "Invalid comparator '{op}' not one of '{}'",
            py_set(allowed)
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// SQL output

struct Out {
    parts: Vec<String>,
    binds: Vec<Bind>,
    next: usize,
}

impl Out {
    fn new(first: usize) -> Self {
        Out {
            parts: Vec::new(),
            binds: Vec::new(),
            next: first.max(1),
        }
    }

    fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        let placeholder = format!("${}", self.next);
        self.next += 1;
        placeholder
    }

    /// Binds an order_by key. PostgreSQL cannot store a NUL character in text, so one is
    /// refused here rather than failing the query.
    fn bind_key(&mut self, key: &str) -> Result<String, SearchError> {
        if key.contains('\0') {
            return Err(invalid("Invalid order_by key: it contains a NUL character"));
        }
        Ok(self.bind(Bind::Text(key.to_owned())))
    }

    fn push(&mut self, part: String) {
        self.parts.push(part);
    }

    /// `column <op> value(s)`.
    fn compare(&mut self, column: &str, op: &Op, arg: Arg) -> Result<String, SearchError> {
        let unexpected = || invalid(format!("Invalid comparator '{op}' for {column}"));
        match (op, arg) {
            (Op::In | Op::NotIn, Arg::Many(binds)) => {
                let placeholders: Vec<String> = binds.into_iter().map(|b| self.bind(b)).collect();
                Ok(format!("{column} {op} ({})", placeholders.join(", ")))
            }
            (Op::ILike, Arg::One(b)) => {
                let p = self.bind(b);
                Ok(format!("LOWER({column}) LIKE LOWER({p})"))
            }
            (Op::Ne, Arg::One(b)) => {
                let p = self.bind(b);
                Ok(format!("{column} <> {p}"))
            }
            (Op::Eq | Op::Lt | Op::Le | Op::Gt | Op::Ge | Op::Like, Arg::One(b)) => {
                let p = self.bind(b);
                Ok(format!("{column} {op} {p}"))
            }
            _ => Err(unexpected()),
        }
    }

    /// `[NOT] EXISTS` a key/value row of `table` linked to the outer row, optionally with its
    /// value satisfying a comparison.
    fn exists(
        &mut self,
        kv: KeyValueTable,
        key: &str,
        condition: Option<(&Op, Arg)>,
        negated: bool,
    ) -> Result<String, SearchError> {
        let KeyValueTable { table, alias, link } = kv;
        let k = self.bind(Bind::Text(key.to_owned()));
        let mut sql =
            format!("EXISTS (SELECT 1 FROM {table} {alias} WHERE {link} AND {alias}.key = {k}");
        if let Some((op, arg)) = condition {
            let value = format!("{alias}.value");
            sql.push_str(" AND ");
            sql.push_str(&self.compare(&value, op, arg)?);
        }
        sql.push(')');
        Ok(if negated { format!("NOT {sql}") } else { sql })
    }

    fn finish(self, separator: &str, empty: &str) -> Sql {
        Sql {
            text: if self.parts.is_empty() {
                empty.to_owned()
            } else {
                self.parts.join(separator)
            },
            binds: self.binds,
        }
    }
}

/// A key/value side table (tags, params, metrics) and how its rows link to the outer row.
#[derive(Clone, Copy)]
struct KeyValueTable {
    table: &'static str,
    alias: &'static str,
    link: &'static str,
}

const RUN_TAGS: KeyValueTable = KeyValueTable {
    table: "run_tags",
    alias: "tg",
    link: "tg.run_uuid = r.run_uuid",
};
const RUN_PARAMS: KeyValueTable = KeyValueTable {
    table: "params",
    alias: "pm",
    link: "pm.run_uuid = r.run_uuid",
};
const RUN_METRICS: KeyValueTable = KeyValueTable {
    table: "latest_metrics",
    alias: "lm",
    link: "lm.run_uuid = r.run_uuid",
};
const EXPERIMENT_TAGS: KeyValueTable = KeyValueTable {
    table: "experiment_tags",
    alias: "tg",
    link: "tg.experiment_id = e.experiment_id",
};
const REGISTERED_MODEL_TAGS: KeyValueTable = KeyValueTable {
    table: "registered_model_tags",
    alias: "tg",
    link: "tg.name = m.name",
};
const MODEL_VERSION_TAGS: KeyValueTable = KeyValueTable {
    table: "model_version_tags",
    alias: "tg",
    link: "tg.name = v.name AND tg.version = v.version",
};
const LOGGED_MODEL_TAGS: KeyValueTable = KeyValueTable {
    table: "logged_model_tags",
    alias: "tg",
    link: "tg.model_id = l.model_id",
};
const LOGGED_MODEL_PARAMS: KeyValueTable = KeyValueTable {
    table: "logged_model_params",
    alias: "pm",
    link: "pm.model_id = l.model_id",
};
const LOGGED_MODEL_METRICS: KeyValueTable = KeyValueTable {
    table: "metrics",
    alias: "mx",
    link: "mx.model_id = l.model_id",
};

// ---------------------------------------------------------------------------------------------
// Runs (SearchUtils)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Metric,
    Param,
    Tag,
    Attribute,
    Dataset,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Metric => "metric",
            Kind::Param => "parameter",
            Kind::Tag => "tag",
            Kind::Attribute => "attribute",
            Kind::Dataset => "dataset",
        }
    }
}

const RUN_SEARCH_ATTRIBUTES: &[&str] = &[
    "artifact_uri",
    "end_time",
    "run_id",
    "run_name",
    "start_time",
    "status",
    "user_id",
    "created",
    "Created",
    "run name",
    "Run name",
    "Run Name",
];
const RUN_ORDER_ATTRIBUTES: &[&str] = &[
    "artifact_uri",
    "end_time",
    "run_id",
    "run_name",
    "start_time",
    "status",
    "user_id",
    "created",
    "Created",
];
const RUN_NUMERIC_ATTRIBUTES: &[&str] = &["start_time", "end_time", "created", "Created"];
const DATASET_ATTRIBUTES: &[&str] = &["name", "digest", "context"];

/// MLflow's `SearchUtils._get_identifier`.
fn run_identifier(raw: &str, valid: &[&str]) -> Result<(Kind, String), SearchError> {
    let (kind, key) = match raw.split_once('.') {
        None => (Kind::Attribute, raw),
        Some((prefix, key)) => {
            let prefix = trim_backticks(prefix);
            let kind = match prefix {
                "metric" | "metrics" => Kind::Metric,
                "parameter" | "parameters" | "param" | "params" => Kind::Param,
                "tag" | "tags" => Kind::Tag,
                "attribute" | "attr" | "attributes" | "run" => Kind::Attribute,
                "dataset" | "datasets" => Kind::Dataset,
                _ => {
                    return Err(invalid(format!(
                        "Invalid entity type '{prefix}'. Valid values are {}",
                        py_list(&["metric", "parameter", "tag", "attribute", "dataset"])
                    )));
                }
            };
            (kind, key)
        }
    };
    let key = trim_backticks(strip_quotes(key)).to_owned();
    if kind == Kind::Attribute && !valid.contains(&key.as_str()) {
        return Err(invalid(format!(
            "Invalid attribute key '{key}' specified. Valid keys are '{}'",
            py_set(valid)
        )));
    }
    if kind == Kind::Dataset && !DATASET_ATTRIBUTES.contains(&key.as_str()) {
        return Err(invalid(format!(
            "Invalid dataset key '{key}' specified. Valid keys are '{}'",
            py_set(DATASET_ATTRIBUTES)
        )));
    }
    Ok((kind, key))
}

/// The `runs` column of a run attribute, aliases (`created`, `Run name`…) resolved.
fn run_column(key: &str) -> &'static str {
    match key {
        "created" | "Created" | "start_time" => "start_time",
        "run name" | "Run name" | "Run Name" | "run_name" => "run_name",
        "run_id" => "run_uuid",
        "end_time" => "end_time",
        "status" => "status",
        "user_id" => "user_id",
        _ => "artifact_uri",
    }
}

fn run_key_values(kind: Kind) -> KeyValueTable {
    match kind {
        Kind::Metric => RUN_METRICS,
        Kind::Param => RUN_PARAMS,
        _ => RUN_TAGS,
    }
}

fn runs_filter(comparisons: &[Cmp], out: &mut Out) -> Result<(), SearchError> {
    for c in comparisons {
        let (kind, key) = run_identifier(&c.ident, RUN_SEARCH_ATTRIBUTES)?;
        if c.op.is_null_test() {
            if !matches!(kind, Kind::Tag | Kind::Param) {
                return Err(invalid(format!(
                    "IS NULL / IS NOT NULL is only supported for tags and params, not for '{}' \
                     '{key}'",
                    kind.name()
                )));
            }
            let sql = out.exists(run_key_values(kind), &key, None, c.op == Op::IsNull)?;
            out.push(sql);
            continue;
        }
        let sql = match kind {
            Kind::Metric => {
                let v = metric_value(&c.val)?;
                check_op(&c.op, NUMERIC_OPS)?;
                out.exists(RUN_METRICS, &key, Some((&c.op, Arg::One(v))), false)?
            }
            Kind::Param | Kind::Tag => {
                let v = tag_value(&c.val, kind.name())?;
                check_op(&c.op, PARAM_TAG_OPS)?;
                let condition = Some((&c.op, Arg::One(Bind::Text(v))));
                out.exists(run_key_values(kind), &key, condition, false)?
            }
            Kind::Attribute => {
                let numeric = RUN_NUMERIC_ATTRIBUTES.contains(&key.as_str());
                let arg = if numeric {
                    Arg::One(numeric_attribute_value(&c.val, &key)?)
                } else {
                    string_attribute_value(&c.val, &key, &["run_id"])?
                };
                check_op(
                    &c.op,
                    if numeric {
                        NUMERIC_OPS
                    } else {
                        STRING_ATTRIBUTE_OPS
                    },
                )?;
                out.compare(&format!("r.{}", run_column(&key)), &c.op, arg)?
            }
            Kind::Dataset => {
                return Err(invalid(format!(
                    "Searching runs by dataset is not supported by this server: '{}'",
                    c.shown
                )));
            }
        };
        out.push(sql);
    }
    Ok(())
}

fn runs_order_by(clauses: &[&str], first: usize) -> Result<Sql, SearchError> {
    let mut out = Out::new(first);
    let mut seen: Vec<(Kind, String)> = Vec::new();
    for clause in clauses {
        let (key, ascending) = parse_order_clause(clause)?;
        let (kind, key) = run_identifier(key.trim(), RUN_ORDER_ATTRIBUTES)?;
        let (value, nullable, key) = match kind {
            Kind::Attribute => {
                let column = run_column(&key);
                (
                    format!("r.{column}"),
                    column == "end_time",
                    column.to_owned(),
                )
            }
            Kind::Metric | Kind::Param | Kind::Tag => {
                let KeyValueTable { table, alias, link } = run_key_values(kind);
                let k = out.bind_key(&key)?;
                let lookup = format!(
                    "(SELECT {alias}.value FROM {table} {alias} WHERE {link} AND {alias}.key = {k})"
                );
                (lookup, true, key)
            }
            Kind::Dataset => {
                return Err(invalid(format!(
                    "Invalid identifier type '{}'",
                    kind.name()
                )));
            }
        };
        if seen.contains(&(kind, key.clone())) {
            return Err(duplicate_fields(clauses));
        }
        seen.push((kind, key));
        let direction = if ascending { "ASC" } else { "DESC" };
        let nulls = if nullable { " NULLS LAST" } else { "" };
        out.push(format!("{value} {direction}{nulls}"));
    }
    if !seen.contains(&(Kind::Attribute, "start_time".to_owned())) {
        out.push("r.start_time DESC".to_owned());
    }
    out.push("r.run_uuid ASC".to_owned());
    Ok(out.finish(", ", ""))
}

// ---------------------------------------------------------------------------------------------
// Experiments (SearchExperimentsUtils)

const EXPERIMENT_ATTRIBUTES: &[&str] =
    &["name", "experiment_id", "creation_time", "last_update_time"];
const EXPERIMENT_NUMERIC_ATTRIBUTES: &[&str] = &["creation_time", "last_update_time"];
const REGISTRY_ENTITY_TYPES: &str = "('attribute', 'tag', 'tags')";

/// `SearchExperimentsUtils._get_identifier` (also used by the registry's order_by): no prefix
/// or `attribute.` / `tag.` / `tags.`.
fn experiment_identifier(raw: &str, valid: &[&str]) -> Result<(Kind, String), SearchError> {
    let (kind, key) = match raw.split_once('.') {
        None => (Kind::Attribute, raw),
        Some((prefix, key)) => match prefix {
            "attribute" => (Kind::Attribute, key),
            "tag" | "tags" => (Kind::Tag, key),
            _ => {
                return Err(invalid(format!(
                    "Invalid entity type '{prefix}'. Valid entity types are {REGISTRY_ENTITY_TYPES}"
                )));
            }
        },
    };
    let key = trim_backticks(strip_quotes(key)).to_owned();
    if kind == Kind::Attribute && !valid.contains(&key.as_str()) {
        return Err(invalid(format!(
            "Invalid attribute key '{key}' specified. Valid keys are '{}'",
            py_set(valid)
        )));
    }
    Ok((kind, key))
}

fn experiments_filter(comparisons: &[Cmp], out: &mut Out) -> Result<(), SearchError> {
    for c in comparisons {
        let (kind, key) = experiment_identifier(&c.ident, EXPERIMENT_ATTRIBUTES)?;
        if c.op.is_null_test() {
            if kind != Kind::Tag {
                return Err(invalid(format!(
                    "IS NULL / IS NOT NULL is only supported for tags, not for attribute '{key}'"
                )));
            }
            let sql = out.exists(EXPERIMENT_TAGS, &key, None, c.op == Op::IsNull)?;
            out.push(sql);
            continue;
        }
        let sql = if kind == Kind::Tag {
            let v = tag_value(&c.val, "tag")?;
            if !c.op.is_one_of(&["=", "!=", "LIKE", "ILIKE"]) {
                return Err(invalid(format!("Invalid comparator for tag: {}", c.op)));
            }
            out.exists(
                EXPERIMENT_TAGS,
                &key,
                Some((&c.op, Arg::One(Bind::Text(v)))),
                false,
            )?
        } else if EXPERIMENT_NUMERIC_ATTRIBUTES.contains(&key.as_str()) {
            let v = numeric_attribute_value(&c.val, &key)?;
            check_op(&c.op, NUMERIC_OPS)?;
            let v = match v {
                Bind::Float(_) => {
                    let shown = c.val.shown();
                    return Err(invalid(format!(
                        "Invalid value for numeric attribute '{key}': '{shown}'"
                    )));
                }
                other => other,
            };
            out.compare(&format!("e.{key}"), &c.op, Arg::One(v))?
        } else {
            let arg = string_attribute_value(&c.val, &key, &["experiment_id"])?;
            if key == "experiment_id" {
                if !c.op.is_one_of(&["=", "!=", "IN", "NOT IN"]) {
                    return Err(invalid(format!(
                        "Invalid comparator for experiment_id: {}",
                        c.op
                    )));
                }
                let to_int = |b: Bind| match b {
                    Bind::Text(s) => s.trim().parse::<i64>().map(Bind::Int).map_err(|_| {
                        invalid(format!(
                            "Invalid experiment ID '{s}'. Experiment ID must be a valid integer."
                        ))
                    }),
                    other => Ok(other),
                };
                let arg = match arg {
                    Arg::One(b) => Arg::One(to_int(b)?),
                    Arg::Many(bs) => {
                        Arg::Many(bs.into_iter().map(to_int).collect::<Result<_, _>>()?)
                    }
                };
                out.compare("e.experiment_id", &c.op, arg)?
            } else {
                check_op(&c.op, STRING_ATTRIBUTE_OPS)?;
                if !c.op.is_one_of(&["=", "!=", "LIKE", "ILIKE"]) {
                    return Err(invalid(format!(
                        "Invalid comparator for string attribute: {}",
                        c.op
                    )));
                }
                out.compare(&format!("e.{key}"), &c.op, arg)?
            }
        };
        out.push(sql);
    }
    Ok(())
}

fn experiments_order_by(clauses: &[&str]) -> Result<Sql, SearchError> {
    const DEFAULT: &[&str] = &["creation_time DESC", "experiment_id ASC"];
    let clauses = if clauses.is_empty() { DEFAULT } else { clauses };
    let mut out = Out::new(1);
    let mut has_id = false;
    for clause in clauses {
        let (key, ascending) = parse_order_clause(clause)?;
        let (kind, key) = experiment_identifier(key.trim(), EXPERIMENT_ATTRIBUTES)?;
        if kind != Kind::Attribute {
            return Err(invalid(format!("Invalid order_by entity: {}", kind.name())));
        }
        has_id |= key == "experiment_id";
        let direction = if ascending { "ASC" } else { "DESC" };
        out.push(format!("e.{key} {direction}"));
    }
    if !has_id {
        out.push("e.experiment_id DESC".to_owned());
    }
    Ok(out.finish(", ", ""))
}

// ---------------------------------------------------------------------------------------------
// Registered models and model versions (SearchModelUtils, SearchModelVersionUtils)

const MODEL_VERSION_ATTRIBUTES: &[&str] = &["name", "version_number", "run_id", "source_path"];
const MODEL_VERSION_NUMERIC_ATTRIBUTES: &[&str] = &[
    "version_number",
    "creation_timestamp",
    "last_updated_timestamp",
];
const MODEL_VERSION_ORDER_KEYS: &[&str] = &[
    "name",
    "version_number",
    "creation_timestamp",
    "last_updated_timestamp",
];

/// `_get_model_search_identifier` / `_get_model_version_search_identifier`: the attribute key
/// is checked before its quotes are removed.
fn registry_identifier(raw: &str, valid: &[&str]) -> Result<(Kind, String), SearchError> {
    let (kind, key) = match raw.split_once('.') {
        None => (Kind::Attribute, raw),
        Some((prefix, key)) => match prefix {
            "attribute" => (Kind::Attribute, key),
            "tag" | "tags" => (Kind::Tag, key),
            _ => {
                return Err(invalid(format!(
                    "Invalid entity type '{prefix}'. Valid entity types are {REGISTRY_ENTITY_TYPES}"
                )));
            }
        },
    };
    if kind == Kind::Attribute && !valid.contains(&key) {
        return Err(invalid(format!(
            "Invalid attribute key '{key}' specified. Valid keys are '{}'",
            py_set(valid)
        )));
    }
    Ok((kind, trim_backticks(strip_quotes(key)).to_owned()))
}

/// A registry attribute value: quoted string, list (for `list_keys`), or a number (model
/// versions' numeric attributes).
fn registry_attribute_value(
    entity: Entity,
    val: &Val,
    key: &str,
) -> Result<(Arg, Option<(String, bool)>), SearchError> {
    let (list_keys, numeric_keys): (&[&str], &[&str]) = match entity {
        Entity::ModelVersions => (&["name", "run_id"], MODEL_VERSION_NUMERIC_ATTRIBUTES),
        _ => (&["name"], &[]),
    };
    let generic = || {
        invalid(format!(
            "Expected a quoted string value or a list of quoted string values for attributes. \
             Got value {}",
            val.shown()
        ))
    };
    match val {
        Val::Str(s, _) => Ok((Arg::One(Bind::Text(s.clone())), None)),
        Val::Bare(raw) => Err(not_quoted(raw)),
        Val::List(items) => {
            check_list_supported(key, list_keys)?;
            Ok((Arg::Many(string_list(items)?), None))
        }
        Val::Num { text, float } if entity == Entity::ModelVersions => {
            if !numeric_keys.contains(&key) {
                return Err(invalid(format!(
                    "Only the '{}' attributes support comparison with numeric values.",
                    py_set(numeric_keys)
                )));
            }
            Ok((
                Arg::One(number_bind(text, *float)?),
                Some((text.clone(), *float)),
            ))
        }
        _ => Err(generic()),
    }
}

fn is_querying_prompt(parsed: &[(Kind, String, &Cmp, Option<String>)]) -> bool {
    for (kind, key, c, value) in parsed {
        if *kind != Kind::Tag || key != IS_PROMPT_TAG_KEY {
            continue;
        }
        let value = value.as_deref().unwrap_or_default().to_lowercase();
        return (c.op == Op::Eq && value == "true") || (c.op == Op::Ne && value == "false");
    }
    false
}

fn registry_filter(entity: Entity, comparisons: &[Cmp], out: &mut Out) -> Result<(), SearchError> {
    let (valid, tags, alias) = match entity {
        Entity::ModelVersions => (MODEL_VERSION_ATTRIBUTES, MODEL_VERSION_TAGS, "v"),
        _ => (&["name"][..], REGISTERED_MODEL_TAGS, "m"),
    };
    // Parse and validate everything first, as MLflow does before building its query.
    let mut parsed = Vec::new();
    let mut args = Vec::new();
    for c in comparisons {
        if c.op.is_null_test() {
            return Err(invalid(
                "Invalid comparison clause. Expected 3 tokens found 2",
            ));
        }
        let (kind, key) = registry_identifier(&c.ident, valid)?;
        if kind == Kind::Tag {
            let v = tag_value(&c.val, "tag")?;
            if !c.op.is_one_of(&["=", "!=", "LIKE", "ILIKE"]) {
                return Err(invalid(format!("Invalid comparator for tag: {}", c.op)));
            }
            args.push(Arg::One(Bind::Text(v.clone())));
            parsed.push((kind, key, c, Some(v)));
            continue;
        }
        let (arg, number) = registry_attribute_value(entity, &c.val, &key)?;
        let arg = if MODEL_VERSION_NUMERIC_ATTRIBUTES.contains(&key.as_str()) {
            if !c.op.is_one_of(NUMERIC_OPS) {
                return Err(invalid(format!(
                    "Invalid comparator for attribute {key}: {}",
                    c.op
                )));
            }
            match (arg, number) {
                (_, Some((text, true))) => {
                    return Err(invalid(format!(
                        "Invalid value for numeric attribute '{key}': {text}"
                    )));
                }
                (Arg::One(Bind::Text(s)), _) => {
                    let i = s.trim().parse::<i64>().map_err(|_| {
                        invalid(format!(
                            "Invalid value for numeric attribute '{key}': '{s}'"
                        ))
                    })?;
                    Arg::One(Bind::Int(i))
                }
                (arg, _) => arg,
            }
        } else {
            let list_op = matches!(c.op, Op::In | Op::NotIn);
            if !c.op.is_one_of(STRING_ATTRIBUTE_OPS)
                || (list_op && entity == Entity::ModelVersions && key != "run_id" && key != "name")
            {
                return Err(invalid(format!(
                    "Invalid comparator for attribute: {}",
                    c.op
                )));
            }
            arg
        };
        args.push(arg);
        parsed.push((kind, key, c, None));
    }
    let querying_prompts = is_querying_prompt(&parsed);
    for ((kind, key, c, _), arg) in parsed.iter().zip(args) {
        if *kind == Kind::Tag {
            if key == IS_PROMPT_TAG_KEY && !querying_prompts {
                // MLflow drops filters on the prompt tag when it excludes prompts.
                continue;
            }
            let sql = out.exists(tags, key, Some((&c.op, arg)), false)?;
            out.push(sql);
            continue;
        }
        let column = match key.as_str() {
            "version_number" => "version",
            "source_path" => "source",
            other => other,
        };
        let sql = out.compare(&format!("{alias}.{column}"), &c.op, arg)?;
        out.push(sql);
    }
    if !querying_prompts {
        // Prompts are recognized by name: any version (or the model) tagged as a prompt.
        let table = tags.table;
        out.push(format!(
            "NOT EXISTS (SELECT 1 FROM {table} tg WHERE tg.name = {alias}.name AND tg.key = \
             '{IS_PROMPT_TAG_KEY}' AND tg.value = 'true')"
        ));
    }
    Ok(())
}

fn registered_models_order_by(clauses: &[&str]) -> Result<Sql, SearchError> {
    let mut out = Out::new(1);
    let mut seen: Vec<&str> = Vec::new();
    for clause in clauses {
        let (key, ascending) = parse_order_clause(clause)?;
        let column = match key.trim() {
            "name" => "name",
            "timestamp" | "last_updated_timestamp" => "last_updated_timestamp",
            other => {
                return Err(invalid(format!(
                    "Invalid order by key '{other}' specified. Valid keys are '{}'",
                    py_set(&["name", "timestamp"])
                )));
            }
        };
        if seen.contains(&column) {
            return Err(duplicate_fields(clauses));
        }
        seen.push(column);
        let direction = if ascending { "ASC" } else { "DESC" };
        out.push(format!("m.{column} {direction}"));
    }
    if !seen.contains(&"name") {
        out.push("m.name ASC".to_owned());
    }
    Ok(out.finish(", ", ""))
}

fn model_versions_order_by(clauses: &[&str]) -> Result<Sql, SearchError> {
    const DEFAULT: &[&str] = &[
        "last_updated_timestamp DESC",
        "name ASC",
        "version_number DESC",
    ];
    let clauses = if clauses.is_empty() { DEFAULT } else { clauses };
    let mut out = Out::new(1);
    let mut seen: Vec<&str> = Vec::new();
    for clause in clauses {
        let (key, ascending) = parse_order_clause(clause)?;
        let (_, key) = experiment_identifier(key.trim(), MODEL_VERSION_ORDER_KEYS)?;
        let column = match key.as_str() {
            "name" => "name",
            "version_number" => "version",
            "creation_timestamp" => "creation_timestamp",
            "last_updated_timestamp" => "last_updated_timestamp",
            _ => {
                return Err(invalid(format!(
                    "Invalid order by key '{key}' specified. Valid keys are {}",
                    py_set(MODEL_VERSION_ORDER_KEYS)
                )));
            }
        };
        if seen.contains(&column) {
            return Err(duplicate_fields(clauses));
        }
        seen.push(column);
        let direction = if ascending { "ASC" } else { "DESC" };
        out.push(format!("v.{column} {direction}"));
    }
    if !seen.contains(&"name") {
        out.push("v.name ASC".to_owned());
    }
    if !seen.contains(&"version") {
        out.push("v.version DESC".to_owned());
    }
    Ok(out.finish(", ", ""))
}

// ---------------------------------------------------------------------------------------------
// Logged models (mlflow/utils/search_logged_model_utils.py)

const LOGGED_MODEL_ATTRIBUTES: &[&str] = &[
    "name",
    "model_id",
    "model_type",
    "status",
    "source_run_id",
    "creation_timestamp",
    "creation_time",
    "last_updated_timestamp",
    "last_updated_time",
];

/// The `logged_models` column of an attribute name or alias.
fn logged_model_column(name: &str) -> Option<&'static str> {
    Some(match name {
        "name" => "name",
        "model_id" => "model_id",
        "model_type" => "model_type",
        "status" => "status",
        "source_run_id" => "source_run_id",
        "status_message" => "status_message",
        "artifact_location" => "artifact_location",
        "creation_timestamp" | "creation_time" | "creation_timestamp_ms" => "creation_timestamp_ms",
        "last_updated_timestamp" | "last_updated_time" | "last_updated_timestamp_ms" => {
            "last_updated_timestamp_ms"
        }
        _ => return None,
    })
}

fn logged_models_filter(comparisons: &[Cmp], out: &mut Out) -> Result<(), SearchError> {
    for c in comparisons {
        // `Entity.from_str`: `^([a-z]+)\.(.+)$` names an entity type, else an attribute.
        let (kind, key) = match c.ident.split_once('.') {
            Some((prefix, key))
                if !prefix.is_empty()
                    && !key.is_empty()
                    && prefix.bytes().all(|b| b.is_ascii_lowercase()) =>
            {
                let kind = match prefix {
                    "attributes" => Kind::Attribute,
                    "metrics" => Kind::Metric,
                    "params" => Kind::Param,
                    "tags" => Kind::Tag,
                    _ => {
                        return Err(invalid(format!(
                            "Invalid entity type: '{prefix}'. Expected one of {}.",
                            py_list(&["attributes", "metrics", "params", "tags"])
                        )));
                    }
                };
                (kind, key.trim_matches('`'))
            }
            _ => (Kind::Attribute, c.ident.trim_matches('`')),
        };
        let entity_name = match kind {
            Kind::Metric => format!("metrics.{key}"),
            Kind::Param => format!("params.{key}"),
            Kind::Tag => format!("tags.{key}"),
            _ => format!("attributes.{key}"),
        };
        let column = if kind == Kind::Attribute {
            Some(logged_model_column(key).ok_or_else(|| {
                invalid(format!(
                    "Invalid logged model search key '{key}'. Valid keys are '{}'",
                    py_set(LOGGED_MODEL_ATTRIBUTES)
                ))
            })?)
        } else {
            None
        };
        let numeric = kind == Kind::Metric
            || matches!(
                column,
                Some("creation_timestamp_ms" | "last_updated_timestamp_ms")
            );
        let ops: &[&str] = if numeric {
            &["<", "<=", ">", ">=", "=", "!="]
        } else {
            &["=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"]
        };
        if !c.op.is_one_of(ops) {
            let quoted: Vec<String> = ops.iter().map(|o| format!("'{o}'")).collect();
            return Err(invalid(format!(
                "Invalid comparison operator for {entity_name}: '{}'. Expected one of ({}).",
                c.op,
                quoted.join(", ")
            )));
        }
        let arg = if numeric {
            match &c.val {
                Val::Num { text, .. } => Arg::One(Bind::Float(
                    text.parse::<f64>()
                        .map_err(|_| invalid(format!("Invalid numeric value {text}")))?,
                )),
                other => {
                    return Err(invalid(format!(
                        "Expected numeric value type for {entity_name}. Found {}",
                        other.shown()
                    )));
                }
            }
        } else {
            match &c.val {
                Val::Str(s, _) => Arg::One(Bind::Text(s.clone())),
                Val::Num { text, .. } | Val::Bare(text) | Val::Other(text) => {
                    Arg::One(Bind::Text(text.clone()))
                }
                Val::List(items) => {
                    let members = items
                        .iter()
                        .map(|item| match item {
                            Val::Str(s, _) => Ok(Bind::Text(s.clone())),
                            Val::Num { text, .. } => Ok(Bind::Text(text.clone())),
                            _ => Err(invalid(
                                "While parsing a list in the query, expected a non-empty list \
                                 of string values, but got ill-formed list.",
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if members.is_empty() {
                        return Err(invalid(
                            "While parsing a list in the query, expected a non-empty list of \
                             string values, but got empty list",
                        ));
                    }
                    Arg::Many(members)
                }
                Val::Absent => unreachable!("IS NULL is rejected while parsing"),
            }
        };
        let sql = match (kind, column) {
            (Kind::Attribute, Some(column)) => out.compare(&format!("l.{column}"), &c.op, arg)?,
            (Kind::Metric, _) => {
                out.exists(LOGGED_MODEL_METRICS, key, Some((&c.op, arg)), false)?
            }
            (Kind::Param, _) => out.exists(LOGGED_MODEL_PARAMS, key, Some((&c.op, arg)), false)?,
            _ => out.exists(LOGGED_MODEL_TAGS, key, Some((&c.op, arg)), false)?,
        };
        out.push(sql);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Bind {
        Bind::Text(s.to_owned())
    }

    fn ok(entity: Entity, f: &str) -> Sql {
        filter(entity, f, 1).unwrap_or_else(|e| panic!("{f}: {e}"))
    }

    fn err(entity: Entity, f: &str) -> String {
        match filter(entity, f, 1) {
            Ok(sql) => panic!("{f}: expected an error, got {sql:?}"),
            Err(SearchError::Invalid(m)) => m,
        }
    }

    fn order_sql(entity: Entity, clauses: &[&str]) -> Sql {
        order_by(entity, clauses).unwrap_or_else(|e| panic!("{clauses:?}: {e}"))
    }

    /// The ORDER BY text of an ordering that binds nothing.
    fn order(entity: Entity, clauses: &[&str]) -> String {
        let sql = order_sql(entity, clauses);
        assert!(sql.binds.is_empty(), "{clauses:?} binds {:?}", sql.binds);
        sql.text
    }

    fn order_err(entity: Entity, clauses: &[&str]) -> String {
        match order_by(entity, clauses) {
            Ok(sql) => panic!("{clauses:?}: expected an error, got {sql:?}"),
            Err(SearchError::Invalid(m)) => m,
        }
    }

    const PROMPT_M: &str = "NOT EXISTS (SELECT 1 FROM registered_model_tags tg WHERE tg.name = \
                            m.name AND tg.key = 'mlflow.prompt.is_prompt' AND tg.value = 'true')";
    const PROMPT_V: &str = "NOT EXISTS (SELECT 1 FROM model_version_tags tg WHERE tg.name = \
                            v.name AND tg.key = 'mlflow.prompt.is_prompt' AND tg.value = 'true')";

    // ---- runs: accepted filters

    #[test]
    fn runs_empty_filter_is_true() {
        assert_eq!(
            ok(Entity::Runs, ""),
            Sql {
                text: "TRUE".into(),
                binds: vec![]
            }
        );
        assert_eq!(ok(Entity::Runs, "   ").text, "TRUE");
    }

    #[test]
    fn runs_metric_filter() {
        let sql = ok(Entity::Runs, "metrics.acc > 0.5");
        assert_eq!(
            sql.text,
            "EXISTS (SELECT 1 FROM latest_metrics lm WHERE lm.run_uuid = r.run_uuid AND lm.key = \
             $1 AND lm.value > $2)"
        );
        assert_eq!(sql.binds, vec![text("acc"), Bind::Float(0.5)]);
        let sql = ok(Entity::Runs, "metric.loss <= -1.5e-3 AND metrics.n != 3");
        assert_eq!(
            sql.binds,
            vec![
                text("loss"),
                Bind::Float(-1.5e-3),
                text("n"),
                Bind::Float(3.0)
            ]
        );
        assert!(sql.text.contains("lm.value <= $2) AND EXISTS"));
        assert!(sql.text.ends_with("lm.key = $3 AND lm.value <> $4)"));
    }

    #[test]
    fn runs_params_and_tags_start_at_first() {
        let sql = filter(
            Entity::Runs,
            "params.lr = '0.01' and tags.mlflow.runName != \"my run\"",
            3,
        )
        .unwrap();
        assert_eq!(
            sql.text,
            "EXISTS (SELECT 1 FROM params pm WHERE pm.run_uuid = r.run_uuid AND pm.key = $3 AND \
             pm.value = $4) AND EXISTS (SELECT 1 FROM run_tags tg WHERE tg.run_uuid = r.run_uuid \
             AND tg.key = $5 AND tg.value <> $6)"
        );
        assert_eq!(
            sql.binds,
            vec![
                text("lr"),
                text("0.01"),
                text("mlflow.runName"),
                text("my run")
            ]
        );
    }

    #[test]
    fn runs_identifier_prefixes_and_quoting() {
        for prefix in ["param", "params", "parameter", "parameters", "`params`"] {
            let sql = ok(Entity::Runs, &format!("{prefix}.p = 'x'"));
            assert!(sql.text.contains("FROM params pm"), "{prefix}");
        }
        for prefix in ["tag", "tags"] {
            assert!(
                ok(Entity::Runs, &format!("{prefix}.t = 'x'"))
                    .text
                    .contains("run_tags")
            );
        }
        for prefix in ["attribute", "attributes", "attr", "run"] {
            let sql = ok(Entity::Runs, &format!("{prefix}.status = 'FINISHED'"));
            assert_eq!(sql.text, "r.status = $1", "{prefix}");
        }
        // Keys with spaces, dots and quotes.
        let keys = [
            ("tags.`my key` = 'v'", "my key"),
            ("tags.\"my key\" = 'v'", "my key"),
            ("tags.`a.b.c` = 'v'", "a.b.c"),
            ("tags.a.b.c = 'v'", "a.b.c"),
            ("`tags`.`with space` = 'v'", "with space"),
            ("metrics.`f1 score` > 1", "f1 score"),
        ];
        for (f, key) in keys {
            assert_eq!(ok(Entity::Runs, f).binds[0], text(key), "{f}");
        }
        // Double-quoted values are strings.
        assert_eq!(
            ok(Entity::Runs, "params.p = \"it's\"").binds[1],
            text("it's")
        );
        assert_eq!(
            ok(Entity::Runs, "params.p = 'it''s'").binds[1],
            text("it's")
        );
    }

    #[test]
    fn runs_attributes() {
        let sql = ok(Entity::Runs, "attributes.run_id IN ('a', \"b\")");
        assert_eq!(sql.text, "r.run_uuid IN ($1, $2)");
        assert_eq!(sql.binds, vec![text("a"), text("b")]);
        let sql = ok(Entity::Runs, "run_id not in ('a')");
        assert_eq!(sql.text, "r.run_uuid NOT IN ($1)");
        let sql = ok(Entity::Runs, "created >= 100 AND attributes.end_time < 2.5");
        assert_eq!(sql.text, "r.start_time >= $1 AND r.end_time < $2");
        assert_eq!(sql.binds, vec![Bind::Int(100), Bind::Float(2.5)]);
        let sql = ok(Entity::Runs, "Created = 7");
        assert_eq!(sql.text, "r.start_time = $1");
        let sql = ok(
            Entity::Runs,
            "attr.`Run name` LIKE 'foo%' AND run_name ilike '%BAR'",
        );
        assert_eq!(
            sql.text,
            "r.run_name LIKE $1 AND LOWER(r.run_name) LIKE LOWER($2)"
        );
        let sql = ok(
            Entity::Runs,
            "user_id = 'u' AND artifact_uri != 'x' AND `status` = 'RUNNING'",
        );
        assert_eq!(
            sql.text,
            "r.user_id = $1 AND r.artifact_uri <> $2 AND r.status = $3"
        );
    }

    #[test]
    fn runs_like_ilike_and_null_tests() {
        let sql = ok(
            Entity::Runs,
            "tags.`my key` ILIKE '%A%' AND params.p LIKE 'x%'",
        );
        assert_eq!(
            sql.text,
            "EXISTS (SELECT 1 FROM run_tags tg WHERE tg.run_uuid = r.run_uuid AND tg.key = $1 AND \
             LOWER(tg.value) LIKE LOWER($2)) AND EXISTS (SELECT 1 FROM params pm WHERE \
             pm.run_uuid = r.run_uuid AND pm.key = $3 AND pm.value LIKE $4)"
        );
        let sql = ok(Entity::Runs, "params.p IS NULL AND tags.t is not null");
        assert_eq!(
            sql.text,
            "NOT EXISTS (SELECT 1 FROM params pm WHERE pm.run_uuid = r.run_uuid AND pm.key = $1) \
             AND EXISTS (SELECT 1 FROM run_tags tg WHERE tg.run_uuid = r.run_uuid AND tg.key = $2)"
        );
        assert_eq!(sql.binds, vec![text("p"), text("t")]);
    }

    // ---- runs: rejected filters

    #[test]
    fn runs_invalid_identifiers() {
        assert_eq!(
            err(Entity::Runs, "foo.bar = 'x'"),
            "Invalid entity type 'foo'. Valid values are ['metric', 'parameter', 'tag', \
             'attribute', 'dataset']"
        );
        let m = err(Entity::Runs, "attributes.foo = 'x'");
        assert!(
            m.starts_with("Invalid attribute key 'foo' specified. Valid keys are '{'artifact_uri'"),
            "{m}"
        );
        let m = err(Entity::Runs, "lifecycle_stage = 'active'");
        assert!(
            m.starts_with("Invalid attribute key 'lifecycle_stage'"),
            "{m}"
        );
        assert_eq!(
            err(Entity::Runs, "datasets.foo = 'x'"),
            "Invalid dataset key 'foo' specified. Valid keys are '{'name', 'digest', 'context'}'"
        );
        assert!(err(Entity::Runs, "datasets.name = 'x'").contains("not supported"));
        assert_eq!(
            err(Entity::Runs, "'a' = 'b'"),
            "Invalid comparison clause. Expected 'Identifier' found ''a''"
        );
    }

    #[test]
    fn runs_invalid_values() {
        assert_eq!(
            err(Entity::Runs, "metrics.acc > '0.5'"),
            "Expected numeric value type for metric. Found '0.5'"
        );
        assert_eq!(
            err(Entity::Runs, "params.p = 5"),
            "Expected a quoted string value for parameter (e.g. 'my-value'). Got value 5"
        );
        assert_eq!(
            err(Entity::Runs, "tags.t = 5"),
            "Expected a quoted string value for tag (e.g. 'my-value'). Got value 5"
        );
        assert_eq!(
            err(Entity::Runs, "params.p = abc"),
            "Parameter value is either not quoted or unidentified quote types used for string \
             value abc. Use either single or double quotes."
        );
        assert!(err(Entity::Runs, "params.p = `abc`").contains("string value `abc`."));
        assert_eq!(
            err(Entity::Runs, "start_time > 'x'"),
            "Expected numeric value type for numeric attribute: start_time. Found 'x'"
        );
        assert_eq!(
            err(Entity::Runs, "status = 5"),
            "Expected a quoted string value for attributes. Got value 5"
        );
        assert_eq!(
            err(Entity::Runs, "status IN ('a')"),
            "Only ['run_id'] attributes support comparison with a list of quoted string values."
        );
        assert_eq!(
            err(Entity::Runs, "run_id IN ('a', 1)"),
            "While parsing a list in the query, expected string value, punctuation, or \
             whitespace, but got different type in list: ('a', 1)"
        );
        assert!(err(Entity::Runs, "run_id IN (a)").contains("ill-formed list"));
        assert_eq!(
            err(Entity::Runs, "metrics.m IN (1, 2)"),
            "Expected numeric value type for metric. Found (1, 2)"
        );
    }

    #[test]
    fn runs_invalid_operators_and_clauses() {
        assert_eq!(
            err(Entity::Runs, "metrics.acc LIKE 5"),
            "Invalid comparator 'LIKE' not one of '{'>', '>=', '!=', '=', '<', '<='}'"
        );
        assert!(err(Entity::Runs, "metrics.acc <> 5").starts_with("Invalid comparator '<>'"));
        assert!(err(Entity::Runs, "metrics.acc == 5").starts_with("Invalid comparator '=='"));
        assert!(err(Entity::Runs, "params.p > 'a'").starts_with(
            "Invalid comparator '>' not one of '{'!=', '=', 'LIKE', 'ILIKE', 'IS NULL'"
        ));
        assert!(err(Entity::Runs, "status > 'a'").starts_with("Invalid comparator '>'"));
        assert!(err(Entity::Runs, "start_time LIKE 5").starts_with("Invalid comparator 'LIKE'"));
        assert!(
            err(Entity::Runs, "status NOT LIKE 'a'").starts_with("Invalid comparator 'NOT LIKE'")
        );
        assert_eq!(
            err(Entity::Runs, "start_time IS NULL"),
            "IS NULL / IS NOT NULL is only supported for tags and params, not for 'attribute' \
             'start_time'"
        );
        assert!(err(Entity::Runs, "metrics.a IS NOT NULL").contains("not for 'metric' 'a'"));
        let m = err(Entity::Runs, "metrics.a > 1 OR metrics.b > 2");
        assert!(
            m.starts_with("Invalid clause(s) in filter string: '"),
            "{m}"
        );
        assert!(
            err(Entity::Runs, "(metrics.a > 1 AND metrics.b > 2)").starts_with("Invalid clause(s)")
        );
        assert!(err(Entity::Runs, "NOT metrics.a > 1").starts_with("Invalid clause(s)"));
        assert!(err(Entity::Runs, "metrics.a > 1 metrics.b").starts_with("Invalid clause(s)"));
        assert_eq!(
            err(Entity::Runs, "metrics.a > 1; metrics.b > 2"),
            "Search filter contained multiple expression 'metrics.a > 1; metrics.b > 2'. Provide \
             AND-ed expression list."
        );
        assert!(err(Entity::Runs, "metrics.a >").starts_with("Error on parsing filter"));
        assert!(err(Entity::Runs, "params.p = 'unterminated").starts_with("Error on parsing"));
    }

    // ---- experiments

    #[test]
    fn experiments_filters() {
        let sql = ok(
            Entity::Experiments,
            "name = 'x' AND tags.k != 'v' AND creation_time > 5 AND experiment_id IN ('1', '2')",
        );
        assert_eq!(
            sql.text,
            "e.name = $1 AND EXISTS (SELECT 1 FROM experiment_tags tg WHERE tg.experiment_id = \
             e.experiment_id AND tg.key = $2 AND tg.value <> $3) AND e.creation_time > $4 AND \
             e.experiment_id IN ($5, $6)"
        );
        assert_eq!(
            sql.binds,
            vec![
                text("x"),
                text("k"),
                text("v"),
                Bind::Int(5),
                Bind::Int(1),
                Bind::Int(2)
            ]
        );
        let sql = ok(
            Entity::Experiments,
            "attribute.name ILIKE '%a%' AND last_update_time <= 9 AND experiment_id = '3'",
        );
        assert_eq!(
            sql.text,
            "LOWER(e.name) LIKE LOWER($1) AND e.last_update_time <= $2 AND e.experiment_id = $3"
        );
        assert_eq!(sql.binds[2], Bind::Int(3));
        let sql = ok(
            Entity::Experiments,
            "tags.`a b` IS NULL AND tag.c IS NOT NULL",
        );
        assert_eq!(
            sql.text,
            "NOT EXISTS (SELECT 1 FROM experiment_tags tg WHERE tg.experiment_id = \
             e.experiment_id AND tg.key = $1) AND EXISTS (SELECT 1 FROM experiment_tags tg WHERE \
             tg.experiment_id = e.experiment_id AND tg.key = $2)"
        );
    }

    #[test]
    fn experiments_rejections() {
        assert_eq!(
            err(Entity::Experiments, "attributes.name = 'x'"),
            "Invalid entity type 'attributes'. Valid entity types are ('attribute', 'tag', \
             'tags')"
        );
        assert_eq!(
            err(Entity::Experiments, "params.x = 'x'"),
            "Invalid entity type 'params'. Valid entity types are ('attribute', 'tag', 'tags')"
        );
        assert_eq!(
            err(Entity::Experiments, "artifact_location = 'x'"),
            "Invalid attribute key 'artifact_location' specified. Valid keys are '{'name', \
             'experiment_id', 'creation_time', 'last_update_time'}'"
        );
        assert_eq!(
            err(Entity::Experiments, "experiment_id = 'abc'"),
            "Invalid experiment ID 'abc'. Experiment ID must be a valid integer."
        );
        assert_eq!(
            err(Entity::Experiments, "experiment_id LIKE '1'"),
            "Invalid comparator for experiment_id: LIKE"
        );
        assert_eq!(
            err(Entity::Experiments, "experiment_id = 1"),
            "Expected a quoted string value for attributes. Got value 1"
        );
        assert_eq!(
            err(Entity::Experiments, "name IN ('a')"),
            "Only ['experiment_id'] attributes support comparison with a list of quoted string \
             values."
        );
        assert_eq!(
            err(Entity::Experiments, "creation_time > 1.5"),
            "Invalid value for numeric attribute 'creation_time': '1.5'"
        );
        assert!(err(Entity::Experiments, "name > 'a'").starts_with("Invalid comparator '>'"));
        assert!(err(Entity::Experiments, "creation_time LIKE 1").starts_with("Invalid comparator"));
        assert_eq!(
            err(Entity::Experiments, "tags.k > 'a'"),
            "Invalid comparator for tag: >"
        );
        assert_eq!(
            err(Entity::Experiments, "name IS NULL"),
            "IS NULL / IS NOT NULL is only supported for tags, not for attribute 'name'"
        );
        assert!(err(Entity::Experiments, "name = 'a' OR name = 'b'").starts_with("Invalid clause"));
    }

    // ---- registered models

    #[test]
    fn registered_model_filters() {
        assert_eq!(ok(Entity::RegisteredModels, "").text, PROMPT_M);
        let sql = ok(
            Entity::RegisteredModels,
            "name LIKE 'a%' AND tags.t = 'x' AND attribute.name IN ('a', 'b')",
        );
        assert_eq!(
            sql.text,
            format!(
                "m.name LIKE $1 AND EXISTS (SELECT 1 FROM registered_model_tags tg WHERE \
                 tg.name = m.name AND tg.key = $2 AND tg.value = $3) AND m.name IN ($4, $5) AND \
                 {PROMPT_M}"
            )
        );
        assert_eq!(
            ok(Entity::RegisteredModels, "name != 'a' and name ilike 'B%'").text,
            format!("m.name <> $1 AND LOWER(m.name) LIKE LOWER($2) AND {PROMPT_M}")
        );
    }

    #[test]
    fn registered_model_prompts() {
        // Asking for prompts: the tag filter applies and prompts are not excluded.
        for f in [
            "tags.`mlflow.prompt.is_prompt` = 'true'",
            "tags.`mlflow.prompt.is_prompt` = 'TRUE'",
            "tag.mlflow.prompt.is_prompt != 'false'",
        ] {
            let sql = ok(Entity::RegisteredModels, f);
            assert!(
                sql.text
                    .starts_with("EXISTS (SELECT 1 FROM registered_model_tags"),
                "{f}"
            );
            assert!(!sql.text.contains("NOT EXISTS"), "{f}");
            assert_eq!(sql.binds[0], text(IS_PROMPT_TAG_KEY));
        }
        // Otherwise filters on the prompt tag are dropped and prompts excluded.
        for f in [
            "tags.`mlflow.prompt.is_prompt` = 'false'",
            "tags.`mlflow.prompt.is_prompt` != 'true'",
        ] {
            let sql = ok(Entity::RegisteredModels, f);
            assert_eq!(sql.text, PROMPT_M, "{f}");
            assert!(sql.binds.is_empty());
        }
        let sql = ok(
            Entity::RegisteredModels,
            "tags.`mlflow.prompt.is_prompt` LIKE 't%'",
        );
        assert_eq!(sql.text, PROMPT_M);
    }

    #[test]
    fn registered_model_rejections() {
        assert_eq!(
            err(Entity::RegisteredModels, "version_number = 1"),
            "Invalid attribute key 'version_number' specified. Valid keys are '{'name'}'"
        );
        assert_eq!(
            err(Entity::RegisteredModels, "`name` = 'x'"),
            "Invalid attribute key '`name`' specified. Valid keys are '{'name'}'"
        );
        assert_eq!(
            err(Entity::RegisteredModels, "metrics.x = 'x'"),
            "Invalid entity type 'metrics'. Valid entity types are ('attribute', 'tag', 'tags')"
        );
        assert_eq!(
            err(Entity::RegisteredModels, "name > 'a'"),
            "Invalid comparator for attribute: >"
        );
        assert_eq!(
            err(Entity::RegisteredModels, "tags.t IN ('a')"),
            "Expected a quoted string value for tag (e.g. 'my-value'). Got value ('a')"
        );
        assert_eq!(
            err(Entity::RegisteredModels, "tags.t != 5"),
            "Expected a quoted string value for tag (e.g. 'my-value'). Got value 5"
        );
        assert_eq!(
            err(Entity::RegisteredModels, "tags.t <= 'a'"),
            "Invalid comparator for tag: <="
        );
        assert_eq!(
            err(Entity::RegisteredModels, "name = 1"),
            "Expected a quoted string value or a list of quoted string values for attributes. \
             Got value 1"
        );
        assert_eq!(
            err(Entity::RegisteredModels, "tags.t IS NULL"),
            "Invalid comparison clause. Expected 3 tokens found 2"
        );
    }

    // ---- model versions

    #[test]
    fn model_version_filters() {
        assert_eq!(ok(Entity::ModelVersions, "").text, PROMPT_V);
        let sql = ok(
            Entity::ModelVersions,
            "name = 'm' AND version_number > 2 AND run_id IN ('r1') AND source_path LIKE 's3://%' \
             AND tags.k = 'v' AND attribute.version_number = '3'",
        );
        assert_eq!(
            sql.text,
            format!(
                "v.name = $1 AND v.version > $2 AND v.run_id IN ($3) AND v.source LIKE $4 AND \
                 EXISTS (SELECT 1 FROM model_version_tags tg WHERE tg.name = v.name AND \
                 tg.version = v.version AND tg.key = $5 AND tg.value = $6) AND v.version = $7 \
                 AND {PROMPT_V}"
            )
        );
        assert_eq!(
            sql.binds,
            vec![
                text("m"),
                Bind::Int(2),
                text("r1"),
                text("s3://%"),
                text("k"),
                text("v"),
                Bind::Int(3)
            ]
        );
        let sql = ok(
            Entity::ModelVersions,
            "name NOT IN ('a', 'b') AND run_id != 'x'",
        );
        assert_eq!(
            sql.text,
            format!("v.name NOT IN ($1, $2) AND v.run_id <> $3 AND {PROMPT_V}")
        );
        let sql = ok(
            Entity::ModelVersions,
            "tags.`mlflow.prompt.is_prompt` = 'true' AND name = 'p'",
        );
        assert!(!sql.text.contains("NOT EXISTS"));
    }

    #[test]
    fn model_version_rejections() {
        assert_eq!(
            err(Entity::ModelVersions, "version_number = 1.5"),
            "Invalid value for numeric attribute 'version_number': 1.5"
        );
        assert_eq!(
            err(Entity::ModelVersions, "version_number = 'x'"),
            "Invalid value for numeric attribute 'version_number': 'x'"
        );
        assert_eq!(
            err(Entity::ModelVersions, "run_id = 5"),
            "Only the '{'version_number', 'creation_timestamp', 'last_updated_timestamp'}' \
             attributes support comparison with numeric values."
        );
        assert_eq!(
            err(Entity::ModelVersions, "source_path IN ('a')"),
            "Only ['name', 'run_id'] attributes support comparison with a list of quoted string \
             values."
        );
        assert_eq!(
            err(Entity::ModelVersions, "version_number LIKE '1'"),
            "Invalid comparator for attribute version_number: LIKE"
        );
        assert_eq!(
            err(Entity::ModelVersions, "source_path > 'a'"),
            "Invalid comparator for attribute: >"
        );
        assert_eq!(
            err(Entity::ModelVersions, "creation_timestamp > 1"),
            "Invalid attribute key 'creation_timestamp' specified. Valid keys are '{'name', \
             'version_number', 'run_id', 'source_path'}'"
        );
        assert_eq!(
            err(Entity::ModelVersions, "tags.k ILIKE 5"),
            "Expected a quoted string value for tag (e.g. 'my-value'). Got value 5"
        );
    }

    // ---- logged models

    #[test]
    fn logged_model_filters() {
        let sql = ok(
            Entity::LoggedModels,
            "metrics.acc >= 0.9 AND params.lr = '0.1' AND tags.t IN ('a', 'b') AND name LIKE 'x%' \
             AND creation_time > 5 AND attributes.model_type = \"sklearn\"",
        );
        assert_eq!(
            sql.text,
            "EXISTS (SELECT 1 FROM metrics mx WHERE mx.model_id = l.model_id AND mx.key = $1 AND \
             mx.value >= $2) AND EXISTS (SELECT 1 FROM logged_model_params pm WHERE pm.model_id \
             = l.model_id AND pm.key = $3 AND pm.value = $4) AND EXISTS (SELECT 1 FROM \
             logged_model_tags tg WHERE tg.model_id = l.model_id AND tg.key = $5 AND tg.value IN \
             ($6, $7)) AND l.name LIKE $8 AND l.creation_timestamp_ms > $9 AND l.model_type = $10"
        );
        assert_eq!(
            sql.binds,
            vec![
                text("acc"),
                Bind::Float(0.9),
                text("lr"),
                text("0.1"),
                text("t"),
                text("a"),
                text("b"),
                text("x%"),
                Bind::Float(5.0),
                text("sklearn"),
            ]
        );
        let sql = ok(Entity::LoggedModels, "tags.`a b` != 'x' AND status = READY");
        assert_eq!(sql.binds, vec![text("a b"), text("x"), text("READY")]);
        assert_eq!(ok(Entity::LoggedModels, "").text, "TRUE");
    }

    #[test]
    fn logged_model_rejections() {
        assert_eq!(
            err(Entity::LoggedModels, "tag.x = 'a'"),
            "Invalid entity type: 'tag'. Expected one of ['attributes', 'metrics', 'params', \
             'tags']."
        );
        assert_eq!(
            err(Entity::LoggedModels, "metrics.acc LIKE 'a'"),
            "Invalid comparison operator for metrics.acc: 'LIKE'. Expected one of ('<', '<=', \
             '>', '>=', '=', '!=')."
        );
        assert_eq!(
            err(Entity::LoggedModels, "name > 'a'"),
            "Invalid comparison operator for attributes.name: '>'. Expected one of ('=', '!=', \
             'LIKE', 'ILIKE', 'IN', 'NOT IN')."
        );
        assert_eq!(
            err(Entity::LoggedModels, "metrics.acc > 'a'"),
            "Expected numeric value type for metrics.acc. Found 'a'"
        );
        assert_eq!(
            err(Entity::LoggedModels, "tags.t IS NULL"),
            "Invalid comparison: tags.t IS NULL. Expected a comparison with 3 tokens."
        );
        assert!(
            err(Entity::LoggedModels, "foo = 'x'")
                .starts_with("Invalid logged model search key 'foo'")
        );
        assert!(
            err(Entity::LoggedModels, "name = 'a' OR name = 'b'").starts_with(
                "Invalid filter string: 'name = 'a' OR name = 'b''. Expected a list of comparisons"
            )
        );
    }

    // ---- order_by

    #[test]
    fn runs_order_by_clauses() {
        assert_eq!(
            order(Entity::Runs, &[]),
            "r.start_time DESC, r.run_uuid ASC"
        );
        let sql = order_sql(
            Entity::Runs,
            &[
                "metrics.acc DESC",
                "params.p",
                "tags.`t k` asc",
                "attributes.start_time ASC",
            ],
        );
        assert_eq!(
            sql.text,
            "(SELECT lm.value FROM latest_metrics lm WHERE lm.run_uuid = r.run_uuid AND lm.key = \
             $1) DESC NULLS LAST, (SELECT pm.value FROM params pm WHERE pm.run_uuid = \
             r.run_uuid AND pm.key = $2) ASC NULLS LAST, (SELECT tg.value FROM run_tags tg \
             WHERE tg.run_uuid = r.run_uuid AND tg.key = $3) ASC NULLS LAST, r.start_time \
             ASC, r.run_uuid ASC"
        );
        assert_eq!(sql.binds, [text("acc"), text("p"), text("t k")]);
        let after_filter = order_by_from(Entity::Runs, &["params.p"], 4).unwrap();
        assert!(after_filter.text.contains("pm.key = $4"));
        assert_eq!(after_filter.binds, [text("p")]);
        assert_eq!(
            order(Entity::Runs, &["end_time", "run_id DESC"]),
            "r.end_time ASC NULLS LAST, r.run_uuid DESC, r.start_time DESC, r.run_uuid ASC"
        );
        assert_eq!(
            order(Entity::Runs, &["Created"]),
            "r.start_time ASC, r.run_uuid ASC"
        );
        // Keys are bound whatever they hold: quotes and backslashes never reach the SQL text.
        let sql = order_sql(Entity::Runs, &["tags.`it's \\'`"]);
        assert_eq!(
            sql.text,
            "(SELECT tg.value FROM run_tags tg WHERE tg.run_uuid = r.run_uuid AND tg.key = \
             $1) ASC NULLS LAST, r.start_time DESC, r.run_uuid ASC"
        );
        assert_eq!(sql.binds, [text("it's \\'")]);
        assert_eq!(
            order_sql(Entity::Runs, &["metrics.`a.b` DESC"]).binds,
            [text("a.b")]
        );
        assert_eq!(
            order_sql(Entity::Runs, &["metric.\"f1 score\""]).binds,
            [text("f1 score")]
        );
    }

    #[test]
    fn runs_order_by_rejections() {
        assert_eq!(
            order_err(Entity::Runs, &["created", "start_time DESC"]),
            "`order_by` contains duplicate fields: ['created', 'start_time DESC']"
        );
        assert_eq!(
            order_err(Entity::Runs, &["metrics.acc DESC foo"]),
            "Invalid order_by clause 'metrics.acc DESC foo'. Could not be parsed."
        );
        assert_eq!(
            order_err(Entity::Runs, &["metrics.acc up"]),
            "Invalid ordering key in order_by clause 'metrics.acc up'."
        );
        assert_eq!(
            order_err(Entity::Runs, &[""]),
            "Invalid order_by clause ''. Could not be parsed."
        );
        assert!(
            order_err(Entity::Runs, &["run name"])
                .starts_with("Invalid ordering key in order_by clause")
        );
        assert!(
            order_err(Entity::Runs, &["attributes.`Run name`"])
                .starts_with("Invalid attribute key 'Run name' specified.")
        );
        assert!(order_err(Entity::Runs, &["foo.bar"]).starts_with("Invalid entity type 'foo'"));
        assert_eq!(
            order_err(Entity::Runs, &["datasets.name"]),
            "Invalid identifier type 'dataset'"
        );
    }

    #[test]
    fn experiments_order_by_clauses() {
        assert_eq!(
            order(Entity::Experiments, &[]),
            "e.creation_time DESC, e.experiment_id ASC"
        );
        assert_eq!(
            order(
                Entity::Experiments,
                &["name", "attribute.last_update_time DESC"]
            ),
            "e.name ASC, e.last_update_time DESC, e.experiment_id DESC"
        );
        assert_eq!(
            order(Entity::Experiments, &["experiment_id"]),
            "e.experiment_id ASC"
        );
        assert_eq!(
            order_err(Entity::Experiments, &["tags.x"]),
            "Invalid order_by entity: tag"
        );
        assert!(
            order_err(Entity::Experiments, &["attributes.name"])
                .starts_with("Invalid entity type 'attributes'")
        );
        assert!(
            order_err(Entity::Experiments, &["lifecycle_stage"])
                .starts_with("Invalid attribute key 'lifecycle_stage'")
        );
    }

    #[test]
    fn registry_order_by_clauses() {
        assert_eq!(order(Entity::RegisteredModels, &[]), "m.name ASC");
        assert_eq!(
            order(Entity::RegisteredModels, &["timestamp DESC"]),
            "m.last_updated_timestamp DESC, m.name ASC"
        );
        assert_eq!(
            order(
                Entity::RegisteredModels,
                &["name DESC", "last_updated_timestamp"]
            ),
            "m.name DESC, m.last_updated_timestamp ASC"
        );
        assert_eq!(
            order_err(
                Entity::RegisteredModels,
                &["timestamp", "last_updated_timestamp"]
            ),
            "`order_by` contains duplicate fields: ['timestamp', 'last_updated_timestamp']"
        );
        assert_eq!(
            order_err(Entity::RegisteredModels, &["creation_timestamp"]),
            "Invalid order by key 'creation_timestamp' specified. Valid keys are '{'name', \
             'timestamp'}'"
        );
        assert_eq!(
            order(Entity::ModelVersions, &[]),
            "v.last_updated_timestamp DESC, v.name ASC, v.version DESC"
        );
        assert_eq!(
            order(Entity::ModelVersions, &["version_number ASC"]),
            "v.version ASC, v.name ASC"
        );
        assert_eq!(
            order(Entity::ModelVersions, &["creation_timestamp DESC", "name"]),
            "v.creation_timestamp DESC, v.name ASC, v.version DESC"
        );
        assert_eq!(
            order_err(Entity::ModelVersions, &["tags.x"]),
            "Invalid order by key 'x' specified. Valid keys are {'name', 'version_number', \
             'creation_timestamp', 'last_updated_timestamp'}"
        );
        assert!(
            order_err(Entity::ModelVersions, &["run_id"])
                .starts_with("Invalid attribute key 'run_id' specified.")
        );
        assert!(
            order_err(Entity::ModelVersions, &["name", "name DESC"])
                .starts_with("`order_by` contains duplicate fields")
        );
    }

    #[test]
    fn logged_models_order_by_clauses() {
        assert_eq!(
            order(Entity::LoggedModels, &[]),
            "l.creation_timestamp_ms DESC, l.model_id ASC"
        );
        assert_eq!(
            order(Entity::LoggedModels, &["creation_time ASC", "name DESC"]),
            "l.creation_timestamp_ms ASC, l.name DESC, l.model_id ASC"
        );
        let metric = Sql {
            text: "(SELECT mx.value FROM metrics mx WHERE mx.model_id = l.model_id AND mx.key = \
                   $1 ORDER BY mx.timestamp DESC, mx.step DESC, mx.run_uuid ASC LIMIT 1) DESC \
                   NULLS LAST, l.creation_timestamp_ms DESC, l.model_id ASC"
                .to_owned(),
            binds: vec![text("f1 score")],
        };
        assert_eq!(
            order_sql(Entity::LoggedModels, &["metrics.`f1 score` DESC"]),
            metric
        );
        let fields = [FieldOrder {
            field_name: "metrics.f1 score".into(),
            ascending: false,
        }];
        assert_eq!(order_by_logged_models(&fields, 1).unwrap(), metric);
        assert_eq!(
            order_err(Entity::LoggedModels, &["params.x"]),
            "Invalid order by field name: params.x. Only metrics are supported."
        );
        assert_eq!(
            order_err(Entity::LoggedModels, &["foo"]),
            "Invalid order by field name: foo"
        );
    }

    // ---- bounds on hostile filters

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

    // ---- page tokens

    #[test]
    fn page_tokens() {
        // What MLflow's `base64.b64encode(json.dumps({"offset": 5}))` gives.
        assert_eq!(encode_page_token(5), "eyJvZmZzZXQiOiA1fQ==");
        assert_eq!(decode_page_token("eyJvZmZzZXQiOiA1fQ==").unwrap(), 5);
        for n in [1, 100, 123_456_789] {
            assert_eq!(decode_page_token(&encode_page_token(n)).unwrap(), n);
        }
        assert_eq!(decode_page_token("").unwrap(), 0);
        assert_eq!(
            decode_page_token(&BASE64.encode("{\"offset\": \"7\"}")).unwrap(),
            7
        );
        let invalid_token = |t: &str| match decode_page_token(t) {
            Err(SearchError::Invalid(m)) => m,
            Ok(v) => panic!("{t}: expected an error, got {v}"),
        };
        assert_eq!(
            invalid_token("!!!"),
            "Invalid page token, could not base64-decode"
        );
        assert_eq!(
            invalid_token(&BASE64.encode("nope")),
            "Invalid page token, decoded value=nope"
        );
        assert!(
            invalid_token(&BASE64.encode("{\"offset\": 0}"))
                .starts_with("Invalid page token, parsed value=")
        );
        assert!(
            invalid_token(&BASE64.encode("{}")).starts_with("Invalid page token, parsed value=")
        );
        assert!(
            invalid_token(&BASE64.encode("{\"offset\": -3}"))
                .starts_with("Invalid page token, not stringable")
        );
        assert!(
            invalid_token(&BASE64.encode("{\"offset\": \"x\"}"))
                .starts_with("Invalid page token, not stringable")
        );
    }

    // ---- executable check on SQLite

    /// Runs generated SELECTs on a real database: in-memory SQLite always, and PostgreSQL too
    /// when `NEXUS_TEST_POSTGRES_URL` names one (the test works in a schema it then drops).
    mod database {
        use super::super::*;
        use sqlx::any::{AnyPoolOptions, install_default_drivers};
        use sqlx::{AnyPool, AssertSqlSafe};

        async fn sqlite() -> AnyPool {
            install_default_drivers();
            // One connection: each connection to `sqlite::memory:` is its own database.
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect("sqlite::memory:")
                .await
                .unwrap();
            sqlx::raw_sql("PRAGMA case_sensitive_like = ON")
                .execute(&pool)
                .await
                .unwrap();
            seed(&pool).await;
            pool
        }

        /// A pool on PostgreSQL whose single connection works in a fresh `schema`.
        async fn postgres(schema: &str) -> Option<AnyPool> {
            let url = std::env::var("NEXUS_TEST_POSTGRES_URL").ok()?;
            install_default_drivers();
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap();
            let setup = format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
                 SET search_path TO {schema}"
            );
            sqlx::raw_sql(AssertSqlSafe(setup))
                .execute(&pool)
                .await
                .unwrap();
            seed(&pool).await;
            Some(pool)
        }

        async fn drop_schema(pool: &AnyPool, schema: &str) {
            let sql = format!("DROP SCHEMA {schema} CASCADE");
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(pool)
                .await
                .unwrap();
        }

        async fn seed(pool: &AnyPool) {
            sqlx::raw_sql(include_str!("../migrations/0001_registry.sql"))
                .execute(pool)
                .await
                .unwrap();
            sqlx::raw_sql(SEED).execute(pool).await.unwrap();
        }

        const SEED: &str = "
            INSERT INTO experiments VALUES (1, 'alpha', 'a', 'active', 10, 50);
            INSERT INTO experiments VALUES (2, 'Beta', 'b', 'active', 20, 40);
            INSERT INTO experiment_tags VALUES (2, 'team', 'ml');
            INSERT INTO runs VALUES ('r1', 1, 'first', 'alice', 'FINISHED', 100, 150, 'x', 'active');
            INSERT INTO runs VALUES ('r2', 1, 'second', 'bob', 'FINISHED', 200, NULL, 'x', 'active');
            INSERT INTO runs VALUES ('r3', 1, 'Third', 'bob', 'RUNNING', 300, NULL, 'x', 'active');
            INSERT INTO runs VALUES ('r4', 2, 'other', 'bob', 'RUNNING', 300, NULL, 'x', 'active');
            INSERT INTO latest_metrics (run_uuid, key, value, timestamp, step, is_nan) VALUES ('r1', 'acc', 0.9, 1, 1, 0);
            INSERT INTO latest_metrics (run_uuid, key, value, timestamp, step, is_nan) VALUES ('r2', 'acc', 0.5, 1, 1, 0);
            INSERT INTO latest_metrics (run_uuid, key, value, timestamp, step, is_nan) VALUES ('r4', 'acc', 0.7, 1, 1, 0);
            INSERT INTO params VALUES ('r1', 'lr', '0.1');
            INSERT INTO params VALUES ('r2', 'lr', '0.01');
            INSERT INTO run_tags VALUES ('r1', 'owner', 'Alice');
            INSERT INTO run_tags VALUES ('r2', 'owner', 'alice');
            INSERT INTO run_tags VALUES ('r3', 'my key', 'v');
            INSERT INTO registered_models VALUES ('m1', 1, 30, '');
            INSERT INTO registered_models VALUES ('m2', 2, 20, '');
            INSERT INTO registered_models VALUES ('p1', 3, 10, '');
            INSERT INTO registered_model_tags VALUES ('m2', 'stage', 'prod');
            INSERT INTO registered_model_tags VALUES ('p1', 'mlflow.prompt.is_prompt', 'true');
            INSERT INTO model_versions VALUES ('m1', 1, 1, 5, '', 'u', 'None', 's3://a/1', '', 'r1', '', '', 'READY', '');
            INSERT INTO model_versions VALUES ('m1', 2, 2, 6, '', 'u', 'None', 's3://a/2', '', 'r2', '', '', 'READY', '');
            INSERT INTO model_versions VALUES ('m2', 1, 3, 6, '', 'u', 'None', 'gs://b/1', '', 'r1', '', '', 'READY', '');
            INSERT INTO model_versions VALUES ('p1', 1, 4, 9, '', 'u', 'None', 'x', '', '', '', '', 'READY', '');
            INSERT INTO model_version_tags VALUES ('m1', 2, 'k', 'v');
            INSERT INTO model_version_tags VALUES ('p1', 1, 'mlflow.prompt.is_prompt', 'true');
            INSERT INTO logged_models VALUES ('lm1', 1, 'net', 'a', 100, 100, 'READY', 'active', 'torch', 'r1', '');
            INSERT INTO logged_models VALUES ('lm2', 1, 'tree', 'a', 200, 200, 'READY', 'active', 'sklearn', 'r2', '');
            INSERT INTO logged_models VALUES ('lm3', 1, 'Net2', 'a', 300, 300, 'PENDING', 'active', 'torch', 'r2', '');
            INSERT INTO logged_model_params VALUES ('lm1', 'depth', '3');
            INSERT INTO logged_model_tags VALUES ('lm2', 'env', 'prod');
            INSERT INTO metrics (run_uuid, key, value, timestamp, step, model_id, is_nan) VALUES ('r1', 'acc', 0.8, 1, 0, 'lm1', 0);
            INSERT INTO metrics (run_uuid, key, value, timestamp, step, model_id, is_nan) VALUES ('r1', 'acc', 0.6, 2, 1, 'lm1', 0);
            INSERT INTO metrics (run_uuid, key, value, timestamp, step, model_id, is_nan) VALUES ('r2', 'acc', 0.7, 1, 0, 'lm2', 0);
        ";

        /// Runs `SELECT <id> FROM <from> WHERE <prefix> AND <filter> ORDER BY <order>`.
        async fn ids(
            pool: &AnyPool,
            entity: Entity,
            select: &str,
            prefix: (&str, Vec<Bind>),
            filter_string: &str,
            order: &[&str],
        ) -> Vec<String> {
            let (prefix, mut binds) = prefix;
            let f = filter(entity, filter_string, binds.len() + 1).unwrap();
            binds.extend(f.binds);
            let o = order_by_from(entity, order, binds.len() + 1).unwrap();
            binds.extend(o.binds);
            let sql = format!("{select} WHERE {prefix} AND {} ORDER BY {}", f.text, o.text);
            let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.clone()));
            for b in binds {
                query = match b {
                    Bind::Text(s) => query.bind(s),
                    Bind::Int(i) => query.bind(i),
                    Bind::Float(x) => query.bind(x),
                };
            }
            query
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }

        async fn runs(pool: &AnyPool, f: &str, order: &[&str]) -> Vec<String> {
            // Two binds ahead of the filter's, as the store's experiment restriction has.
            let prefix = (
                "r.experiment_id IN ($1, $2)",
                vec![Bind::Int(1), Bind::Int(99)],
            );
            ids(
                pool,
                Entity::Runs,
                "SELECT r.run_uuid FROM runs r",
                prefix,
                f,
                order,
            )
            .await
        }

        #[tokio::test]
        async fn runs_on_sqlite() {
            check_runs(&sqlite().await).await;
        }

        #[tokio::test]
        async fn others_on_sqlite() {
            check_others(&sqlite().await).await;
        }

        #[tokio::test]
        async fn on_postgres_when_configured() {
            let schema = format!("nexus_search_test_{}", std::process::id());
            let Some(pool) = postgres(&schema).await else {
                return;
            };
            check_runs(&pool).await;
            check_others(&pool).await;
            drop_schema(&pool, &schema).await;
        }

        async fn check_runs(pool: &AnyPool) {
            let pool = pool.clone();
            assert_eq!(runs(&pool, "", &[]).await, ["r3", "r2", "r1"]);
            assert_eq!(runs(&pool, "metrics.acc > 0.6", &[]).await, ["r1"]);
            assert_eq!(runs(&pool, "metrics.acc != 0.9", &[]).await, ["r2"]);
            assert_eq!(
                runs(&pool, "", &["metrics.acc DESC"]).await,
                ["r1", "r2", "r3"]
            );
            assert_eq!(
                runs(&pool, "", &["metrics.acc ASC"]).await,
                ["r2", "r1", "r3"]
            );
            assert_eq!(
                runs(&pool, "", &["params.lr DESC", "start_time"]).await,
                ["r1", "r2", "r3"]
            );
            assert_eq!(runs(&pool, "params.lr = '0.01'", &[]).await, ["r2"]);
            assert_eq!(runs(&pool, "params.lr IS NULL", &[]).await, ["r3"]);
            assert_eq!(
                runs(&pool, "tags.owner != 'Alice'", &[]).await,
                ["r2"],
                "!= needs the tag"
            );
            assert_eq!(runs(&pool, "tags.owner LIKE 'a%'", &[]).await, ["r2"]);
            assert_eq!(
                runs(&pool, "tags.owner ILIKE 'a%'", &[]).await,
                ["r2", "r1"]
            );
            assert_eq!(runs(&pool, "tags.`my key` = \"v\"", &[]).await, ["r3"]);
            assert_eq!(
                runs(&pool, "tags.owner IS NOT NULL", &[]).await,
                ["r2", "r1"]
            );
            assert_eq!(
                runs(&pool, "run_id IN ('r1', 'r3', 'r4')", &[]).await,
                ["r3", "r1"]
            );
            assert_eq!(runs(&pool, "run_id NOT IN ('r1')", &[]).await, ["r3", "r2"]);
            assert_eq!(
                runs(&pool, "status = 'FINISHED' AND start_time >= 150", &[]).await,
                ["r2"]
            );
            assert_eq!(
                runs(&pool, "attributes.run_name LIKE 't%'", &[]).await,
                Vec::<String>::new()
            );
            assert_eq!(
                runs(&pool, "attributes.run_name ILIKE 't%'", &[]).await,
                ["r3"]
            );
            assert_eq!(runs(&pool, "end_time < 1000", &[]).await, ["r1"]);
            assert_eq!(
                runs(&pool, "", &["end_time DESC", "run_id DESC"]).await,
                ["r1", "r3", "r2"],
                "no end time last"
            );
            assert_eq!(
                runs(&pool, "user_id = 'bob'", &["tags.`my key`"]).await,
                ["r3", "r2"]
            );
        }

        async fn check_others(pool: &AnyPool) {
            let pool = pool.clone();
            let exps = |f: &'static str, o: &'static [&'static str]| {
                let pool = pool.clone();
                async move {
                    ids(
                        &pool,
                        Entity::Experiments,
                        "SELECT e.name FROM experiments e",
                        ("TRUE", vec![]),
                        f,
                        o,
                    )
                    .await
                }
            };
            assert_eq!(exps("", &[]).await, ["Beta", "alpha", "Default"]);
            assert_eq!(
                exps("name ILIKE '%A%'", &["experiment_id"]).await,
                ["Default", "alpha", "Beta"]
            );
            assert_eq!(exps("name LIKE '%A%'", &[]).await, Vec::<String>::new());
            assert_eq!(exps("tags.team = 'ml'", &[]).await, ["Beta"]);
            assert_eq!(
                exps("tags.team IS NULL", &["experiment_id"]).await,
                ["Default", "alpha"]
            );
            assert_eq!(
                exps("experiment_id IN ('0', '2')", &[]).await,
                ["Beta", "Default"]
            );
            assert_eq!(
                exps("creation_time >= 10", &["last_update_time DESC"]).await,
                ["alpha", "Beta"]
            );

            let models = |f: &'static str, o: &'static [&'static str]| {
                let pool = pool.clone();
                async move {
                    ids(
                        &pool,
                        Entity::RegisteredModels,
                        "SELECT m.name FROM registered_models m",
                        ("TRUE", vec![]),
                        f,
                        o,
                    )
                    .await
                }
            };
            assert_eq!(models("", &[]).await, ["m1", "m2"]);
            assert_eq!(models("", &["timestamp"]).await, ["m2", "m1"]);
            assert_eq!(models("tags.stage = 'prod'", &[]).await, ["m2"]);
            assert_eq!(models("name IN ('m1', 'p1')", &[]).await, ["m1"]);
            assert_eq!(
                models("tags.`mlflow.prompt.is_prompt` = 'true'", &[]).await,
                ["p1"]
            );
            assert_eq!(
                models("tags.`mlflow.prompt.is_prompt` != 'true'", &["name DESC"]).await,
                ["m2", "m1"]
            );

            let versions = |f: &'static str, o: &'static [&'static str]| {
                let pool = pool.clone();
                async move {
                    ids(
                        &pool,
                        Entity::ModelVersions,
                        "SELECT v.name || '/' || v.version FROM model_versions v",
                        ("TRUE", vec![]),
                        f,
                        o,
                    )
                    .await
                }
            };
            assert_eq!(versions("", &[]).await, ["m1/2", "m2/1", "m1/1"]);
            assert_eq!(versions("version_number >= 2", &[]).await, ["m1/2"]);
            assert_eq!(
                versions("run_id = 'r1'", &["version_number"]).await,
                ["m1/1", "m2/1"]
            );
            assert_eq!(
                versions("source_path LIKE 's3://%'", &["name"]).await,
                ["m1/2", "m1/1"]
            );
            assert_eq!(versions("tags.k = 'v'", &[]).await, ["m1/2"]);
            assert_eq!(
                versions("name = 'm1'", &["creation_timestamp"]).await,
                ["m1/1", "m1/2"]
            );

            let logged = |f: &'static str, o: &'static [&'static str]| {
                let pool = pool.clone();
                async move {
                    ids(
                        &pool,
                        Entity::LoggedModels,
                        "SELECT l.model_id FROM logged_models l",
                        ("l.experiment_id = $1", vec![Bind::Int(1)]),
                        f,
                        o,
                    )
                    .await
                }
            };
            assert_eq!(logged("", &[]).await, ["lm3", "lm2", "lm1"]);
            assert_eq!(logged("metrics.acc > 0.75", &[]).await, ["lm1"]);
            assert_eq!(logged("metrics.acc >= 0.6", &[]).await, ["lm2", "lm1"]);
            // lm1's latest acc is 0.6 (timestamp 2), lm2's 0.7, lm3 has none.
            assert_eq!(
                logged("", &["metrics.acc DESC"]).await,
                ["lm2", "lm1", "lm3"]
            );
            assert_eq!(logged("", &["metrics.acc"]).await, ["lm1", "lm2", "lm3"]);
            assert_eq!(logged("params.depth = '3'", &[]).await, ["lm1"]);
            assert_eq!(logged("tags.env IN ('prod')", &[]).await, ["lm2"]);
            assert_eq!(
                logged("name ILIKE 'net%'", &["creation_time"]).await,
                ["lm1", "lm3"]
            );
            assert_eq!(
                logged("model_type = 'torch' AND creation_timestamp < 250", &[]).await,
                ["lm1"]
            );
        }
    }
}
