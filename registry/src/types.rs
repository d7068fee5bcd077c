//! MLflow's entities as its REST API writes them (protobuf JSON with proto field names,
//! 64-bit integers as numbers, ids as strings).

use serde::{Deserialize, Serialize};

/// A key/value pair: tags, params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Experiment {
    pub experiment_id: String,
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: String,
    pub last_update_time: i64,
    pub creation_time: i64,
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    /// NaN and infinities travel as the strings "NaN", "Infinity", "-Infinity", as in MLflow.
    #[serde(
        serialize_with = "float::serialize",
        deserialize_with = "float::deserialize"
    )]
    pub value: f64,
    #[serde(default)]
    pub timestamp: i64,
    #[serde(default)]
    pub step: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub run_uuid: String,
    pub run_name: String,
    pub experiment_id: String,
    pub user_id: String,
    pub status: String,
    pub start_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    pub artifact_uri: String,
    pub lifecycle_stage: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunData {
    pub metrics: Vec<Metric>,
    pub params: Vec<KeyValue>,
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunInputs {
    pub dataset_inputs: Vec<serde_json::Value>,
    pub model_inputs: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunOutputs {
    pub model_outputs: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub info: RunInfo,
    pub data: RunData,
    pub inputs: RunInputs,
    pub outputs: RunOutputs,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alias {
    pub alias: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    pub creation_timestamp: i64,
    pub last_updated_timestamp: i64,
    pub user_id: String,
    pub current_stage: String,
    pub description: String,
    pub source: String,
    pub run_id: String,
    pub status: String,
    pub status_message: String,
    pub run_link: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model_id: String,
    pub tags: Vec<KeyValue>,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegisteredModel {
    pub name: String,
    pub creation_timestamp: i64,
    pub last_updated_timestamp: i64,
    pub description: String,
    pub latest_versions: Vec<ModelVersion>,
    pub tags: Vec<KeyValue>,
    pub aliases: Vec<Alias>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoggedModelInfo {
    pub model_id: String,
    pub experiment_id: String,
    pub name: String,
    pub artifact_uri: String,
    pub creation_timestamp_ms: i64,
    pub last_updated_timestamp_ms: i64,
    pub status: String,
    pub lifecycle_stage: String,
    pub model_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source_run_id: String,
    pub status_message: String,
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoggedModelData {
    pub params: Vec<KeyValue>,
    pub metrics: Vec<Metric>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoggedModel {
    pub info: LoggedModelInfo,
    pub data: LoggedModelData,
}

/// Protobuf's JSON form of doubles: numbers, or strings for the values JSON lacks.
mod float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_nan() => s.serialize_str("NaN"),
            f64::INFINITY => s.serialize_str("Infinity"),
            f64::NEG_INFINITY => s.serialize_str("-Infinity"),
            v => s.serialize_f64(v),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Number {
            Float(f64),
            Text(String),
        }
        match Number::deserialize(d)? {
            Number::Float(f) => Ok(f),
            Number::Text(t) => t
                .trim()
                .parse::<f64>()
                .map_err(|_| serde::de::Error::custom(format!("'{t}' is not a number"))),
        }
    }
}

/// A page of results and the token for the next one (absent on the last page).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}
