//! Configuration: the TOML file users write (`raw`), checked and turned into
//! the model the gateway runs on (`model`). Every problem in a file is
//! reported at once, each with its line, column and dotted key.

mod locate;
pub mod model;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::fmt;
use std::path::Path;

pub use model::*;
pub use validate::{system_lookup, Lookup};

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line in the file; 0 when the problem has no position (the
    /// file could not be read).
    pub line: usize,
    /// 1-based column (in characters); 0 when `line` is 0.
    pub column: usize,
    /// Dotted path of the key, e.g. `pool[1].servers[0].addr`; empty for a
    /// TOML syntax error.
    pub key: String,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    /// One line per problem: `{file}:{line}:{column}: {key}: {message}`;
    /// the `{key}: ` part is left out when there is no key (a TOML syntax
    /// error) and `:{line}:{column}` when there is no position.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.line == 0 {
                write!(f, "{}: ", self.file)?;
            } else {
                write!(f, "{}:{}:{}: ", self.file, p.line, p.column)?;
            }
            if !p.key.is_empty() {
                write!(f, "{}: ", p.key)?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Parses and validates config `text`; `path_for_messages` names the file in
/// errors.
pub fn parse(path_for_messages: &str, text: &str) -> Result<Config, ConfigError> {
    parse_with(path_for_messages, text, &validate::system_lookup)
}

/// `parse`, looking host names up with `lookup` (tests and fuzzing pass
/// one that never touches the network).
pub fn parse_with(
    path_for_messages: &str,
    text: &str,
    lookup: &validate::Lookup,
) -> Result<Config, ConfigError> {
    let error = |problems| ConfigError {
        file: path_for_messages.to_owned(),
        problems,
    };
    let raw: raw::RawConfig =
        toml::from_str(text).map_err(|e| error(vec![locate::serde_problem(text, &e)]))?;
    validate::validate(text, &raw, lookup).map_err(error)
}

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&file, &text),
        Err(e) => Err(ConfigError {
            problems: vec![ConfigProblem {
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read config file '{file}': {e}"),
            }],
            file,
        }),
    }
}
