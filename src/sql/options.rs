//! `WITH (key = value, ...)` option bags of CREATE STREAM / CREATE SINK (sql layer).
//!
//! Each consumer (the stream definition, then its connector) takes the keys it knows;
//! whatever is left over is a mistake the user must hear about by name, with the list
//! of valid keys, rather than a silently ignored typo (the way Arroyo rejects leftover
//! options).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Position, Result, closest};

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
    /// Records the keys a connector asks for (see [`Options::parse_connector`]).
    asked: Asked,
}

/// The keys a connector's parser asked for, shared with the copies it makes of the
/// options; in a probe, `finish` stops the parser (nothing after it may run).
#[derive(Debug, Clone, Default)]
struct Asked(Option<Arc<Mutex<Probe>>>);

#[derive(Debug, Default)]
struct Probe {
    keys: Vec<&'static str>,
    stop_at_finish: bool,
}

/// What is recorded is not part of the options' value.
impl PartialEq for Asked {
    fn eq(&self, _: &Self) -> bool {
        true
    }
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
        if let Some(probe) = &self.asked.0 {
            probe.lock().expect("probe lock").keys.push(key);
        }
        self.values.remove(key)
    }

    pub fn take_string(&mut self, key: &'static str) -> Option<String> {
        self.take(key).map(|v| v.value)
    }

    pub fn require_string(&mut self, key: &'static str, what: &str) -> Result<String> {
        let position = self.position;
        if let Some(v) = self.take_string(key) {
            return Ok(v);
        }
        // `conector = …`: the misspelt key is the mistake, not the missing one.
        let typo = self
            .values
            .iter()
            .find(|(k, _)| closest(k, [key]).is_some());
        Err(match typo {
            Some((k, v)) => Error::user_at(
                format!("unknown option '{k}' for {what}; did you mean '{key}'?"),
                v.position,
            ),
            None => Error::user_at(format!("{what} needs option '{key}'"), position),
        })
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
        if let Some(probe) = &self.asked.0
            && probe.lock().expect("probe lock").stop_at_finish
        {
            return Err(Error::internal("option probe stopped at finish"));
        }
        if let Some((key, v)) = self.values.into_iter().next() {
            return Err(unknown_option(&key, v.position, what, &self.known));
        }
        Ok(())
    }

    /// Runs a connector's option parser; `what` names the connector for errors
    /// ("source connector 'mqtt'"). A parser stops at the first required option it
    /// misses, before it reaches [`Options::finish`], so a misspelt required key
    /// (`topic` for `topics`) would be reported as missing: when the parser stopped for
    /// want of a key while a key it does not know was given, the unknown key is
    /// reported instead, at its place, with the valid keys and the one it most likely
    /// meant. The valid keys are learnt from the parser itself: those it asked for,
    /// then those it asks for when run again with each unasked key read as the
    /// missing one (such runs stop at `finish`, so nothing is built from them).
    pub fn parse_connector<T>(
        &self,
        what: &str,
        parse: impl Fn(&Options) -> Result<T>,
    ) -> Result<T> {
        let (result, asked) = self.probe(&parse, false);
        let Err(error) = result else {
            return result;
        };
        let missing = match asked.last() {
            Some(k) if error.is_user() && !self.values.contains_key(*k) => *k,
            _ => return Err(error),
        };
        let mut valid: BTreeSet<&'static str> = self.known.iter().copied().collect();
        valid.extend(&asked);
        let unasked: Vec<&String> = self
            .values
            .keys()
            .filter(|k| !valid.contains(k.as_str()))
            .collect();
        for key in &unasked {
            let mut renamed = self.clone();
            if let Some(v) = renamed.values.remove(*key) {
                renamed.values.insert(missing.to_string(), v);
            }
            valid.extend(renamed.probe(&parse, true).1);
        }
        // The unknown key: the one closest to the missing one, else the first given.
        let mut unknown: Vec<(&String, &OptionValue)> = self
            .values
            .iter()
            .filter(|(k, _)| !valid.contains(k.as_str()))
            .collect();
        unknown.sort_by_key(|(_, v)| (v.position.line, v.position.column));
        let chosen = unknown
            .iter()
            .find(|(k, _)| closest(k, [missing]).is_some())
            .or(unknown.first());
        match chosen {
            Some((key, v)) => {
                let valid: Vec<&str> = valid.into_iter().collect();
                Err(unknown_option(key, v.position, what, &valid))
            }
            None => Err(error),
        }
    }

    /// Runs `parse` on a copy of these options that records the keys it asks for.
    fn probe<T>(
        &self,
        parse: &impl Fn(&Options) -> Result<T>,
        stop_at_finish: bool,
    ) -> (Result<T>, Vec<&'static str>) {
        let probe = Arc::new(Mutex::new(Probe {
            keys: Vec::new(),
            stop_at_finish,
        }));
        let mut copy = self.clone();
        copy.asked = Asked(Some(Arc::clone(&probe)));
        let result = parse(&copy);
        let keys = std::mem::take(&mut probe.lock().expect("probe lock").keys);
        (result, keys)
    }
}

/// `unknown option 'k' for what; did you mean 'x'? valid options are: …`.
fn unknown_option(key: &str, at: Position, what: &str, known: &[&str]) -> Error {
    let mut valid: Vec<&str> = known.to_vec();
    valid.sort_unstable();
    valid.dedup();
    let list = valid.join(", ");
    let message = match closest(key, valid.iter().copied()) {
        Some(k) => {
            format!(
                "unknown option '{key}' for {what}; did you mean '{k}'? Valid options are: {list}"
            )
        }
        None => format!("unknown option '{key}' for {what}; valid options are: {list}"),
    };
    Error::user_at(message, at)
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
            "2:9: unknown option 'rat' for connector 'file'; did you mean 'rate'? Valid \
             options are: path, rate"
        );
    }

    /// A parser like a connector's: `url` and `topics` required, then `qos`.
    fn connector(o: &Options) -> Result<()> {
        let mut o = o.clone();
        let need = |o: &mut Options, key| {
            o.take(key)
                .ok_or_else(|| Error::user_at(format!("needs option '{key}'"), o.position))
        };
        need(&mut o, "url")?;
        need(&mut o, "topics")?;
        let _ = o.take_u64("qos")?;
        o.finish("connector 'c'")
    }

    fn options(pairs: &[(&str, &str)]) -> Options {
        let mut o = Options::new(Position { line: 1, column: 1 });
        for (i, (k, v)) in pairs.iter().enumerate() {
            let at = Position {
                line: 1,
                column: 10 * (i as u64 + 1),
            };
            o.insert(k, v.to_string(), at).unwrap();
        }
        o
    }

    #[test]
    fn a_misspelt_required_key_is_unknown_not_missing() {
        let check = |pairs: &[(&str, &str)]| {
            options(pairs)
                .parse_connector("connector 'c'", connector)
                .map_err(|e| e.to_string())
        };
        // Named with its position, the key meant and every valid key, even those the
        // parser would have asked for only after the missing one (`qos`).
        assert_eq!(
            check(&[("url", "u"), ("qos", "1"), ("topic", "t")]).unwrap_err(),
            "1:30: unknown option 'topic' for connector 'c'; did you mean 'topics'? Valid \
             options are: qos, topics, url"
        );
        // Not close to any key: still the unknown one, not the valid `qos`.
        assert_eq!(
            check(&[("qos", "1"), ("adress", "u"), ("topics", "t")]).unwrap_err(),
            "1:20: unknown option 'adress' for connector 'c'; valid options are: qos, topics, url"
        );
        // Missing with nothing unknown given: missing.
        assert_eq!(
            check(&[("url", "u"), ("qos", "1")]).unwrap_err(),
            "1:1: needs option 'topics'"
        );
        // Another failure is the parser's own.
        assert_eq!(
            check(&[("url", "u"), ("topics", "t"), ("qos", "x")]).unwrap_err(),
            "1:30: option 'qos' must be a whole number, got 'x'"
        );
        assert!(check(&[("url", "u"), ("topics", "t")]).is_ok());
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
