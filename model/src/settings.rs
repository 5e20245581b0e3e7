//! Layered configuration: a TOML file, then environment variables on top, checked as a whole.
//!
//! `load` reports every problem it can find at once, each with the key path it belongs to:
//! syntax errors (with line and column), keys the program does not know, values of the wrong
//! type, and whatever the type's own [`Validate`] finds. Environment variables override file
//! keys: with prefix `MAINTAINPRO_`, `MAINTAINPRO_API__LISTEN=0.0.0.0:8080` sets `api.listen`.
//! An environment value is read as a TOML value when it parses as one (`8`, `true`, `"x"`,
//! `[1, 2]`) and as a plain string otherwise.

use std::fmt;

use serde::de::DeserializeOwned;

/// A secret read from configuration (a password, a signing key). It never appears in logs,
/// `Debug` output or error messages; `expose` is the one way to the value.
/// The default is empty: a required secret left out is then reported by the section's
/// validation together with every other problem, instead of stopping the parse.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(transparent)]
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
        f.write_str("Secret(***)")
    }
}

/// One problem in a configuration, tied to the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path (`uplink.broker`, `device[0].tag[2].address`), or empty for the file.
    pub path: String,
    pub message: String,
}

/// Every problem found in one configuration source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{} has {n} error{}:",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            if e.path.is_empty() {
                write!(f, "\n  - {}", e.message)?;
            } else {
                write!(f, "\n  - {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// Collects semantic problems while a configuration checks itself.
#[derive(Debug, Default)]
pub struct Report {
    errors: Vec<ConfigError>,
}

impl Report {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks that go beyond types: ranges, references between sections, required combinations.
pub trait Validate {
    fn validate(&self, report: &mut Report);
}

/// Parses `text` (named `source_name` in messages), applies the environment variables that
/// start with `env_prefix`, and builds and validates a `T`.
pub fn load<T, I>(
    source_name: &str,
    text: &str,
    env_prefix: &str,
    env: I,
) -> Result<T, ConfigErrors>
where
    T: DeserializeOwned + Validate,
    I: IntoIterator<Item = (String, String)>,
{
    let fail = |errors| ConfigErrors {
        source_name: source_name.to_owned(),
        errors,
    };
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        fail(vec![ConfigError {
            path: String::new(),
            message: e.to_string().trim_end().to_owned(),
        }])
    })?;
    let mut errors = Vec::new();
    for (key, raw) in env {
        let Some(rest) = key.strip_prefix(env_prefix) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if let Err(message) = set_path(&mut table, &path, parse_env_value(&raw)) {
            errors.push(ConfigError {
                path: path.join("."),
                message: format!("from environment variable {key}: {message}"),
            });
        }
    }
    let mut unknown = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(key_path(&p));
    let de = serde_ignored::Deserializer::new(toml::Value::Table(table), &mut on_unknown);
    let built: Result<T, _> = serde_path_to_error::deserialize(de);
    errors.extend(unknown.into_iter().map(|path| ConfigError {
        path,
        message: "unknown key; check its spelling against the configuration reference".into(),
    }));
    let value = match built {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            errors.push(ConfigError {
                path: if path == "." { String::new() } else { path },
                message: e.into_inner().to_string(),
            });
            return Err(fail(errors));
        }
    };
    let mut report = Report::default();
    value.validate(&mut report);
    errors.extend(report.errors);
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(fail(errors))
    }
}

/// Formats a path like serde_path_to_error does (`device[0].tag[2].name`), so that unknown
/// keys and type errors read alike.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => {
            let parent = key_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    if path.iter().any(String::is_empty) {
        return Err("the variable name has an empty key segment".into());
    }
    let mut here = table;
    for key in parents {
        let entry = here
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = entry
            .as_table_mut()
            .ok_or_else(|| format!("{key} is not a table, so it cannot hold sub-keys"))?;
    }
    here.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Conf {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        nested: Nested,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Nested {
        #[serde(default)]
        flag: bool,
    }

    impl Validate for Conf {
        fn validate(&self, report: &mut Report) {
            if self.port == 1 {
                report.error("port", "port 1 is reserved");
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c: Conf = load(
            "t.toml",
            "name = 'a'\nport = 5",
            "T_",
            env(&[("T_PORT", "7"), ("T_NESTED__FLAG", "true"), ("OTHER", "x")]),
        )
        .unwrap();
        assert_eq!(c.port, 7);
        assert!(c.nested.flag);
        let c: Conf = load("t.toml", "", "T_", env(&[("T_NAME", "plain words")])).unwrap();
        assert_eq!(c.name, "plain words");
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_path() {
        let err = load::<Conf, _>(
            "t.toml",
            "name = 'a'\nprot = 1\n[nested]\nflg = true",
            "T_",
            env(&[]),
        )
        .unwrap_err();
        let mut paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, ["nested.flg", "prot"]);
        assert!(err.to_string().starts_with("t.toml has 2 errors:"), "{err}");
    }

    #[test]
    fn type_errors_name_the_key_and_unknown_keys_still_show() {
        let err = load::<Conf, _>(
            "t.toml",
            "name = 'a'\nbogus = 1\nport = 'x'",
            "T_",
            env(&[]),
        )
        .unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"bogus"), "{err}");
        assert!(paths.contains(&"port"), "{err}");
    }

    #[test]
    fn syntax_errors_give_a_line() {
        let err = load::<Conf, _>("t.toml", "name = 'a'\nport = = 3", "T_", env(&[])).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn semantic_errors_follow_unknown_keys() {
        let err =
            load::<Conf, _>("t.toml", "name = 'a'\nport = 1\nzzz = 0", "T_", env(&[])).unwrap_err();
        assert_eq!(err.errors.len(), 2, "{err}");
    }
}
