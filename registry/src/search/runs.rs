//! Runs (MLflow's `SearchUtils`): identifiers with their many prefixes and attribute
//! aliases, the filter over `runs r` and its `latest_metrics`, `params` and `run_tags`, and
//! the ordering with MLflow's tie-breakers.

use super::parse::{Cmp, Op, duplicate_fields, parse_order_clause, strip_quotes, trim_backticks};
use super::sql::{
    Arg, KeyValueTable, Kind, NUMERIC_OPS, Out, PARAM_TAG_OPS, STRING_ATTRIBUTE_OPS, check_op,
    metric_value, numeric_attribute_value, string_attribute_value, tag_value,
};
use super::{Bind, SearchError, Sql, invalid, py_list, py_set};

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

pub(super) fn runs_filter(comparisons: &[Cmp], out: &mut Out) -> Result<(), SearchError> {
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

pub(super) fn runs_order_by(clauses: &[&str], first: usize) -> Result<Sql, SearchError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::test_support::{err, ok, order, order_err, order_sql, text};
    use crate::search::{Entity, filter, order_by_from};

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
}
