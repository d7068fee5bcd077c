//! The pipeline library: the specs in a folder on the server (`--pipeline-library`; for
//! `nexus up`, the examples) that the console offers to submit. Each comes with its folder,
//! the base of its relative `workdir`s, which a browser cannot know: a user picks a pipeline
//! and types only its parameters.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::MAX_SPEC_BYTES;

/// Files listed at most: a library is a handful of pipelines, not a folder of data.
const MAX_ENTRIES: usize = 100;

/// One spec of the library.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// The pipeline's `name` (a KFP pipeline's `pipelineInfo.name`), else the file's stem.
    pub name: String,
    pub file: String,
    pub spec: String,
    /// The folder relative `workdir`s resolve against.
    pub base_dir: PathBuf,
}

/// The `*.yaml`, `*.yml` and `*.json` files directly in `dir`, by file name. A missing
/// folder is an empty library; a file too large, unreadable or not a spec is left out
/// with a warning, so one bad file does not hide the others.
pub fn list(dir: &Path) -> Vec<Entry> {
    let Ok(base) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    let Ok(read) = std::fs::read_dir(&base) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = read
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .take(MAX_ENTRIES)
        .filter_map(|path| match entry(&base, &path) {
            Ok(entry) => Some(entry),
            Err(why) => {
                tracing::warn!(file = %path.display(), %why, "pipeline library file left out");
                None
            }
        })
        .collect()
}

fn entry(base: &Path, path: &Path) -> Result<Entry, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_SPEC_BYTES as u64 {
        return Err(format!(
            "{size} bytes, more than a spec may have ({MAX_SPEC_BYTES})"
        ));
    }
    let spec = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let pipeline = crate::engine::compile(&spec, Some(base)).map_err(|e| e.to_string())?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Entry {
        name: pipeline.name,
        file,
        spec,
        base_dir: base.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_specs_by_file_and_leaves_out_what_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "name: second\nsteps:\n  - name: s\n    command: [true]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "name: first\nsteps:\n  - name: s\n    command: [true]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "steps: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a spec").unwrap();
        std::fs::write(dir.path().join("huge.yaml"), "#".repeat(MAX_SPEC_BYTES + 1)).unwrap();
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();

        let entries = list(dir.path());
        let names: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.file.as_str(), e.name.as_str()))
            .collect();
        assert_eq!(names, [("a.yml", "first"), ("b.yaml", "second")]);
        let base = std::fs::canonicalize(dir.path()).unwrap();
        assert!(entries.iter().all(|e| e.base_dir == base));
        assert!(entries[0].spec.starts_with("name: first"));
    }

    #[test]
    fn a_missing_folder_is_an_empty_library() {
        assert!(list(Path::new("/nonexistent/nexus-pipeline-library")).is_empty());
    }
}
