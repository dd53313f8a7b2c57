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
