//! Config files for deployments: TOML whose keys are the long flags
//! (`max-batch = 8`, `deadline = "300ms"`). Flags and `OFFRAMP_*` variables
//! win over the file, the file over the built-in defaults. Relative paths in
//! a file are taken relative to the file's folder.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {}: {source}", path.display())]
    Parse { path: PathBuf, source: toml::de::Error },
}

/// Reads a config file into `T` (which should deny unknown keys, so a typo
/// is an error rather than a silently ignored setting).
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|source| ConfigFileError::Parse { path: path.to_path_buf(), source })
}

/// `p` relative to the folder of the config file `file`, unless absolute.
pub fn relative_to(file: &Path, p: PathBuf) -> PathBuf {
    match file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct Sample {
        max_batch: Option<usize>,
        #[serde(default, deserialize_with = "crate::units::serde::duration")]
        deadline: Option<std::time::Duration>,
    }

    #[test]
    fn reads_flags_spelling_and_names_errors() {
        let dir = std::env::temp_dir().join(format!("offramp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "max-batch = 8\ndeadline = \"300ms\"\n").unwrap();
        let s: Sample = read_toml(&f).unwrap();
        assert_eq!(s, Sample { max_batch: Some(8), deadline: Some(std::time::Duration::from_millis(300)) });
        std::fs::write(&f, "max-bach = 8\n").unwrap();
        let e = read_toml::<Sample>(&f).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("max-bach"), "{e}");
        std::fs::write(&f, "deadline = \"soon\"\n").unwrap();
        let e = read_toml::<Sample>(&f).unwrap_err().to_string();
        assert!(e.contains("does not start with a number"), "{e}");
        assert_eq!(relative_to(&f, "m".into()), dir.join("m"));
        assert_eq!(relative_to(&f, "/abs".into()), PathBuf::from("/abs"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
