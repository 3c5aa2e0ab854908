//! API credentials: a SecretId, a SecretKey and an optional STS session token. They come from the
//! environment or from a file, and never show in `Debug`, `Display` or logs.
//!
//! File formats accepted by [`Credentials::from_path`]:
//! - a **directory**, as a mounted Kubernetes Secret gives it: files `secretID` and `secretKey`
//!   (the keys of the chart's `eks-secret`) and optionally `sessionToken`, each holding one value;
//!   surrounding whitespace (the trailing newline editors add) is ignored;
//! - a **file** of `key=value` lines with the same keys (or the environment variable names
//!   `TENCENTCLOUD_SECRET_ID`, `TENCENTCLOUD_SECRET_KEY`, `TENCENTCLOUD_SESSION_TOKEN`); blank lines and
//!   lines starting with `#` are skipped.

use std::fmt;
use std::path::{Path, PathBuf};

pub const ENV_SECRET_ID: &str = "TENCENTCLOUD_SECRET_ID";
pub const ENV_SECRET_KEY: &str = "TENCENTCLOUD_SECRET_KEY";
pub const ENV_SESSION_TOKEN: &str = "TENCENTCLOUD_SESSION_TOKEN";

const FILE_SECRET_ID: &str = "secretID";
const FILE_SECRET_KEY: &str = "secretKey";
const FILE_SESSION_TOKEN: &str = "sessionToken";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("cannot read credentials from {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: expected key=value")]
    Syntax { path: PathBuf, line: usize },
    #[error("{path} line {line}: unknown key {key:?} (expected secretID, secretKey or sessionToken)")]
    UnknownKey { path: PathBuf, line: usize, key: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A string that must not leak: `Debug` and `Display` print `<redacted>`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The SecretId is shown (it travels in clear in every `Authorization` header and identifies the key
/// in audit logs); the key and the token are not.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub secret_id: String,
    pub secret_key: Secret,
    pub token: Option<Secret>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &self.secret_key)
            .field("token", &self.token)
            .finish()
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = if self.token.is_some() {
            " with session token"
        } else {
            ""
        };
        write!(f, "SecretId {} (key <redacted>{token})", self.secret_id)
    }
}

impl Credentials {
    pub fn new(secret_id: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Self {
            secret_id: secret_id.into(),
            secret_key: Secret::new(secret_key),
            token: None,
        }
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret::new(token));
        self
    }

    /// From `TENCENTCLOUD_SECRET_ID`, `TENCENTCLOUD_SECRET_KEY` and optional `TENCENTCLOUD_SESSION_TOKEN`.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Credentials::from_env`] over any variable lookup, so it can be tested without touching the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let id = lookup(ENV_SECRET_ID).ok_or(Error::Missing(ENV_SECRET_ID))?;
        let key = lookup(ENV_SECRET_KEY).ok_or(Error::Missing(ENV_SECRET_KEY))?;
        let token = lookup(ENV_SESSION_TOKEN);
        Self::validated(id, key, token, [ENV_SECRET_ID, ENV_SECRET_KEY])
    }

    /// From a mounted Secret directory or a `key=value` file (see the module documentation).
    pub fn from_path(path: &Path) -> Result<Self> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let metadata = std::fs::metadata(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if metadata.is_dir() {
            let id = read(&path.join(FILE_SECRET_ID))?;
            let key = read(&path.join(FILE_SECRET_KEY))?;
            let token_path = path.join(FILE_SESSION_TOKEN);
            let token = if token_path.exists() {
                Some(read(&token_path)?)
            } else {
                None
            };
            return Self::validated(id, key, token, [FILE_SECRET_ID, FILE_SECRET_KEY]);
        }
        let (mut id, mut key, mut token) = (None, None, None);
        for (index, line) in read(path)?.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once('=').ok_or(Error::Syntax {
                path: path.to_path_buf(),
                line: index + 1,
            })?;
            let slot = match name.trim() {
                FILE_SECRET_ID | ENV_SECRET_ID => &mut id,
                FILE_SECRET_KEY | ENV_SECRET_KEY => &mut key,
                FILE_SESSION_TOKEN | ENV_SESSION_TOKEN => &mut token,
                other => {
                    return Err(Error::UnknownKey {
                        path: path.to_path_buf(),
                        line: index + 1,
                        key: other.to_string(),
                    });
                }
            };
            *slot = Some(value.to_string());
        }
        let id = id.ok_or(Error::Missing(FILE_SECRET_ID))?;
        let key = key.ok_or(Error::Missing(FILE_SECRET_KEY))?;
        Self::validated(id, key, token, [FILE_SECRET_ID, FILE_SECRET_KEY])
    }

    fn validated(id: String, key: String, token: Option<String>, names: [&'static str; 2]) -> Result<Self> {
        let (id, key) = (id.trim(), key.trim());
        if id.is_empty() {
            return Err(Error::Empty(names[0]));
        }
        if key.is_empty() {
            return Err(Error::Empty(names[1]));
        }
        let token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        Ok(Self {
            secret_id: id.to_string(),
            secret_key: Secret::new(key),
            token: token.map(Secret::new),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";

    #[test]
    fn debug_and_display_never_show_the_key_or_the_token() {
        let credentials = Credentials::new("AKIDEXAMPLE", KEY).with_token("very-secret-token");
        for shown in [
            format!("{credentials:?}"),
            format!("{credentials:#?}"),
            credentials.to_string(),
        ] {
            assert!(!shown.contains(KEY), "{shown}");
            assert!(!shown.contains("very-secret-token"), "{shown}");
            assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        }
        assert_eq!(format!("{}", credentials.secret_key), "<redacted>");
        assert_eq!(credentials.secret_key.expose(), KEY);
    }

    #[test]
    fn credentials_come_from_the_tencentcloud_variables() {
        let env = HashMap::from([
            (ENV_SECRET_ID, "AKIDEXAMPLE"),
            (ENV_SECRET_KEY, KEY),
            (ENV_SESSION_TOKEN, "tok"),
        ]);
        let credentials = Credentials::from_lookup(|name| env.get(name).map(|v| v.to_string())).unwrap();
        assert_eq!(
            credentials,
            Credentials::new("AKIDEXAMPLE", KEY).with_token("tok")
        );
    }

    #[test]
    fn a_missing_or_empty_variable_is_named_in_the_error() {
        let only_id = HashMap::from([(ENV_SECRET_ID, "AKIDEXAMPLE")]);
        let err = Credentials::from_lookup(|name| only_id.get(name).map(|v| v.to_string())).unwrap_err();
        assert_eq!(err.to_string(), "TENCENTCLOUD_SECRET_KEY is not set");
        let blank_key = HashMap::from([(ENV_SECRET_ID, "AKIDEXAMPLE"), (ENV_SECRET_KEY, "  ")]);
        let err = Credentials::from_lookup(|name| blank_key.get(name).map(|v| v.to_string())).unwrap_err();
        assert_eq!(err.to_string(), "TENCENTCLOUD_SECRET_KEY is empty");
    }

    #[test]
    fn a_mounted_secret_directory_is_read_with_trailing_newlines_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secretID"), "AKIDEXAMPLE\n").unwrap();
        std::fs::write(dir.path().join("secretKey"), format!("{KEY}\n")).unwrap();
        assert_eq!(
            Credentials::from_path(dir.path()).unwrap(),
            Credentials::new("AKIDEXAMPLE", KEY)
        );
        std::fs::write(dir.path().join("sessionToken"), "tok\n").unwrap();
        assert_eq!(
            Credentials::from_path(dir.path()).unwrap().token,
            Some(Secret::new("tok"))
        );
    }

    #[test]
    fn a_key_value_file_is_read_and_bad_lines_are_reported_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            format!("# tencent\nsecretID=AKIDEXAMPLE\n\nTENCENTCLOUD_SECRET_KEY={KEY}\n"),
        )
        .unwrap();
        assert_eq!(
            Credentials::from_path(&file).unwrap(),
            Credentials::new("AKIDEXAMPLE", KEY)
        );
        std::fs::write(&file, "secretID=AKIDEXAMPLE\nsecretKey\n").unwrap();
        assert_eq!(
            Credentials::from_path(&file).unwrap_err().to_string(),
            format!("{} line 2: expected key=value", file.display())
        );
        std::fs::write(&file, "secretID=AKIDEXAMPLE\npassword=x\n").unwrap();
        assert!(matches!(
            Credentials::from_path(&file),
            Err(Error::UnknownKey { line: 2, .. })
        ));
        std::fs::write(&file, "secretID=AKIDEXAMPLE\n").unwrap();
        assert!(matches!(
            Credentials::from_path(&file),
            Err(Error::Missing("secretKey"))
        ));
    }

    #[test]
    fn a_missing_path_is_a_read_error_naming_it() {
        let err = Credentials::from_path(Path::new("/nonexistent/tke-credentials")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tke-credentials"), "{err}");
    }
}
