//! Registered models and model versions (MLflow's `SearchModelUtils` and
//! `SearchModelVersionUtils`): the filters over `registered_models m` and `model_versions v`
//! and their tags, with the exclusion of prompts unless the filter asks for them, and the
//! orderings.

use super::experiments::{REGISTRY_ENTITY_TYPES, experiment_identifier};
use super::parse::{
    Cmp, Op, Val, duplicate_fields, parse_order_clause, strip_quotes, trim_backticks,
};
use super::sql::{
    Arg, KeyValueTable, Kind, NUMERIC_OPS, Out, STRING_ATTRIBUTE_OPS, check_list_supported,
    not_quoted, number_bind, string_list, tag_value,
};
use super::{Bind, Entity, SearchError, Sql, invalid, py_set};

const IS_PROMPT_TAG_KEY: &str = "mlflow.prompt.is_prompt";

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

pub(super) fn registry_filter(
    entity: Entity,
    comparisons: &[Cmp],
    out: &mut Out,
) -> Result<(), SearchError> {
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

pub(super) fn registered_models_order_by(clauses: &[&str]) -> Result<Sql, SearchError> {
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

pub(super) fn model_versions_order_by(clauses: &[&str]) -> Result<Sql, SearchError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::test_support::{err, ok, order, order_err, text};

    const PROMPT_M: &str = "NOT EXISTS (SELECT 1 FROM registered_model_tags tg WHERE tg.name = \
                            m.name AND tg.key = 'mlflow.prompt.is_prompt' AND tg.value = 'true')";
    const PROMPT_V: &str = "NOT EXISTS (SELECT 1 FROM model_version_tags tg WHERE tg.name = \
                            v.name AND tg.key = 'mlflow.prompt.is_prompt' AND tg.value = 'true')";

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

    // ---- order_by

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
}
