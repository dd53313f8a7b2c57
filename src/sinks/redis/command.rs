//! The `commands` option of the `redis` sink, parsed (sinks layer, at CREATE SINK):
//! text such as `HSET device:{deviceId} temperature ts={ts}; PUBLISH updates {*}`
//! becomes a list of [`Spec`]s, each a Redis command whose arguments are
//! [`Template`]s filled in per row by `render.rs`.
//!
//! Everything that can be checked without the query's schema is checked here, so a
//! misspelt verb or a missing argument fails `CREATE SINK`, not the first write:
//! the verb, the arity, the keywords (`EX`, `KEEP`, `MAXLEN`, `ONCE`) and their
//! numbers, and the key rules (no `{*}` in a key, a separator between two
//! placeholders). Column names are checked on the first batch of each schema.
//!
//! Syntax of one command: tokens separated by whitespace; `"…"` quotes a token
//! holding spaces or `;` (`\"` and `\\` inside); `{column}` is a placeholder, `{*}`
//! the whole row as JSON, `{{` and `}}` are literal braces. Commands are separated by
//! `;`. Verbs and keywords are case-insensitive, column names are not.

use std::fmt;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// `{name}`: the value of a column of the row.
    Column(String),
    /// `{*}`: the whole row as a JSON object.
    Row,
}

/// An argument as written: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pub pieces: Vec<Piece>,
    /// Whether the token was (partly) quoted: quoted tokens are never keywords.
    quoted: bool,
}

impl Template {
    /// The literal text, when the template has no placeholder.
    pub fn literal(&self) -> Option<String> {
        let mut s = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => s.push_str(t),
                _ => return None,
            }
        }
        Some(s)
    }

    /// The column, when the template is exactly one `{column}`.
    pub fn single_column(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [Piece::Column(c)] => Some(c),
            _ => None,
        }
    }

    /// True for an unquoted token spelling `word` (any case).
    fn is_keyword(&self, word: &str) -> bool {
        !self.quoted && self.literal().is_some_and(|l| l.eq_ignore_ascii_case(word))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.pieces {
            match p {
                Piece::Text(t) => write!(f, "{}", t.replace('{', "{{").replace('}', "}}"))?,
                Piece::Column(c) => write!(f, "{{{c}}}")?,
                Piece::Row => f.write_str("{*}")?,
            }
        }
        Ok(())
    }
}

/// A field of an HSET or XADD: a column under its own name, or `name={template}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Column(String),
    Named(String, Template),
}

/// One supported command, its arguments still templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SET key value [EX seconds]`
    Set {
        key: Template,
        value: Template,
        ex_seconds: Option<u64>,
    },
    /// `INCRBY key amount [ONCE id]`
    IncrBy {
        key: Template,
        amount: Template,
        once: Option<Template>,
    },
    /// `HINCRBY key field amount [ONCE id]`
    HIncrBy {
        key: Template,
        field: Template,
        amount: Template,
        once: Option<Template>,
    },
    /// `HSET key [col ...] [field={template} ...]`; no fields: every column.
    HSet { key: Template, fields: Vec<Field> },
    /// `ZADD key score member [KEEP n]`
    ZAdd {
        key: Template,
        score: Template,
        member: Template,
        keep: Option<u64>,
    },
    /// `PUBLISH channel message`
    Publish {
        channel: Template,
        message: Template,
    },
    /// `XADD key [MAXLEN [~] n] [*] [col ...] [field={template} ...]`; no fields:
    /// every column.
    XAdd {
        key: Template,
        maxlen: Option<(bool, u64)>,
        fields: Vec<Field>,
    },
}

/// A parsed command with where it came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub command: Command,
    /// 1-based position in the `commands` option.
    pub number: usize,
    /// The command as written (whitespace collapsed).
    pub text: String,
}

/// The forms, as shown to the user when a command is wrong.
const FORMS: [(&str, &str); 7] = [
    ("SET", "SET key value [EX seconds]"),
    ("INCRBY", "INCRBY key amount [ONCE id]"),
    ("HINCRBY", "HINCRBY key field amount [ONCE id]"),
    ("HSET", "HSET key [column ...] [field={template} ...]"),
    ("ZADD", "ZADD key score member [KEEP n]"),
    ("PUBLISH", "PUBLISH channel message"),
    (
        "XADD",
        "XADD key [MAXLEN [~] n] [column ...] [field={template} ...]",
    ),
];

fn form(verb: &str) -> &'static str {
    FORMS
        .iter()
        .find(|(v, _)| *v == verb)
        .map(|(_, f)| *f)
        .unwrap_or("")
}

/// Parses the `commands` option. Errors are sentences for the user; the caller
/// attaches the option's position.
pub fn parse_commands(text: &str) -> Result<Vec<Spec>, String> {
    let mut specs = Vec::new();
    for (i, tokens) in tokenize(text)?.into_iter().enumerate() {
        let number = i + 1;
        let written = tokens
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let command = parse_command(tokens)
            .map_err(|e| format!("command {number} (`{written}`) of the redis sink: {e}"))?;
        specs.push(Spec {
            command,
            number,
            text: written,
        });
    }
    if specs.is_empty() {
        return Err(
            "option 'commands' of the redis sink holds no command; write e.g. \
                    'SET latest:{deviceId} {*}'"
                .into(),
        );
    }
    Ok(specs)
}

fn parse_command(tokens: Vec<Template>) -> Result<Command, String> {
    let mut it = tokens.into_iter();
    let verb_token = it.next().ok_or("empty command")?;
    let verb = verb_token
        .literal()
        .filter(|_| !verb_token.quoted)
        .map(|v| v.to_ascii_uppercase())
        .ok_or_else(|| format!("the command name '{verb_token}' must be plain text"))?;
    let args: Vec<Template> = it.collect();
    let usage = || {
        let f = form(&verb);
        format!("wrong arguments; expected `{f}`")
    };
    let command = match verb.as_str() {
        "SET" => {
            let (key, value, rest) = match args.as_slice() {
                [k, v, rest @ ..] => (k, v, rest),
                _ => return Err(usage()),
            };
            let ex_seconds = match rest {
                [] => None,
                [kw, n] if kw.is_keyword("EX") => Some(positive(n, "EX seconds")?),
                _ => return Err(usage()),
            };
            Command::Set {
                key: key_template(key, "key")?,
                value: value.clone(),
                ex_seconds,
            }
        }
        "INCRBY" => {
            let (key, amount, rest) = match args.as_slice() {
                [k, a, rest @ ..] => (k, a, rest),
                _ => return Err(usage()),
            };
            Command::IncrBy {
                key: key_template(key, "key")?,
                amount: number(amount, "amount", true)?,
                once: once(rest).ok_or_else(usage)??,
            }
        }
        "HINCRBY" => {
            let (key, field, amount, rest) = match args.as_slice() {
                [k, f, a, rest @ ..] => (k, f, a, rest),
                _ => return Err(usage()),
            };
            Command::HIncrBy {
                key: key_template(key, "key")?,
                field: field.clone(),
                amount: number(amount, "amount", true)?,
                once: once(rest).ok_or_else(usage)??,
            }
        }
        "HSET" => {
            let (key, rest) = args.split_first().ok_or_else(usage)?;
            Command::HSet {
                key: key_template(key, "key")?,
                fields: fields(rest)?,
            }
        }
        "ZADD" => {
            let (key, score, member, rest) = match args.as_slice() {
                [k, s, m, rest @ ..] => (k, s, m, rest),
                _ => return Err(usage()),
            };
            let keep = match rest {
                [] => None,
                [kw, n] if kw.is_keyword("KEEP") => Some(positive(n, "KEEP n")?),
                _ => return Err(usage()),
            };
            Command::ZAdd {
                key: key_template(key, "key")?,
                score: number(score, "score", false)?,
                member: member.clone(),
                keep,
            }
        }
        "PUBLISH" => match args.as_slice() {
            [channel, message] => Command::Publish {
                channel: key_template(channel, "channel")?,
                message: message.clone(),
            },
            _ => return Err(usage()),
        },
        "XADD" => {
            let (key, mut rest) = args.split_first().ok_or_else(usage)?;
            let mut maxlen = None;
            if let Some((kw, after)) = rest.split_first()
                && kw.is_keyword("MAXLEN")
            {
                let (approx, after) = match after.split_first() {
                    Some((t, after)) if t.is_keyword("~") => (true, after),
                    _ => (false, after),
                };
                let (n, after) = after.split_first().ok_or_else(usage)?;
                maxlen = Some((approx, positive(n, "MAXLEN n")?));
                rest = after;
            }
            // Redis spells the entry id; only `*` (Redis assigns it) makes sense for
            // rows, so it may be written or left out.
            if let Some((id, after)) = rest.split_first()
                && id.is_keyword("*")
            {
                rest = after;
            }
            Command::XAdd {
                key: key_template(key, "key")?,
                maxlen,
                fields: fields(rest)?,
            }
        }
        other => {
            let verbs: Vec<&str> = FORMS.iter().map(|(v, _)| *v).collect();
            return Err(format!(
                "unknown command '{other}'; the redis sink supports {}",
                verbs.join(", ")
            ));
        }
    };
    Ok(command)
}

/// `[ONCE id]`: `None` when the tokens are something else.
fn once(rest: &[Template]) -> Option<Result<Option<Template>, String>> {
    match rest {
        [] => Some(Ok(None)),
        [kw, id] if kw.is_keyword("ONCE") => Some(key_template(id, "ONCE id").map(Some)),
        _ => None,
    }
}

fn positive(t: &Template, what: &str) -> Result<u64, String> {
    t.literal()
        .and_then(|l| l.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{what} must be a whole number above 0, got '{t}'"))
}

/// A numeric argument: a literal number, or one column (its type is checked on the
/// first batch, see `render.rs`), never text around a placeholder.
fn number(t: &Template, what: &str, integer: bool) -> Result<Template, String> {
    if t.single_column().is_some() {
        return Ok(t.clone());
    }
    let ok = t.literal().is_some_and(|l| {
        if integer {
            l.parse::<i64>().is_ok()
        } else {
            l.parse::<f64>().is_ok_and(|f| !f.is_nan())
        }
    });
    if ok {
        Ok(t.clone())
    } else {
        let kind = if integer {
            "a whole number"
        } else {
            "a number"
        };
        Err(format!("the {what} '{t}' must be {kind} or one {{column}}"))
    }
}

/// HSET/XADD fields: `column` or `field={template}`.
fn fields(tokens: &[Template]) -> Result<Vec<Field>, String> {
    tokens
        .iter()
        .map(|t| {
            let Some(Piece::Text(first)) = t.pieces.first() else {
                return Err(format!(
                    "field '{t}' must be a column name or field={{template}}"
                ));
            };
            match first.split_once('=') {
                Some((name, after)) => {
                    if name.is_empty() {
                        return Err(format!("field '{t}' has no name before '='"));
                    }
                    let mut pieces = t.pieces.clone();
                    if after.is_empty() {
                        pieces.remove(0);
                    } else {
                        pieces[0] = Piece::Text(after.to_string());
                    }
                    Ok(Field::Named(
                        name.to_string(),
                        Template {
                            pieces,
                            quoted: t.quoted,
                        },
                    ))
                }
                None if t.pieces.len() == 1 => Ok(Field::Column(first.clone())),
                None => Err(format!(
                    "field '{t}' must be a column name or field={{template}}"
                )),
            }
        })
        .collect()
}

/// Checks the rules that make rendered keys unambiguous (see `render::escape_key`):
/// a key may not hold the whole row, and two placeholders need text between them,
/// or `{a}{b}` could not tell `"ab" + "c"` from `"a" + "bc"`.
fn key_template(t: &Template, what: &str) -> Result<Template, String> {
    if t.pieces.contains(&Piece::Row) {
        return Err(format!("{{*}} (the whole row) cannot be part of a {what}"));
    }
    for pair in t.pieces.windows(2) {
        if let [Piece::Column(a), Piece::Column(b)] = pair {
            return Err(format!(
                "the {what} '{t}' puts {{{b}}} right after {{{a}}}, so different values could \
                 give the same {what}; separate them, e.g. {{{a}}}:{{{b}}}"
            ));
        }
    }
    Ok(t.clone())
}

/// Splits the option into commands, each a list of argument templates.
fn tokenize(text: &str) -> Result<Vec<Vec<Template>>, String> {
    let mut commands: Vec<Vec<Template>> = Vec::new();
    let mut command: Vec<Template> = Vec::new();
    let mut token: Option<Template> = None;
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;

    fn push_text(token: &mut Option<Template>, c: char) {
        let t = token.get_or_insert_with(Template::default);
        match t.pieces.last_mut() {
            Some(Piece::Text(s)) => s.push(c),
            _ => t.pieces.push(Piece::Text(c.to_string())),
        }
    }

    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                let t = token.get_or_insert_with(Template::default);
                t.quoted = true;
            }
            '\\' if in_quotes => match chars.next() {
                Some(e) => push_text(&mut token, e),
                None => return Err("a quoted token ends with '\\'".into()),
            },
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                push_text(&mut token, '{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                push_text(&mut token, '}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("'{{{name}' has no closing '}}'")),
                    }
                }
                let name = name.trim();
                let piece = match name {
                    "" => return Err("'{}' names no column; write {column} or {*}".into()),
                    "*" => Piece::Row,
                    n => Piece::Column(n.to_string()),
                };
                token
                    .get_or_insert_with(Template::default)
                    .pieces
                    .push(piece);
            }
            '}' => return Err("'}' without '{'; write '}}' for a literal brace".into()),
            c if in_quotes => {
                // An empty quoted string is still a token.
                push_text(&mut token, c);
            }
            ';' => {
                command.extend(token.take());
                if !command.is_empty() {
                    commands.push(std::mem::take(&mut command));
                }
            }
            c if c.is_whitespace() => command.extend(token.take()),
            c => push_text(&mut token, c),
        }
    }
    if in_quotes {
        return Err("a '\"' is not closed".into());
    }
    command.extend(token.take());
    if !command.is_empty() {
        commands.push(command);
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(c: &str) -> Piece {
        Piece::Column(c.into())
    }
    fn text(t: &str) -> Piece {
        Piece::Text(t.into())
    }
    fn tpl(pieces: Vec<Piece>) -> Template {
        Template {
            pieces,
            quoted: false,
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let specs = parse_commands(
            "INCRBY climate:{climate} 1;
             ZADD SensorData {ts} {deviceId} KEEP 10000;
             HSET {deviceId} temperature humidity timestamp={ts};
             PUBLISH Warnings {*};",
        )
        .unwrap();
        assert_eq!(specs.len(), 4);
        assert_eq!(
            specs[0].command,
            Command::IncrBy {
                key: tpl(vec![text("climate:"), col("climate")]),
                amount: tpl(vec![text("1")]),
                once: None,
            }
        );
        assert_eq!(
            specs[1].command,
            Command::ZAdd {
                key: tpl(vec![text("SensorData")]),
                score: tpl(vec![col("ts")]),
                member: tpl(vec![col("deviceId")]),
                keep: Some(10000),
            }
        );
        assert_eq!(
            specs[2].command,
            Command::HSet {
                key: tpl(vec![col("deviceId")]),
                fields: vec![
                    Field::Column("temperature".into()),
                    Field::Column("humidity".into()),
                    Field::Named("timestamp".into(), tpl(vec![col("ts")])),
                ],
            }
        );
        assert_eq!(
            specs[3].command,
            Command::Publish {
                channel: tpl(vec![text("Warnings")]),
                message: tpl(vec![Piece::Row]),
            }
        );
        assert_eq!(specs[3].number, 4);
        assert_eq!(
            specs[2].text,
            "HSET {deviceId} temperature humidity timestamp={ts}"
        );
    }

    #[test]
    fn quotes_braces_and_keywords() {
        let specs = parse_commands(
            r#"set "a b;{x}" "say \"hi\"" ex 60; XADD s MAXLEN ~ 100 * a "MAXLEN"; SET k {{lit}}"#,
        )
        .unwrap();
        match &specs[0].command {
            Command::Set {
                key,
                value,
                ex_seconds,
            } => {
                assert_eq!(key.pieces, vec![text("a b;"), col("x")]);
                assert_eq!(value.literal().as_deref(), Some("say \"hi\""));
                assert_eq!(*ex_seconds, Some(60));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            specs[1].command,
            Command::XAdd {
                key: tpl(vec![text("s")]),
                maxlen: Some((true, 100)),
                fields: vec![Field::Column("a".into()), Field::Column("MAXLEN".into())],
            }
        );
        match &specs[2].command {
            Command::Set { value, .. } => assert_eq!(value.literal().as_deref(), Some("{lit}")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn once_counters() {
        let specs =
            parse_commands("INCRBY c:{k} {n} ONCE {window_start}; HINCRBY h {f} 1 once {w}")
                .unwrap();
        assert!(
            matches!(&specs[0].command, Command::IncrBy { once: Some(t), .. }
            if t.single_column() == Some("window_start"))
        );
        assert!(
            matches!(&specs[1].command, Command::HIncrBy { once: Some(t), .. }
            if t.single_column() == Some("w"))
        );
    }

    #[test]
    fn mistakes_name_the_command_and_its_form() {
        let err = |s: &str| parse_commands(s).unwrap_err();
        assert_eq!(
            err("SET a 1; LPUSH l {x}"),
            "command 2 (`LPUSH l {x}`) of the redis sink: unknown command 'LPUSH'; the redis sink \
             supports SET, INCRBY, HINCRBY, HSET, ZADD, PUBLISH, XADD"
        );
        assert_eq!(
            err("ZADD z {ts}"),
            "command 1 (`ZADD z {ts}`) of the redis sink: wrong arguments; expected `ZADD key \
             score member [KEEP n]`"
        );
        assert!(err("SET k v EX soon").contains("EX seconds must be a whole number above 0"));
        assert!(err("INCRBY k 1 TWICE x").contains("expected `INCRBY key amount [ONCE id]`"));
        assert!(err("ZADD z 1 m KEEP 0").contains("KEEP n must be a whole number above 0"));
        assert!(err("SET {a}{b} 1").contains("separate them, e.g. {a}:{b}"));
        assert!(err("SET k:{*} 1").contains("{*} (the whole row) cannot be part of a key"));
        assert!(err("SET k {x").contains("has no closing"));
        assert!(err("SET k x}").contains("without '{'"));
        assert!(err("SET \"k 1").contains("not closed"));
        assert!(err(" ; ").contains("holds no command"));
        assert!(err("HSET h =x").contains("no name before '='"));
        assert!(err("INCRBY k 1.5").contains("the amount '1.5' must be a whole number"));
        assert!(
            err("ZADD z t{ts} m").contains("the score 't{ts}' must be a number or one {column}")
        );
    }
}
