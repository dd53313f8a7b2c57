//! `{column}` templates of sinks (last stage of the data flow): MQTT topics, Kinesis
//! partition keys. Literal text with column placeholders; `{{` and `}}` are literal
//! braces. (The Redis sink's command templates are a richer language of their own,
//! in `redis/command.rs`.)

use datafusion::arrow::datatypes::Schema;

use crate::error::{Error, Result};

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Column(String),
}

/// A parsed template: never empty, names at least text or a column.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub parts: Vec<Part>,
}

impl Template {
    /// Parses `t`; errors name `what` ("topic", "partition key template") for the user.
    pub fn parse(t: &str, what: &str) -> std::result::Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = t.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed '{{' in {what} '{t}'")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(format!("empty '{{}}' in {what} '{t}'"));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Column(name));
                }
                '}' => return Err(format!("unmatched '}}' in {what} '{t}' (write '}}}}')")),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        if parts.is_empty() {
            return Err(format!("the {what} is empty"));
        }
        Ok(Template { parts })
    }

    /// The literal text, placeholders left out.
    pub fn literal(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(s) => Some(s.as_str()),
                Part::Column(_) => None,
            })
            .collect()
    }

    /// Fails, naming the query's columns, when the template names one it lacks.
    pub fn check_columns(&self, schema: &Schema, what: &str) -> Result<()> {
        for p in &self.parts {
            if let Part::Column(c) = p
                && schema.column_with_name(c).is_none()
            {
                return Err(Error::user(format!(
                    "{what} uses column '{c}', which the query does not produce; its columns \
                     are: {}",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_columns_text_and_braces() {
        assert_eq!(
            Template::parse("site-{site}/{ deviceId }", "t")
                .unwrap()
                .parts,
            vec![
                Part::Text("site-".into()),
                Part::Column("site".into()),
                Part::Text("/".into()),
                Part::Column("deviceId".into()),
            ]
        );
        assert_eq!(
            Template::parse("{{x}}", "t").unwrap().parts,
            vec![Part::Text("{x}".into())]
        );
        for bad in ["{a", "a}", "{}", ""] {
            assert!(Template::parse(bad, "t").is_err(), "{bad}");
        }
    }
}
