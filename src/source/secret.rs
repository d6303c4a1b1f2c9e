//! Secret values in source configuration.
//!
//! A [`SecretString`] is what the config file holds: a literal, or a
//! reference to an environment variable (`{ env = "VAR" }`) or a file
//! (`{ file = "path" }`). Validation resolves it into a [`Secret`]. Neither
//! ever prints its value: `Debug` and `Display` show `***`, and serializing a
//! literal writes `"***"` so a dumped config cannot leak it.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::ConfigError;

/// A secret as written in the configuration (literal, env var or file).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Literal(String),
    Env(String),
    File(PathBuf),
}

impl SecretString {
    /// Given inline (not a reference to an env var or a file): such a value
    /// serializes as `***`, so it cannot be stored and read back.
    pub fn is_literal(&self) -> bool {
        matches!(self.0, Repr::Literal(_))
    }

    /// A secret given inline.
    pub fn literal(value: impl Into<String>) -> Self {
        SecretString(Repr::Literal(value.into()))
    }

    /// A secret read from an environment variable at validation time.
    pub fn env(variable: impl Into<String>) -> Self {
        SecretString(Repr::Env(variable.into()))
    }

    /// A secret read from a file at validation time (one trailing newline is
    /// removed, as editors and `echo` add one).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        SecretString(Repr::File(path.into()))
    }

    /// Reads the secret. `field` names the config field in errors; errors
    /// never contain the value.
    pub fn resolve(&self, field: &str) -> Result<Secret, ConfigError> {
        let value = match &self.0 {
            Repr::Literal(v) => v.clone(),
            Repr::Env(var) => std::env::var(var).map_err(|e| {
                let why = match e {
                    std::env::VarError::NotPresent => "is not set",
                    std::env::VarError::NotUnicode(_) => "is not valid unicode",
                };
                ConfigError::invalid(field, format!("environment variable {var} {why}"))
            })?,
            Repr::File(path) => {
                let mut text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::invalid(
                        field,
                        format!("cannot read secret file {}: {e}", path.display()),
                    )
                })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
        };
        if value.is_empty() {
            return Err(ConfigError::invalid(field, "secret is empty"));
        }
        Ok(Secret(value))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A secret is a string (shown as `***` once read), `{ "env": "VAR" }` or
/// `{ "file": "path" }`.
impl schemars::JsonSchema for SecretString {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "a secret: a literal string (answered as ***), or a reference to an environment variable or a file",
            "oneOf": [
                { "type": "string" },
                { "type": "object", "required": ["env"], "properties": { "env": { "type": "string" } }, "additionalProperties": false },
                { "type": "object", "required": ["file"], "properties": { "file": { "type": "string" } }, "additionalProperties": false }
            ]
        })
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match &self.0 {
            Repr::Literal(_) => serializer.serialize_str("***"),
            Repr::Env(var) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("env", var)?;
                map.end()
            }
            Repr::File(path) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("file", path)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = SecretString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string, { env = "VAR" } or { file = "path" }"#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretString, E> {
                Ok(SecretString::literal(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretString, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(
                        r#"expected { env = "VAR" } or { file = "path" }"#,
                    ));
                };
                let secret = match key.as_str() {
                    "env" => SecretString::env(map.next_value::<String>()?),
                    "file" => SecretString::file(map.next_value::<PathBuf>()?),
                    other => return Err(de::Error::unknown_field(other, &["env", "file"])),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "unexpected key `{extra}`: a secret reference has exactly one of `env`, `file`"
                    )));
                }
                Ok(secret)
            }
        }

        deserializer.deserialize_any(SecretVisitor)
    }
}

/// A resolved secret value. Only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Holder {
        s: SecretString,
    }

    #[test]
    fn parses_literal_env_and_file_forms() {
        let h: Holder = toml::from_str(r#"s = "hunter2""#).unwrap();
        assert_eq!(h.s, SecretString::literal("hunter2"));
        let h: Holder = toml::from_str(r#"s = { env = "HUBFLOW_TEST_X" }"#).unwrap();
        assert_eq!(h.s, SecretString::env("HUBFLOW_TEST_X"));
        let h: Holder = toml::from_str(r#"s = { file = "/run/secrets/x" }"#).unwrap();
        assert_eq!(h.s, SecretString::file("/run/secrets/x"));
        assert!(toml::from_str::<Holder>(r#"s = { vault = "x" }"#).is_err());
        assert!(toml::from_str::<Holder>(r#"s = { env = "A", file = "b" }"#).is_err());
    }

    #[test]
    fn never_prints_or_serializes_a_literal() {
        let h = Holder {
            s: SecretString::literal("hunter2"),
        };
        assert!(!format!("{h:?}").contains("hunter2"));
        assert_eq!(h.s.to_string(), "***");
        assert!(!toml::to_string(&h).unwrap().contains("hunter2"));
        let resolved = h.s.resolve("auth.token").unwrap();
        assert_eq!(resolved.expose(), "hunter2");
        assert_eq!(format!("{resolved:?}"), "***");
    }

    #[test]
    fn resolves_files_and_reports_missing_sources_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(
            SecretString::file(&path).resolve("f").unwrap().expose(),
            "s3cret"
        );
        let err = SecretString::env("HUBFLOW_SURELY_UNSET_VAR_1234")
            .resolve("auth.password")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("auth.password:"), "{err}");
        assert!(err.contains("HUBFLOW_SURELY_UNSET_VAR_1234"), "{err}");
        let err = SecretString::file(dir.path().join("missing"))
            .resolve("auth.token")
            .unwrap_err();
        assert!(err.to_string().starts_with("auth.token:"));
    }
}
