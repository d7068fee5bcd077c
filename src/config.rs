//! One configuration for `nexus serve` and `nexus up`, from three layers (later wins):
//! a config file (`--config PATH` or `NEXUS_CONFIG`; TOML, or YAML by its extension), `NEXUS_*`
//! environment variables, and command-line flags.
//!
//! Every key is a flag's long name with `_` for `-` (`http_port`, `database_url`, `model`
//! for the repeatable `--model`, `kafka_option`); env names are `NEXUS_` + the key in upper
//! case. Layering is done by figment; the values then go through clap like flags, so a file
//! value gets the same parsing, validation and error messages as the flag it stands for.
//! A key the file does not know is an error; other `NEXUS_*` variables are left alone (tests
//! and pipeline steps use some of their own).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use figment::Figment;
use figment::providers::{Env, Format, Toml, Yaml};
use figment::value::Value;

/// Subcommands whose flags can come from the config file and the environment.
const LAYERED: &[&str] = &["serve", "up"];

/// The flag that names the config file, which is not itself a key in it.
const CONFIG_FLAG: &str = "config";

/// `argv` with the file's and the environment's values inserted as flags, for those flags
/// the command line does not give. Other commands pass through unchanged.
pub fn layered(cli: &Command, argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Ok(matches) = cli.clone().try_get_matches_from(&argv) else {
        // Let the real parse report the error (or print --help).
        return Ok(argv);
    };
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(command) = cli
        .find_subcommand(name)
        .filter(|_| LAYERED.contains(&name))
    else {
        return Ok(argv);
    };
    let file = sub.get_one::<PathBuf>(CONFIG_FLAG).cloned();
    let values = load(command, file.as_deref())?;
    let mut extra = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let Some(value) = values.get(&key(long)) else {
            continue;
        };
        let given = matches!(
            sub.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            extra.extend(flags(long, arg.get_action(), value)?);
        }
    }
    let at = argv
        .iter()
        .position(|a| a == name)
        .map_or(argv.len(), |i| i + 1);
    let mut out = argv;
    out.splice(at..at, extra.into_iter().map(OsString::from));
    Ok(out)
}

/// The config key of flag `--long`.
fn key(long: &str) -> String {
    long.replace('-', "_")
}

/// The file's values overlaid by the environment's, keyed like flags; unknown file keys
/// are errors that name the file and the key.
fn load(command: &Command, file: Option<&Path>) -> anyhow::Result<BTreeMap<String, Value>> {
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != CONFIG_FLAG)
        .map(key)
        .collect();
    let mut figment = Figment::new();
    if let Some(path) = file {
        if !path.is_file() {
            bail!("config file {} not found", path.display());
        }
        figment = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => figment.merge(Yaml::file(path)),
            _ => figment.merge(Toml::file(path)),
        };
        let from_file: BTreeMap<String, Value> = figment
            .extract()
            .with_context(|| format!("reading config file {}", path.display()))?;
        let unknown: Vec<&String> = from_file.keys().filter(|k| !known.contains(k)).collect();
        if !unknown.is_empty() {
            bail!(
                "unknown key{} {} in {}; keys are flag names with _ for - (see `nexus {} --help`)",
                if unknown.len() > 1 { "s" } else { "" },
                unknown
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                path.display(),
                command.get_name()
            );
        }
    }
    let env: Vec<&str> = known.iter().map(String::as_str).collect();
    figment = figment.merge(Env::prefixed("NEXUS_").only(&env));
    figment
        .extract()
        .context("reading the configuration (file and NEXUS_* environment)")
}

/// The flags that stand for `value` of `--long`.
fn flags(long: &str, action: &ArgAction, value: &Value) -> anyhow::Result<Vec<String>> {
    let switch = matches!(action, ArgAction::SetTrue);
    let items = match value {
        Value::Array(_, items) => items.clone(),
        other => vec![other.clone()],
    };
    let mut out = Vec::new();
    for item in items {
        let text = match &item {
            Value::String(_, s) => s.clone(),
            Value::Char(_, c) => c.to_string(),
            Value::Bool(_, b) => b.to_string(),
            Value::Num(_, n) => match (n.to_u128(), n.to_i128(), n.to_f64()) {
                (Some(u), _, _) => u.to_string(),
                (None, Some(i), _) => i.to_string(),
                (None, None, Some(f)) => f.to_string(),
                (None, None, None) => bail!("`{}`: not a number", key(long)),
            },
            Value::Empty(..) => continue,
            Value::Dict(..) | Value::Array(..) => {
                bail!("`{}` must be a value or a list of values", key(long))
            }
        };
        match (switch, text.as_str()) {
            (true, "true") => out.push(format!("--{long}")),
            (true, "false") => {}
            (true, other) => bail!("`{}` is a switch: true or false, not {other:?}", key(long)),
            (false, _) => out.push(format!("--{long}={text}")),
        }
    }
    Ok(out)
}

/// The effective configuration of `nexus up` with `args`, as a config file (TOML) that
/// `--config` accepts, secrets masked.
pub fn show(cli: &Command, args: Vec<String>) -> anyhow::Result<String> {
    let mut argv: Vec<OsString> = vec!["nexus".into(), "up".into()];
    argv.extend(args.into_iter().map(OsString::from));
    let argv = layered(cli, argv)?;
    let matches = cli
        .clone()
        .try_get_matches_from(argv)
        .unwrap_or_else(|e| e.exit());
    let (_, sub) = matches.subcommand().context("no subcommand")?;
    let command = cli.find_subcommand("up").context("no up command")?;
    let mut lines = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == CONFIG_FLAG {
            continue;
        }
        let values = raw(sub, arg.get_id().as_str());
        let shown: Vec<String> = values.iter().map(|v| toml_string(&mask(long, v))).collect();
        let line = match (arg.get_action(), shown.as_slice()) {
            (ArgAction::Append, _) => format!("{} = [{}]", key(long), shown.join(", ")),
            (_, [one]) => format!("{} = {one}", key(long)),
            (_, []) => format!("# {} is not set", key(long)),
            (_, many) => format!("{} = [{}]", key(long), many.join(", ")),
        };
        lines.push(line);
    }
    lines.sort_by(|a, b| a.trim_start_matches("# ").cmp(b.trim_start_matches("# ")));
    Ok(lines.join("\n") + "\n")
}

fn raw(matches: &ArgMatches, id: &str) -> Vec<String> {
    matches
        .get_raw(id)
        .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Hides secrets: values of keys that name one, passwords in URLs, and secret-looking
/// `KEY=VALUE` client options.
fn mask(long: &str, value: &str) -> String {
    let secret = |name: &str| {
        let name = name.to_ascii_lowercase();
        ["secret", "password", "token", "credential", "private"]
            .iter()
            .any(|s| name.contains(s))
            || name.ends_with("key")
    };
    if secret(long) {
        return "****".into();
    }
    if let Some((k, _)) = value.split_once('=')
        && secret(k)
    {
        return format!("{k}=****");
    }
    if value.contains("://") {
        return nexus_database::redact(value);
    }
    value.to_string()
}

fn toml_string(value: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(mask("jwt_secret", "abc"), "****");
        assert_eq!(
            mask("kafka-option", "sasl.password=hunter2"),
            "sasl.password=****"
        );
        assert_eq!(mask("kafka-option", "acks=all"), "acks=all");
        let url = mask("database-url", "postgres://me:hunter2@db/x");
        assert!(!url.contains("hunter2"), "{url}");
        assert_eq!(mask("http-port", "8000"), "8000");
    }
}
