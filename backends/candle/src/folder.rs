//! What a Hugging Face model folder declares, as `transformers` and `sentence-transformers`
//! save it: `config.json` (the architecture), `model.safetensors`, `tokenizer.json`, and for
//! sentence-transformers `modules.json` naming the pooling (`1_Pooling/config.json`) and
//! normalisation (`2_Normalize`) that follow the encoder, and `sentence_bert_config.json`
//! with the maximum sequence length.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Files a folder must have to be served by candle.
pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const TOKENIZER: &str = "tokenizer.json";

/// `model_type`s whose weights candle's BERT implementation reads.
const BERT_FAMILY: [&str; 1] = ["bert"];

/// How token embeddings become one vector per text (sentence-transformers' pooling modes;
/// several are concatenated in this order, as sentence-transformers does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Cls,
    Max,
    Mean,
    MeanSqrtLen,
    LastToken,
}

/// What the folder's model computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    /// Sentence embeddings: pooled token embeddings, L2-normalised when `normalize`.
    Embedding {
        pooling: Vec<Pooling>,
        normalize: bool,
    },
    /// `BertForSequenceClassification`: logits over `labels` classes.
    Classification { labels: usize },
}

/// A folder's declarations, read before any weight is loaded.
#[derive(Debug, Clone)]
pub struct Folder {
    pub dir: PathBuf,
    /// `config.json` as candle's BERT reads it.
    pub bert: candle_transformers::models::bert::Config,
    pub head: Head,
    /// Tokens per text after truncation (special tokens included).
    pub max_length: usize,
    /// sentence-transformers' `do_lower_case`: lowercase texts before tokenising.
    pub lowercase: bool,
}

#[derive(Deserialize)]
struct Architecture {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    id2label: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    num_labels: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize, Default)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

/// Whether `dir` holds a folder this backend serves: the three files and a BERT-family
/// `model_type`. Cheap: reads `config.json` only.
pub fn recognises(dir: &Path) -> bool {
    let files_present = [CONFIG, WEIGHTS, TOKENIZER]
        .iter()
        .all(|f| dir.join(f).is_file());
    files_present
        && read_json::<Architecture>(&dir.join(CONFIG))
            .ok()
            .and_then(|a| a.model_type)
            .is_some_and(|t| BERT_FAMILY.contains(&t.as_str()))
}

impl Folder {
    /// Reads the folder's declarations; every problem is an error naming the file.
    pub fn read(dir: &Path) -> Result<Folder, String> {
        for file in [CONFIG, WEIGHTS, TOKENIZER] {
            if !dir.join(file).is_file() {
                return Err(format!(
                    "{} has no {file}; a candle model is a Hugging Face folder with {CONFIG}, {WEIGHTS} and {TOKENIZER}",
                    dir.display()
                ));
            }
        }
        let config_path = dir.join(CONFIG);
        let architecture: Architecture = read_json(&config_path)?;
        let model_type = architecture.model_type.clone().unwrap_or_default();
        if !BERT_FAMILY.contains(&model_type.as_str()) {
            return Err(format!(
                "{}: model_type '{model_type}' is not served by the candle backend (it serves {})",
                config_path.display(),
                BERT_FAMILY.join(", ")
            ));
        }
        let bert: candle_transformers::models::bert::Config = read_json(&config_path)?;
        let st: SentenceBertConfig =
            read_optional_json(&dir.join("sentence_bert_config.json"))?.unwrap_or_default();
        let max_length = st
            .max_seq_length
            .unwrap_or(bert.max_position_embeddings)
            .min(bert.max_position_embeddings);
        let head = head(dir, &architecture)?;
        Ok(Folder {
            dir: dir.to_path_buf(),
            bert,
            head,
            max_length,
            lowercase: st.do_lower_case,
        })
    }

    /// Width of one output row: the embedding (pooled modes concatenated) or the logits.
    pub fn output_width(&self) -> usize {
        match &self.head {
            Head::Embedding { pooling, .. } => pooling.len() * self.bert.hidden_size,
            Head::Classification { labels } => *labels,
        }
    }
}

/// The head: a classifier when `config.json` says so, else sentence-transformers' modules.
fn head(dir: &Path, architecture: &Architecture) -> Result<Head, String> {
    let classifier = architecture
        .architectures
        .iter()
        .any(|a| a == "BertForSequenceClassification");
    if classifier {
        let labels = architecture
            .num_labels
            .or_else(|| architecture.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2);
        return Ok(Head::Classification { labels });
    }
    let modules_path = dir.join("modules.json");
    let Some(modules) = read_optional_json::<Vec<Module>>(&modules_path)? else {
        return Err(format!(
            "{} has no modules.json: for an embedding model the candle backend takes the pooling from sentence-transformers' modules.json and 1_Pooling/config.json (save the model with sentence-transformers), and for a classifier config.json must name BertForSequenceClassification",
            dir.display()
        ));
    };
    let mut pooling = None;
    let mut normalize = false;
    for module in &modules {
        let kind = module.kind.rsplit('.').next().unwrap_or_default();
        match kind {
            "Transformer" => {}
            "Pooling" => {
                let path = safe_join(dir, &module.path)?.join(CONFIG);
                let config: PoolingConfig = read_json(&path)?;
                pooling = Some(modes(&config, &path)?);
            }
            "Normalize" => normalize = true,
            other => {
                return Err(format!(
                    "{}: module '{other}' is not supported by the candle backend (it runs Transformer, Pooling and Normalize)",
                    modules_path.display()
                ));
            }
        }
    }
    let pooling = pooling.ok_or_else(|| {
        format!(
            "{} names no Pooling module, so the folder does not say how to make one vector per text",
            modules_path.display()
        )
    })?;
    Ok(Head::Embedding { pooling, normalize })
}

fn modes(config: &PoolingConfig, path: &Path) -> Result<Vec<Pooling>, String> {
    if config.pooling_mode_weightedmean_tokens {
        return Err(format!(
            "{}: weighted-mean pooling is not supported by the candle backend",
            path.display()
        ));
    }
    let modes: Vec<Pooling> = [
        (config.pooling_mode_cls_token, Pooling::Cls),
        (config.pooling_mode_max_tokens, Pooling::Max),
        (config.pooling_mode_mean_tokens, Pooling::Mean),
        (
            config.pooling_mode_mean_sqrt_len_tokens,
            Pooling::MeanSqrtLen,
        ),
        (config.pooling_mode_lasttoken, Pooling::LastToken),
    ]
    .into_iter()
    .filter_map(|(on, mode)| on.then_some(mode))
    .collect();
    if modes.is_empty() {
        return Err(format!("{}: no pooling mode is on", path.display()));
    }
    Ok(modes)
}

/// `dir/relative` for a module path from `modules.json`, refusing one that leaves `dir`.
fn safe_join(dir: &Path, relative: &str) -> Result<PathBuf, String> {
    let path = Path::new(relative);
    let inside = path.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !inside {
        return Err(format!(
            "modules.json names '{relative}', which is not a folder inside the model"
        ));
    }
    Ok(dir.join(path))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    read_optional_json(path)?.ok_or_else(|| format!("{} is missing", path.display()))
}

fn read_optional_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("{} is not valid: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERT: &str = r#"{"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522,
        "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "max_position_embeddings": 512,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0}"#;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const MODULES: &str = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn reads_a_sentence_transformers_folder() {
        let dir = folder(&[
            (CONFIG, BERT),
            (WEIGHTS, ""),
            (TOKENIZER, "{}"),
            ("modules.json", MODULES),
            (
                "1_Pooling/config.json",
                r#"{"word_embedding_dimension": 384, "pooling_mode_mean_tokens": true}"#,
            ),
            (
                "sentence_bert_config.json",
                r#"{"max_seq_length": 256, "do_lower_case": false}"#,
            ),
        ]);
        assert!(recognises(dir.path()));
        let f = Folder::read(dir.path()).unwrap();
        assert_eq!(
            f.head,
            Head::Embedding {
                pooling: vec![Pooling::Mean],
                normalize: true
            }
        );
        assert_eq!((f.max_length, f.output_width()), (256, 384));
    }

    #[test]
    fn refuses_what_it_cannot_compute_with_the_reason() {
        let no_pooling = folder(&[(CONFIG, BERT), (WEIGHTS, ""), (TOKENIZER, "{}")]);
        let err = Folder::read(no_pooling.path()).unwrap_err();
        assert!(err.contains("has no modules.json"), "{err}");

        let escaping = folder(&[
            (CONFIG, BERT),
            (WEIGHTS, ""),
            (TOKENIZER, "{}"),
            (
                "modules.json",
                &MODULES.replace("1_Pooling", "../1_Pooling"),
            ),
        ]);
        let err = Folder::read(escaping.path()).unwrap_err();
        assert!(err.contains("not a folder inside the model"), "{err}");

        let gpt = folder(&[
            (CONFIG, &BERT.replace("\"bert\"", "\"gpt2\"")),
            (WEIGHTS, ""),
            (TOKENIZER, "{}"),
        ]);
        assert!(!recognises(gpt.path()));
        let err = Folder::read(gpt.path()).unwrap_err();
        assert!(err.contains("model_type 'gpt2' is not served"), "{err}");

        let classifier = folder(&[
            (CONFIG, &BERT.replace("\"BertModel\"", "\"BertForSequenceClassification\"").replace("\"vocab_size\"", "\"id2label\": {\"0\": \"neg\", \"1\": \"neu\", \"2\": \"pos\"}, \"vocab_size\"")),
            (WEIGHTS, ""),
            (TOKENIZER, "{}"),
        ]);
        let f = Folder::read(classifier.path()).unwrap();
        assert_eq!(f.head, Head::Classification { labels: 3 });
    }
}
