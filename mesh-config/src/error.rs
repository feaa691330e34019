//! Config errors that say where (file:line:column and field) and how to fix it.

use std::{fmt, path::Path, path::PathBuf};

/// A position in the config file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: u64,
    pub column: u64,
}

impl From<&serde_saphyr::Location> for Location {
    fn from(l: &serde_saphyr::Location) -> Self {
        Self { line: l.line(), column: l.column() }
    }
}

/// Why a config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// Where in the file; `None` when the file as a whole is the problem.
    pub location: Option<Location>,
    /// The field, as a path (`services[0].vips[1]`); empty when not known.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl ConfigError {
    pub(crate) fn at(
        file: &Path,
        loc: Location,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            location: Some(loc),
            field: field.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn io(file: &Path, e: &std::io::Error) -> Self {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => {
                Some("check the path; `sluice config validate FILE` checks a file before use".into())
            }
            std::io::ErrorKind::PermissionDenied => {
                Some("make the file readable by the user running sluice".into())
            }
            _ => None,
        };
        Self {
            file: file.to_path_buf(),
            location: None,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
            hint,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.location {
            write!(f, ":{}:{}", l.line, l.column)?;
        }
        write!(f, ": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (fix: {h})")?;
        }
        Ok(())
    }
}
