//! The files of one model version as a registry stores them, from what a user points
//! `nexus models push` at: a model file, a runtime's model folder, or a model folder in
//! Triton's layout (`config.pbtxt` + `<version>/…`). Whatever no runtime here could serve
//! is refused with the reason before anything is uploaded.

use std::path::{Path, PathBuf};

use crate::backend::{BackendFactory, Backends};
use crate::config;
use crate::repository::CONFIG_FILE;

/// One file to upload: its name in the version's artifacts and where it is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagedFile {
    pub name: String,
    pub path: PathBuf,
}

/// The files to register for the model at `path`, laid out as the server's runtimes look
/// for them: the version's files with the model under its runtime's name (`model.onnx`),
/// and `config.pbtxt` beside them.
/// `platform` names the runtime (platform or backend name) where the files cannot say.
pub fn package(
    path: &Path,
    backends: &Backends,
    platform: Option<&str>,
) -> Result<Vec<PackagedFile>, String> {
    let named = |p: &str| {
        backends
            .resolve(p, "", None)
            .or_else(|_| backends.resolve("", p, None))
    };
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() {
        let runtime = match platform {
            Some(p) => named(p)?,
            None => by_extension(backends, path)?,
        };
        if runtime.model_filename().is_empty() {
            return Err(format!(
                "a {} model is a folder, not a single file",
                runtime.backend()
            ));
        }
        if runtime.needs_config() {
            return Err(needs_config(runtime.as_ref()));
        }
        return Ok(vec![file(runtime.model_filename(), path)]);
    }
    let config_path = path.join(CONFIG_FILE);
    let parsed = match std::fs::read_to_string(&config_path) {
        Ok(text) => {
            Some(config::parse_text(&text).map_err(|e| format!("{}: {e}", config_path.display()))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", config_path.display())),
    };
    let newest_version = newest_version_dir(path)?;
    let version_dir = newest_version.as_deref().unwrap_or(path);
    let runtime = match (platform, &parsed) {
        (Some(p), _) => named(p)?,
        (None, Some(c)) => backends.resolve(&c.platform, &c.backend, Some(version_dir))?,
        (None, None) => backends.resolve("", "", Some(version_dir))?,
    };
    if parsed
        .as_ref()
        .is_none_or(|c| c.input.is_empty() || c.output.is_empty())
        && runtime.needs_config()
    {
        return Err(needs_config(runtime.as_ref()));
    }
    let filename = parsed
        .as_ref()
        .map_or("", |c| c.default_model_filename.as_str());
    let model = match (filename, runtime.find_model(version_dir)) {
        ("", Some(found)) => found,
        ("", None) => {
            return Err(format!(
                "{} holds no {} model ({})",
                version_dir.display(),
                runtime.backend(),
                backends.expected_files()
            ));
        }
        (file, _) => runtime.model_path(version_dir, file),
    };
    if !model.exists() {
        return Err(format!("{} does not exist", model.display()));
    }
    // Every file of the version goes (an ONNX model's external weights sit beside it),
    // the model itself under its runtime's name.
    let mut files = folder_files(version_dir, newest_version.is_none())?;
    if model != version_dir {
        let entry = files.iter_mut().find(|f| f.path == model).ok_or_else(|| {
            format!(
                "the model file {} is not inside {}",
                model.display(),
                version_dir.display()
            )
        })?;
        entry.name = runtime.model_filename().to_string();
    }
    if parsed.is_some() {
        files.push(file(CONFIG_FILE, &config_path));
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

fn needs_config(runtime: &dyn BackendFactory) -> String {
    format!(
        "a {} model needs a config.pbtxt that lists its inputs and outputs (its file does not record them): push a folder with config.pbtxt and the model ({}), as Triton keeps it",
        runtime.backend(),
        runtime.model_filename()
    )
}

fn file(name: &str, path: &Path) -> PackagedFile {
    PackagedFile {
        name: name.to_string(),
        path: path.to_path_buf(),
    }
}

/// The runtime whose model file has the extension of `path` (`.onnx`, `.pt`).
fn by_extension<'a>(
    backends: &'a Backends,
    path: &Path,
) -> Result<&'a std::sync::Arc<dyn BackendFactory>, String> {
    let extension = path.extension();
    backends
        .all()
        .find(|f| {
            let own = Path::new(f.model_filename()).extension();
            own.is_some() && own == extension
        })
        .ok_or_else(|| {
            format!(
                "no runtime here serves {} by its name (expected {}); name one with --platform",
                path.display(),
                backends.expected_files()
            )
        })
}

/// The highest numeric sub-folder of a Triton model folder, if it has any.
fn newest_version_dir(dir: &Path) -> Result<Option<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let newest = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter_map(|p| Some((p.file_name()?.to_str()?.parse::<u64>().ok()?, p)))
        .max_by_key(|(v, _)| *v);
    Ok(newest.map(|(_, p)| p))
}

/// Every file under `dir` by its path relative to `dir`, without the config when `dir`
/// is the model folder itself (the config is added once, by the caller).
fn folder_files(dir: &Path, skip_config: bool) -> Result<Vec<PackagedFile>, String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        for entry in entries {
            let p = entry
                .map_err(|e| format!("{}: {e}", current.display()))?
                .path();
            let relative = p
                .strip_prefix(dir)
                .unwrap_or(&p)
                .to_string_lossy()
                .replace('\\', "/");
            if p.is_dir() {
                stack.push(p);
            } else if !(skip_config && relative == CONFIG_FILE) {
                files.push(PackagedFile {
                    name: relative,
                    path: p,
                });
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::test_support::table;

    fn names(files: &[PackagedFile]) -> Vec<&str> {
        files.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn a_file_goes_under_its_runtimes_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fraud-v3.onnx");
        std::fs::write(&file, b"x").unwrap();
        let files = package(&file, &table(), None).unwrap();
        assert_eq!(
            files,
            vec![PackagedFile {
                name: "model.onnx".into(),
                path: file.clone()
            }]
        );

        let odd = dir.path().join("weights.bin");
        std::fs::write(&odd, b"x").unwrap();
        let err = package(&odd, &table(), None).unwrap_err();
        assert!(err.contains("name one with --platform"), "{err}");
        let files = package(&odd, &table(), Some("onnxruntime")).unwrap();
        assert_eq!(names(&files), ["model.onnx"]);
        let err = package(&odd, &table(), Some("pytorch")).unwrap_err();
        assert!(err.contains("needs a config.pbtxt"), "{err}");
        let err = package(&odd, &table(), Some("candle")).unwrap_err();
        assert!(err.contains("is a folder, not a single file"), "{err}");
    }

    #[test]
    fn a_triton_model_folder_gives_its_newest_version_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for version in ["1", "3", "notes"] {
            std::fs::create_dir_all(root.join(version)).unwrap();
        }
        std::fs::write(root.join("1/model.onnx"), b"old").unwrap();
        std::fs::write(root.join("3/net.onnx"), b"new").unwrap();
        std::fs::write(root.join("3/net.onnx.data"), b"weights").unwrap();
        std::fs::write(
            root.join(CONFIG_FILE),
            "platform: \"onnxruntime_onnx\" default_model_filename: \"net.onnx\"",
        )
        .unwrap();
        let files = package(root, &table(), None).unwrap();
        assert_eq!(
            names(&files),
            ["config.pbtxt", "model.onnx", "net.onnx.data"]
        );
        assert_eq!(files[1].path, root.join("3/net.onnx"));

        std::fs::write(root.join("3/model.pt"), b"torchscript").unwrap();
        std::fs::write(root.join(CONFIG_FILE), "platform: \"pytorch_libtorch\"").unwrap();
        let err = package(root, &table(), None).unwrap_err();
        assert!(
            err.contains("needs a config.pbtxt that lists its inputs"),
            "{err}"
        );
        std::fs::write(
            root.join(CONFIG_FILE),
            "backend: \"pytorch\" input [ { name: \"INPUT__0\" } ] output [ { name: \"OUTPUT__0\" } ]",
        )
        .unwrap();
        let files = package(root, &table(), None).unwrap();
        assert_eq!(
            names(&files),
            ["config.pbtxt", "model.pt", "net.onnx", "net.onnx.data"]
        );

        std::fs::write(root.join(CONFIG_FILE), "max_batch_size: {").unwrap();
        let err = package(root, &table(), None).unwrap_err();
        assert!(err.contains("not valid protobuf text format"), "{err}");
    }

    #[test]
    fn a_runtime_folder_is_pushed_whole_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hf = dir.path().join("encoder");
        std::fs::create_dir_all(hf.join("1_Pooling")).unwrap();
        for file in ["config.json", "model.safetensors", "1_Pooling/config.json"] {
            std::fs::write(hf.join(file), b"{}").unwrap();
        }
        let files = package(&hf, &table(), None).unwrap();
        assert_eq!(
            names(&files),
            ["1_Pooling/config.json", "config.json", "model.safetensors"]
        );

        let empty = dir.path().join("empty");
        std::fs::create_dir_all(empty.join("1")).unwrap();
        std::fs::write(empty.join("1/readme.txt"), b"no model").unwrap();
        let err = package(&empty, &table(), None).unwrap_err();
        assert!(
            err.contains("no runtime recognises the model files"),
            "{err}"
        );
    }
}
