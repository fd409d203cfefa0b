//! oslo.config's INI dialect: the config file given with `-c`, and typed
//! reads of its values.

use std::collections::BTreeMap;

use super::ConfigError;

/// oslo's section of the proxy's own options.
pub(super) const PROXY_SECTION: &str = "zmq_proxy_opts";
/// oslo's section of the ZeroMQ driver's options, shared with the services.
pub(super) const DRIVER_SECTION: &str = "oslo_messaging_zmq";

/// A parsed INI file: section -> key -> value (keys lower-case).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ini {
    sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Ini {
    /// Parses oslo.config's INI dialect: `[section]`, `key = value` or
    /// `key: value`, `#`/`;` comments. Unknown sections and keys are kept and ignored.
    pub fn parse(text: &str) -> Ini {
        let mut ini = Ini::default();
        let mut section = "DEFAULT".to_string();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_string();
                continue;
            }
            let split = line.find(['=', ':']);
            if let Some(pos) = split {
                let key = line[..pos].trim().to_ascii_lowercase();
                let value = line[pos + 1..].trim().to_string();
                ini.sections
                    .entry(section.clone())
                    .or_default()
                    .insert(key, value);
            }
        }
        ini
    }

    /// Value of `key` in `section`, falling back to `[DEFAULT]` as oslo does.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .or_else(|| self.sections.get("DEFAULT").and_then(|s| s.get(key)))
            .map(String::as_str)
    }

    /// `key` of `section` parsed as a `T`; a value that does not parse is an
    /// error naming both.
    pub(super) fn parse_value<T: std::str::FromStr>(
        &self,
        section: &str,
        key: &str,
    ) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(section, key) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|e| ConfigError::invalid(&format!("[{section}] {key}"), v, e)),
        }
    }

    /// `key` of `section` as oslo.config reads a boolean.
    pub(super) fn bool(&self, section: &str, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(section, key) {
            None => Ok(None),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(Some(true)),
                "false" | "no" | "off" | "0" => Ok(Some(false)),
                _ => Err(ConfigError::invalid(
                    &format!("[{section}] {key}"),
                    v,
                    "not a boolean",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_dialect() {
        let ini = Ini::parse("# c\n[DEFAULT]\ndebug = true\n[a]\nKey: v \n; x\n");
        assert_eq!(ini.get("a", "key"), Some("v"));
        assert_eq!(ini.get("a", "debug"), Some("true"));
        assert_eq!(ini.get("b", "key"), None);
    }
}
