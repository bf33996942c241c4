//! The load generator's one error type: what went wrong with the
//! configuration (named, so `main.rs` can exit 64 with the setting), or
//! with the run itself.

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag or scenario setting that cannot work; the text names it.
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("report: {0}")]
    Report(String),
}

impl LoadError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> LoadError {
        LoadError::Io {
            what: what.into(),
            source,
        }
    }
}
