//! Hot reload: notices when a config file's contents change and hands back the
//! re-validated config (or why it was refused). Polling the contents, rather
//! than inotify, sees every way editors and config managers replace a file
//! (rename over it, truncate and write, a symlink swap) and costs one small read
//! per interval.

use std::path::{Path, PathBuf};

use crate::{ConfigError, MeshConfig};

/// Re-reads one file on demand; reports each new content once.
#[derive(Debug)]
pub struct Watcher {
    path: PathBuf,
    last: Option<Vec<u8>>,
    missing: bool,
}

/// What a [`Watcher::poll`] found.
#[derive(Debug)]
pub enum Change {
    /// The file changed and is valid.
    Valid(Box<MeshConfig>),
    /// The file changed and is refused: keep the last good config.
    Invalid(ConfigError),
}

impl Watcher {
    /// `current` is the content already in force, so it is not reported again.
    pub fn new(path: &Path, current: Option<Vec<u8>>) -> Self {
        Self { path: path.to_path_buf(), last: current, missing: false }
    }

    /// Reads the file: `None` when its content is what was last seen.
    pub fn poll(&mut self) -> Option<Change> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                // A file briefly missing during a replace is reported once, then
                // reported again only once it reappears with new content.
                if self.missing {
                    return None;
                }
                self.missing = true;
                self.last = None;
                return Some(Change::Invalid(ConfigError::io(&self.path, &e)));
            }
        };
        self.missing = false;
        if self.last.as_deref() == Some(bytes.as_slice()) {
            return None;
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        self.last = Some(bytes);
        Some(match crate::parse(&self.path, &text) {
            Ok(c) => Change::Valid(Box::new(c)),
            Err(e) => Change::Invalid(e),
        })
    }
}
