//! Experiments (MLflow's `SearchExperimentsUtils`): the filter over `experiments e` and its
//! `experiment_tags`, and the ordering. Its identifier rule (no prefix, `attribute.` or
//! `tag(s).`) also serves the model versions' ordering.

use super::parse::{Cmp, Op, parse_order_clause, strip_quotes, trim_backticks};
use super::sql::{
    Arg, KeyValueTable, Kind, NUMERIC_OPS, Out, STRING_ATTRIBUTE_OPS, check_op,
    numeric_attribute_value, string_attribute_value, tag_value,
};
use super::{Bind, SearchError, Sql, invalid, py_set};

const EXPERIMENT_TAGS: KeyValueTable = KeyValueTable {
    table: "experiment_tags",
    alias: "tg",
    link: "tg.experiment_id = e.experiment_id",
};

const EXPERIMENT_ATTRIBUTES: &[&str] =
    &["name", "experiment_id", "creation_time", "last_update_time"];
const EXPERIMENT_NUMERIC_ATTRIBUTES: &[&str] = &["creation_time", "last_update_time"];
pub(super) const REGISTRY_ENTITY_TYPES: &str = "('attribute', 'tag', 'tags')";

/// `SearchExperimentsUtils._get_identifier` (also used by the registry's order_by): no prefix
/// or `attribute.` / `tag.` / `tags.`.
pub(super) fn experiment_identifier(
    raw: &str,
    valid: &[&str],
) -> Result<(Kind, String), SearchError> {
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

pub(super) fn experiments_filter(comparisons: &[Cmp], out: &mut Out) -> Result<(), SearchError> {
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

pub(super) fn experiments_order_by(clauses: &[&str]) -> Result<Sql, SearchError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Entity;
    use crate::search::test_support::{err, ok, order, order_err, text};

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

    // ---- order_by

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
}
