//! `nexus models`: push, list and alias models in a registry that speaks MLflow's REST API
//! (Nexus's or MLflow's own), through [`RegistryClient`].

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::client::RegistryClient;

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Upload a model file or folder and register it as a new version; what no runtime
    /// here could serve is refused before anything is uploaded.
    #[command(
        after_help = "Examples:\n  nexus models push model.onnx --name fraud --alias champion\n  nexus models push examples/models/simple --name adder --tag team=risk"
    )]
    Push {
        /// A model file (model.onnx, model.pt), a model folder (model.onnx with its
        /// config.pbtxt, a Hugging Face folder) or a Triton model folder (config.pbtxt and
        /// numbered version folders: the newest is pushed).
        path: PathBuf,
        /// Registered model name.
        #[arg(long)]
        name: String,
        /// The runtime, by Triton platform or backend name (onnxruntime_onnx, pytorch_libtorch,
        /// candle), where the files cannot say.
        #[arg(long)]
        platform: Option<String>,
        /// Alias to point at the new version (e.g. champion).
        #[arg(long)]
        alias: Option<String>,
        /// Version tag KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List registered models with their latest versions and aliases.
    #[command(after_help = "Example:\n  nexus models list --registry-url http://nexus:8000")]
    List,
    /// Manage aliases.
    #[command(after_help = "Example:\n  nexus models alias set fraud champion 3")]
    Alias {
        #[command(subcommand)]
        command: AliasCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AliasCommand {
    /// Point ALIAS of model NAME at VERSION.
    #[command(after_help = "Example:\n  nexus models alias set fraud champion 3")]
    Set {
        name: String,
        alias: String,
        version: String,
    },
}

/// What `nexus models push` uploads for `path`: (name in the version, file) pairs, or why
/// no runtime could serve it. The binary passes its table of runtimes in.
pub type Package<'a> = &'a dyn Fn(&Path, Option<&str>) -> Result<Vec<(String, PathBuf)>, String>;

/// Runs `command` against the registry of `client`, printing for a person at a terminal.
pub async fn run(
    client: &RegistryClient,
    command: ModelsCommand,
    package: Package<'_>,
) -> anyhow::Result<()> {
    match command {
        ModelsCommand::Push {
            path,
            name,
            platform,
            alias,
            tags,
        } => {
            let files = package(&path, platform.as_deref())
                .map_err(|reason| anyhow::anyhow!("cannot push {}: {reason}", path.display()))?;
            let version = client.push(&files, &name, alias.as_deref(), &tags).await?;
            match alias {
                Some(alias) => {
                    println!("{name} version {version} registered; {alias} -> {version}")
                }
                None => println!("{name} version {version} registered"),
            }
        }
        ModelsCommand::List => {
            let models = client.list_models().await?;
            write_table(&models, &mut std::io::stdout())?;
        }
        ModelsCommand::Alias {
            command:
                AliasCommand::Set {
                    name,
                    alias,
                    version,
                },
        } => {
            client.set_alias(&name, &alias, &version).await?;
            println!("{name}: {alias} -> {version}");
        }
    }
    Ok(())
}

/// The `nexus models list` table of registered models (MLflow's JSON): name, newest
/// version, aliases.
fn write_table(models: &[Value], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{:<32} {:>8}  ALIASES", "NAME", "LATEST")?;
    for model in models {
        let latest = model["latest_versions"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .filter_map(|m| m["version"].as_str()?.parse::<u64>().ok())
                    .max()
            })
            .map_or_else(|| "-".to_string(), |v| v.to_string());
        let aliases: Vec<String> = model["aliases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        format!(
                            "{}->{}",
                            x["alias"].as_str().unwrap_or(""),
                            x["version"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "{:<32} {:>8}  {}",
            model["name"].as_str().unwrap_or(""),
            latest,
            aliases.join(" ")
        )?;
    }
    Ok(())
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_shows_the_newest_version_and_every_alias() {
        let models = [
            json!({"name": "fraud", "latest_versions": [{"version": "2"}, {"version": "10"}],
                   "aliases": [{"alias": "champion", "version": "10"}, {"alias": "old", "version": "2"}]}),
            json!({"name": "empty"}),
        ];
        let mut out = Vec::new();
        write_table(&models, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("fraud") && lines[1].ends_with("10  champion->10 old->2"));
        assert!(lines[2].starts_with("empty") && lines[2].trim_end().ends_with('-'));
        assert_eq!(
            parse_tag("team=risk").unwrap(),
            ("team".into(), "risk".into())
        );
        assert!(parse_tag("x").is_err());
    }
}
