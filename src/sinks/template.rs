//! `{column}` templates of sinks (last stage of the data flow): MQTT topics, Kinesis
//! partition keys. Literal text with column placeholders; `{{` and `}}` are literal
//! braces. (The Redis sink's command templates are a richer language of their own,
//! in `redis/command.rs`.)

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;

use crate::error::{Error, Result};
use crate::render::{TimestampFormat, Values};

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

    /// Each row's text: the literal parts, and each column's value as
    /// [`crate::render`] writes it as text, passed through `escape`. A null value is
    /// `null_text` when given; without it, a row with a null is `None`.
    pub fn render(
        &self,
        batch: &RecordBatch,
        timestamps: TimestampFormat,
        null_text: Option<&str>,
        escape: impl Fn(&str, &mut String),
    ) -> Result<Vec<Option<String>>> {
        let schema = batch.schema();
        let mut values = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            values.push(match p {
                Part::Text(_) => None,
                Part::Column(name) => Some(Values::new(
                    batch.column(schema.index_of(name)?),
                    timestamps,
                )?),
            });
        }
        let mut value = String::new();
        let rows = (0..batch.num_rows()).map(|row| {
            let mut out = String::new();
            for (p, v) in self.parts.iter().zip(&values) {
                match (p, v) {
                    (Part::Text(t), _) => out.push_str(t),
                    (Part::Column(_), Some(v)) => {
                        value.clear();
                        if v.write_text(row, &mut value) {
                            escape(&value, &mut out);
                        } else {
                            out.push_str(null_text?);
                        }
                    }
                    (Part::Column(_), None) => {}
                }
            }
            Some(out)
        });
        Ok(rows.collect())
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

    #[test]
    fn renders_values_as_text() {
        use std::sync::Arc;

        use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
        use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};

        let schema = Arc::new(Schema::new(vec![
            Field::new("site", DataType::Utf8, true),
            Field::new("deviceId", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("n/1"), None])),
                Arc::new(Int64Array::from(vec![7, 8])),
                Arc::new(TimestampMillisecondArray::from(vec![1_767_262_500_250, 0])),
            ],
        )
        .unwrap();
        let t = Template::parse("site-{site}/{deviceId}@{ts}", "t").unwrap();
        let plain = |v: &str, out: &mut String| out.push_str(v);
        assert_eq!(
            t.render(&batch, TimestampFormat::Rfc3339, None, plain)
                .unwrap(),
            [
                Some("site-n/1/7@2026-01-01T10:15:00.250Z".to_string()),
                None
            ]
        );
        let slash = |v: &str, out: &mut String| out.push_str(&v.replace('/', "%2F"));
        assert_eq!(
            t.render(&batch, TimestampFormat::EpochMs, Some(""), slash)
                .unwrap(),
            [
                Some("site-n%2F1/7@1767262500250".to_string()),
                Some("site-/8@0".to_string())
            ]
        );
    }
}
