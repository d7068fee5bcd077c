//! What the entities' translations share: the checks that turn a comparison's parsed value
//! into bound values (MLflow's `_get_value` family) and its operator into an allowed one, the
//! builder of SQL fragments with numbered placeholders, the shape of the key/value side tables
//! (tags, params, metrics) that its `EXISTS` subqueries look into (each entity's file names
//! its own tables), and the kinds of identifier.

use super::parse::{Op, Val};
use super::{Bind, SearchError, Sql, invalid, py_list, py_set};

pub(super) const NUMERIC_OPS: &[&str] = &[">", ">=", "!=", "=", "<", "<="];
pub(super) const STRING_ATTRIBUTE_OPS: &[&str] = &["!=", "=", "LIKE", "ILIKE", "IN", "NOT IN"];
pub(super) const PARAM_TAG_OPS: &[&str] = &["!=", "=", "LIKE", "ILIKE", "IS NULL", "IS NOT NULL"];

/// What a comparison binds: one value, or the members of an `IN` list.
pub(super) enum Arg {
    One(Bind),
    Many(Vec<Bind>),
}

// ---------------------------------------------------------------------------------------------
// Values (MLflow's `_get_value` family)

pub(super) fn not_quoted(raw: &str) -> SearchError {
    invalid(format!(
        "Parameter value is either not quoted or unidentified quote types used for string \
         value {raw}. Use either single or double quotes."
    ))
}

/// A tag or param value: a quoted string.
pub(super) fn tag_value(val: &Val, kind: &str) -> Result<String, SearchError> {
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
pub(super) fn string_list(items: &[Val]) -> Result<Vec<Bind>, SearchError> {
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

pub(super) fn check_list_supported(key: &str, supported: &[&str]) -> Result<(), SearchError> {
    if supported.contains(&key) {
        Ok(())
    } else {
        Err(invalid(format!(
            "Only {} attributes support comparison with a list of quoted string values.",
            py_list(supported)
        )))
    }
}

pub(super) fn number_bind(text: &str, float: bool) -> Result<Bind, SearchError> {
    if !float && let Ok(i) = text.parse::<i64>() {
        return Ok(Bind::Int(i));
    }
    text.parse::<f64>()
        .map(Bind::Float)
        .map_err(|_| invalid(format!("Invalid numeric value {text}")))
}

/// A tracking string attribute: quoted string, or a list for the keys that support one.
pub(super) fn string_attribute_value(
    val: &Val,
    key: &str,
    list_keys: &[&str],
) -> Result<Arg, SearchError> {
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
pub(super) fn numeric_attribute_value(val: &Val, key: &str) -> Result<Bind, SearchError> {
    match val {
        Val::Num { text, float } => number_bind(text, *float),
        other => Err(invalid(format!(
            "Expected numeric value type for numeric attribute: {key}. Found {}",
            other.shown()
        ))),
    }
}

/// A metric value: a number literal.
pub(super) fn metric_value(val: &Val) -> Result<Bind, SearchError> {
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

pub(super) fn check_op(op: &Op, allowed: &[&str]) -> Result<(), SearchError> {
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

pub(super) struct Out {
    parts: Vec<String>,
    binds: Vec<Bind>,
    next: usize,
}

impl Out {
    pub(super) fn new(first: usize) -> Self {
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
    pub(super) fn bind_key(&mut self, key: &str) -> Result<String, SearchError> {
        if key.contains('\0') {
            return Err(invalid("Invalid order_by key: it contains a NUL character"));
        }
        Ok(self.bind(Bind::Text(key.to_owned())))
    }

    pub(super) fn push(&mut self, part: String) {
        self.parts.push(part);
    }

    /// `column <op> value(s)`.
    pub(super) fn compare(
        &mut self,
        column: &str,
        op: &Op,
        arg: Arg,
    ) -> Result<String, SearchError> {
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
    pub(super) fn exists(
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

    pub(super) fn finish(self, separator: &str, empty: &str) -> Sql {
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
pub(super) struct KeyValueTable {
    pub(super) table: &'static str,
    pub(super) alias: &'static str,
    pub(super) link: &'static str,
}

// ---------------------------------------------------------------------------------------------
// Identifiers

/// What an identifier names, as its prefix (`metrics.`, `tags.`, …) or its absence says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Metric,
    Param,
    Tag,
    Attribute,
    Dataset,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Metric => "metric",
            Kind::Param => "parameter",
            Kind::Tag => "tag",
            Kind::Attribute => "attribute",
            Kind::Dataset => "dataset",
        }
    }
}
