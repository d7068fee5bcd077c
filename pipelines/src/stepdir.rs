//! What a step leaves in its folder, read without following links out of it. A step (a
//! local process, or a pod sharing the work volume) can replace any file or folder it owns
//! by a symbolic link; Nexus reads outputs, removes old ones and writes inputs as its own
//! user, so it never goes through a link below the work root: it would read (and publish
//! as an output), overwrite or delete whatever the link names.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

/// Why a path below the work root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StepFileError {
    #[error("{0} is a symbolic link; Nexus does not follow links in a step's folder")]
    Link(String),
    #[error("{0} is outside the step's folder")]
    Outside(String),
    #[error("{0} is not a regular file")]
    NotAFile(String),
    #[error("{path} is {size} bytes; at most {max} are read")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path, source: std::io::Error) -> StepFileError {
    StepFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Checks that `path` lies below `root` (lexically: no `..`) and that nothing between
/// `root` and `path`, `path` included, is a symbolic link. Components that do not exist
/// yet are fine: whatever creates them creates real folders.
pub fn check(root: &Path, path: &Path) -> Result<(), StepFileError> {
    let outside = || StepFileError::Outside(path.display().to_string());
    let relative = path.strip_prefix(root).map_err(|_| outside())?;
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let Component::Normal(part) = component else {
            return Err(outside());
        };
        current.push(part);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(StepFileError::Link(current.display().to_string()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&current, e)),
        }
    }
    Ok(())
}

/// Whether `path` exists (as itself: a link counts, and is refused later by [`check`]).
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Reads the regular file `path` below `root` as text, refusing links on the way, files
/// other than regular ones (a FIFO would block forever) and files over `max` bytes. `None`
/// when it does not exist.
pub fn read_text(root: &Path, path: &Path, max: u64) -> Result<Option<String>, StepFileError> {
    check(root, path)?;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StepFileError::Link(path.display().to_string()));
        }
        Err(e) => return Err(io(path, e)),
    };
    let meta = file.metadata().map_err(|e| io(path, e))?;
    if !meta.is_file() {
        return Err(StepFileError::NotAFile(path.display().to_string()));
    }
    if meta.len() > max {
        return Err(StepFileError::TooLarge {
            path: path.display().to_string(),
            size: meta.len(),
            max,
        });
    }
    let mut text = String::new();
    // The file may grow after the size check; never read more than the bound.
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| io(path, e))?;
    if text.len() as u64 > max {
        return Err(StepFileError::TooLarge {
            path: path.display().to_string(),
            size: text.len() as u64,
            max,
        });
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_escapes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("step/outputs")).expect("mkdir");
        std::fs::write(root.join("secret"), "s3cr3t").expect("write");
        std::fs::write(root.join("step/outputs/ok"), "fine").expect("write");
        std::os::unix::fs::symlink(root.join("secret"), root.join("step/outputs/x"))
            .expect("symlink");
        std::os::unix::fs::symlink(root, root.join("step/up")).expect("symlink");
        let step = root.join("step");

        assert_eq!(
            read_text(&step, &step.join("outputs/ok"), 100).expect("read"),
            Some("fine".into())
        );
        assert!(
            read_text(&step, &step.join("outputs/missing"), 100)
                .expect("read")
                .is_none()
        );
        for path in [
            step.join("outputs/x"),
            step.join("up/secret"),
            step.join("../secret"),
            root.join("secret"),
        ] {
            let e = read_text(&step, &path, 100).expect_err("refused");
            assert!(
                matches!(e, StepFileError::Link(_) | StepFileError::Outside(_)),
                "{path:?}: {e}"
            );
        }
        let e = read_text(&step, &step.join("outputs/ok"), 2).expect_err("too large");
        assert!(matches!(e, StepFileError::TooLarge { .. }), "{e}");
    }
}
