//! Finding bundled files (`models/...`) from wherever a binary runs.
//!
//! A relative path is looked up in the working directory first, then beside
//! the running executable and in up to three folders above it, so a binary
//! copied to a device next to its `models/` folder (`/opt/offramp/bin` +
//! `/opt/offramp/models`) finds it, and so does `target/release/offramp` in
//! a checkout. Nothing falls back to the machine the binary was built on.

use std::path::{Path, PathBuf};

/// How many folders above the executable's own are searched.
const EXE_ANCESTORS: usize = 3;

/// A relative path that is neither under the working directory nor near the
/// executable.
#[derive(Debug, thiserror::Error)]
#[error("{} not found: looked in {}", path.display(), searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
pub struct NotFound {
    pub path: PathBuf,
    pub searched: Vec<PathBuf>,
}

/// Resolves `path` as described in the module docs. Absolute paths and paths
/// that exist as given are returned unchanged (an absolute path that does not
/// exist is left for the caller's own error, which names what it was for).
pub fn find(path: &Path) -> Result<PathBuf, NotFound> {
    if path.is_absolute() || path.exists() {
        return Ok(path.to_path_buf());
    }
    let mut searched = vec![std::env::current_dir().unwrap_or_default()];
    if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        for base in dir.ancestors().take(EXE_ANCESTORS + 1) {
            let candidate = base.join(path);
            if candidate.exists() {
                return Ok(candidate);
            }
            searched.push(base.to_path_buf());
        }
    }
    Err(NotFound { path: path.to_path_buf(), searched })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_existing_and_names_the_places_searched() {
        let here = std::env::current_dir().unwrap();
        let manifest = Path::new("Cargo.toml");
        assert_eq!(find(manifest).unwrap(), manifest);
        assert_eq!(find(&here).unwrap(), here);
        let err = find(Path::new("no/such/bundle-7f3a")).unwrap_err();
        assert!(err.to_string().starts_with("no/such/bundle-7f3a not found: looked in"), "{err}");
        assert!(err.searched.contains(&here), "{err:?}");
        assert!(err.searched.len() > 1, "the executable's folders are searched too: {err:?}");
    }
}
