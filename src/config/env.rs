//! Environment overrides: `ESG__SECTION__KEY=value` sets `section.key` (and
//! `ESG__SECTION__TABLE__KEY` a key of a nested table), over what the file says.
//!
//! Each override is remembered ([`EnvSource`]) so that an error about its key names the variable
//! the value came from, not a line of the file that does not hold it.

use super::ConfigError;

/// Environment variable prefix of overrides.
pub const ENV_PREFIX: &str = "ESG__";

/// One key set from the environment.
#[derive(Debug, Clone)]
pub(super) struct EnvSource {
    /// The key it sets, e.g. `["esg_api", "rate_limit_per_second"]`.
    pub path: Vec<String>,
    /// The variable, e.g. `ESG__ESG_API__RATE_LIMIT_PER_SECOND`.
    pub var: String,
    /// Its value as written.
    pub raw: String,
    /// True when the value was read as a TOML value other than text (`100`, `true`): if the key
    /// wants text after all (a numeric password), it is set again as the text written.
    pub coerced: bool,
}

impl EnvSource {
    /// True when `key` is the key this variable sets, or inside it (a variable holding an
    /// inline table).
    pub fn covers(&self, key: &[String]) -> bool {
        key.starts_with(&self.path)
    }

    /// `VAR=value`, or just `VAR` when the key holds a secret.
    pub fn shown(&self) -> String {
        if super::is_secret_key(&self.path) {
            self.var.clone()
        } else {
            format!("{}={}", self.var, self.raw)
        }
    }
}

/// Applies every `ESG__...` variable of `env` to `table`, in name order. The value is read as a
/// TOML value when it is one (`100`, `true`, `"x"`), otherwise as text.
pub(super) fn apply(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<EnvSource>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    let mut sources = Vec::with_capacity(vars.len());
    for (var, raw) in vars {
        let mut path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Env {
                var,
                message: "expected ESG__SECTION__KEY (or ESG__SECTION__TABLE__KEY)".into(),
            });
        }
        // librdkafka property names use dots, which environment variable names cannot:
        // ESG__KAFKA__PROPERTIES__SASL_PASSWORD sets kafka.properties."sasl.password".
        if path.len() == 3 && path[0] == "kafka" && path[1] == "properties" {
            path[2] = path[2].replace('_', ".");
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"));
        let coerced = parsed.as_ref().is_some_and(|v| !v.is_str());
        let value = parsed.unwrap_or_else(|| toml::Value::String(raw.clone()));
        set(table, &path, value).map_err(|name| ConfigError::Env {
            var: var.clone(),
            message: format!("`{name}` is not a section"),
        })?;
        sources.push(EnvSource {
            path,
            var,
            raw,
            coerced,
        });
    }
    Ok(sources)
}

/// Sets `path` in `table` to `value`, making the tables on the way; the error is the name of a
/// key on the way that holds a value, not a table.
pub(super) fn set(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), String> {
    let Some((key, tables)) = path.split_last() else {
        return Ok(());
    };
    let mut section = table;
    for name in tables {
        let entry = section
            .entry(name.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(inner) = entry.as_table_mut() else {
            return Err(name.clone());
        };
        section = inner;
    }
    section.insert(key.clone(), value);
    Ok(())
}
