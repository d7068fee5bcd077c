//! Logged models (MLflow's `mlflow/utils/search_logged_model_utils.py`): the filter over
//! `logged_models l`, its tags and params, and the metrics logged for the model, and the
//! structured ordering of `SearchLoggedModels`.

use super::parse::{Cmp, Val};
use super::sql::{Arg, KeyValueTable, Kind, Out};
use super::{Bind, FieldOrder, SearchError, Sql, invalid, py_list, py_set};

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

pub(super) fn logged_models_filter(comparisons: &[Cmp], out: &mut Out) -> Result<(), SearchError> {
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
    use crate::search::Entity;
    use crate::search::test_support::{err, ok, order, order_err, order_sql, text};

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
}
