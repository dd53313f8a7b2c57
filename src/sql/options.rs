//! `WITH (key = value, ...)` option bags of CREATE STREAM / CREATE SINK (sql layer).
//!
//! Each consumer (the stream definition, then its connector) takes the keys it knows;
//! whatever is left over is a mistake the user must hear about by name, with the list
//! of valid keys, rather than a silently ignored typo (the way Arroyo rejects leftover
//! options).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Position, Result};

/// One option value, as written, with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct OptionValue {
    pub value: String,
    pub position: Position,
}

/// The options of one statement. Keys are case-insensitive and stored lowercase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    values: BTreeMap<String, OptionValue>,
    /// Keys taken so far, to list as valid when a leftover key is rejected.
    known: Vec<&'static str>,
    /// Where the WITH clause starts, for errors about missing keys.
    pub position: Position,
}

impl Options {
    pub fn new(position: Position) -> Self {
        Options {
            position,
            ..Default::default()
        }
    }

    /// Adds a key; a key given twice is an error.
    pub fn insert(&mut self, key: &str, value: String, position: Position) -> Result<()> {
        let key = key.to_ascii_lowercase();
        if self.values.contains_key(&key) {
            return Err(Error::user_at(
                format!("option '{key}' is given twice"),
                position,
            ));
        }
        self.values.insert(key, OptionValue { value, position });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Iterates the options left, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &OptionValue)> {
        self.values.iter()
    }

    /// Takes a key if present.
    pub fn take(&mut self, key: &'static str) -> Option<OptionValue> {
        self.known.push(key);
        self.values.remove(key)
    }

    pub fn take_string(&mut self, key: &'static str) -> Option<String> {
        self.take(key).map(|v| v.value)
    }

    pub fn require_string(&mut self, key: &'static str, what: &str) -> Result<String> {
        let position = self.position;
        self.take_string(key)
            .ok_or_else(|| Error::user_at(format!("{what} needs option '{key}'"), position))
    }

    pub fn take_u64(&mut self, key: &'static str) -> Result<Option<u64>> {
        self.take_parsed(key, "a whole number", |s| {
            s.replace('_', "").parse::<u64>().ok()
        })
    }

    pub fn take_f64(&mut self, key: &'static str) -> Result<Option<f64>> {
        self.take_parsed(key, "a number", |s| {
            s.parse::<f64>().ok().filter(|f| f.is_finite())
        })
    }

    pub fn take_bool(&mut self, key: &'static str) -> Result<Option<bool>> {
        self.take_parsed(key, "true or false", |s| {
            match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Some(true),
                "false" | "no" | "off" | "0" => Some(false),
                _ => None,
            }
        })
    }

    pub fn take_duration(&mut self, key: &'static str) -> Result<Option<Duration>> {
        self.take_parsed(
            key,
            "a duration such as '500ms', '5s', '1m' or '2h'",
            parse_duration,
        )
    }

    fn take_parsed<T>(
        &mut self,
        key: &'static str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse(v.value.trim()).map(Some).ok_or_else(|| {
                Error::user_at(
                    format!("option '{key}' must be {expected}, got '{}'", v.value),
                    v.position,
                )
            }),
        }
    }

    /// Replaces `${NAME}` and `${NAME:-default}` in every value with the environment
    /// variable (or the default when it is unset or empty), so one SQL file serves
    /// every deployment: `url = '${REDIS_URL:-redis://127.0.0.1:6379}'`. `$$` is a
    /// literal `$`.
    pub fn expand_env(&mut self) -> Result<()> {
        for (key, v) in self.values.iter_mut() {
            if v.value.contains('$') {
                v.value = expand(&v.value, |name| std::env::var(name).ok())
                    .map_err(|e| Error::user_at(format!("option '{key}': {e}"), v.position))?;
            }
        }
        Ok(())
    }

    /// The first option that reads the environment, if any.
    pub fn env_reference(&self) -> Option<(&str, Position)> {
        self.values
            .iter()
            .find(|(_, v)| v.value.contains("${"))
            .map(|(k, v)| (k.as_str(), v.position))
    }

    /// Fails on the first key nobody took, naming the valid keys of `what`.
    pub fn finish(self, what: &str) -> Result<()> {
        if let Some((key, v)) = self.values.into_iter().next() {
            let mut valid: Vec<&str> = self.known.clone();
            valid.sort_unstable();
            valid.dedup();
            return Err(Error::user_at(
                format!(
                    "unknown option '{key}' for {what}; valid options are: {}",
                    valid.join(", ")
                ),
                v.position,
            ));
        }
        Ok(())
    }
}

/// Parses `500ms`, `5s`, `5 seconds`, `1.5m`, `2h`, `1d`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let ms_per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "millis" | "millisecond" | "milliseconds" => 1.0,
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        _ => return None,
    };
    Some(Duration::from_micros(
        (n * ms_per_unit * 1_000.0).round() as u64
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("5 seconds"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn leftover_keys_are_named() {
        let mut o = Options::new(Position::default());
        o.insert("Path", "a".into(), Position { line: 2, column: 3 })
            .unwrap();
        o.insert("rat", "1".into(), Position { line: 2, column: 9 })
            .unwrap();
        assert_eq!(o.take_string("path").as_deref(), Some("a"));
        let _ = o.take_u64("rate");
        let err = o.finish("connector 'file'").unwrap_err().to_string();
        assert_eq!(
            err,
            "2:9: unknown option 'rat' for connector 'file'; valid options are: path, rate"
        );
    }
}

/// `${NAME}` / `${NAME:-default}` substitution with `lookup`.
fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
            continue;
        }
        let Some(body) = rest.strip_prefix("${") else {
            out.push('$');
            rest = &rest[1..];
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("unclosed '${{' in '{text}'"))?;
        let inner = &body[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("'${{{inner}}}' is not a variable name"));
        }
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                ));
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod env_tests {
    use super::expand;

    #[test]
    fn expands_variables_and_defaults() {
        let env = |n: &str| (n == "HOST").then(|| "redis.local".to_string());
        assert_eq!(
            expand("redis://${HOST}:6379", env).unwrap(),
            "redis://redis.local:6379"
        );
        assert_eq!(expand("${PORT:-6379}", env).unwrap(), "6379");
        assert_eq!(expand("${HOST:-x}/a", env).unwrap(), "redis.local/a");
        assert_eq!(expand("cost $5 and $$", env).unwrap(), "cost $5 and $");
        assert!(
            expand("${NOPE}", env)
                .unwrap_err()
                .contains("NOPE is not set")
        );
        assert!(expand("${A B}", env).is_err());
        assert!(expand("${OPEN", env).is_err());
    }
}
