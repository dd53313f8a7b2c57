//! SQL's words for DataFusion's (sql layer, error path): Arrow type names as SQL types
//! (`Float64` → `DOUBLE`), and DataFusion's messages without their class prefixes and
//! advice about DataFusion itself.

use datafusion::arrow::datatypes::DataType;

use crate::error::closest;

/// `Unsupported SQL type FLOOT` (a column type or a CAST) with the types there are.
pub(crate) fn unknown_type(message: &str) -> Option<String> {
    let t = message.strip_prefix("Unsupported SQL type ")?.trim();
    let hint = match closest(t, SQL_TYPES) {
        Some(c) => format!("; did you mean {c}?"),
        None => format!("; types are {}", SQL_TYPES.join(", ")),
    };
    Some(format!("unknown type {t}{hint}"))
}

const SQL_TYPES: [&str; 16] = [
    "BOOLEAN",
    "TINYINT",
    "SMALLINT",
    "INT",
    "BIGINT",
    "FLOAT",
    "REAL",
    "DOUBLE",
    "DECIMAL",
    "TEXT",
    "VARCHAR",
    "STRING",
    "DATE",
    "TIME",
    "TIMESTAMP",
    "INTERVAL",
];

/// DataFusion's message without its class prefixes, its advice about DataFusion
/// itself, and with SQL type names.
pub(crate) fn tidy(message: &str) -> String {
    // "type_coercion\ncaused by\nError during planning: …": the cause is the message.
    let message = message.rsplit("caused by\n").next().unwrap_or(message);
    let mut s = message.trim();
    loop {
        let before = s;
        for p in [
            "Arrow error: ",
            "Error during planning: ",
            "Schema error: ",
            "SQL error: ",
            "Execution error: ",
            "Cast error: ",
            "Parser error: ",
            "Optimizer rule 'simplify_expressions' failed",
            "This feature is not implemented: ",
        ] {
            if let Some(rest) = s.strip_prefix(p) {
                s = rest.trim_start();
            }
        }
        if s == before {
            break;
        }
    }
    let mut out = s.to_string();
    for advice in [
        " You might need to add explicit type casts.",
        " or disable the datafusion.sql_parser.enable_ident_normalization configuration",
    ] {
        out = out.replace(advice, "");
    }
    if let Some(i) = out.find("This issue was likely caused by a bug in DataFusion") {
        // The rest of that sentence is a link to DataFusion's issue tracker.
        let end = out[i..]
            .find("issues. ")
            .map(|j| i + j + "issues. ".len())
            .unwrap_or(out.len());
        out.replace_range(i..end, "");
    }
    sql_types(out.trim())
}

/// The SQL name of an Arrow type (`Float64` → `DOUBLE`).
pub fn sql_type(t: &DataType) -> String {
    sql_types(&t.to_string())
}

/// Replaces Arrow type names in a text by their SQL names.
pub(super) fn sql_types(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let starts_word = c.is_ascii_uppercase()
            && (i == 0 || !(chars[i - 1].1.is_alphanumeric() || chars[i - 1].1 == '_'));
        if !starts_word {
            out.push(c);
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && chars[j].1.is_ascii_alphanumeric() {
            j += 1;
        }
        let word = &text[at..chars.get(j).map_or(text.len(), |c| c.0)];
        // Arguments in parentheses: `Timestamp(ms)`, `Decimal128(10, 2)`.
        let mut args = None;
        let mut k = j;
        if chars.get(j).is_some_and(|c| c.1 == '(') {
            let mut depth = 0;
            while k < chars.len() {
                match chars[k].1 {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            k += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                k += 1;
            }
            let from = chars[j].0 + 1;
            let to = chars.get(k - 1).map_or(text.len(), |c| c.0);
            args = Some(&text[from..to.max(from)]);
        }
        match arrow_to_sql(word, args) {
            Some((sql, used_args)) => {
                out.push_str(&sql);
                i = if used_args { k } else { j };
            }
            None => {
                out.push_str(word);
                i = j;
            }
        }
    }
    out
}

/// One Arrow type name (with its arguments) as SQL; whether the arguments were used.
fn arrow_to_sql(word: &str, args: Option<&str>) -> Option<(String, bool)> {
    let plain = |s: &str| Some((s.to_string(), false));
    match word {
        "Int8" => plain("TINYINT"),
        "Int16" => plain("SMALLINT"),
        "Int32" => plain("INT"),
        "Int64" => plain("BIGINT"),
        "UInt8" => plain("TINYINT UNSIGNED"),
        "UInt16" => plain("SMALLINT UNSIGNED"),
        "UInt32" => plain("INT UNSIGNED"),
        "UInt64" => plain("BIGINT UNSIGNED"),
        "Float16" => plain("HALF FLOAT"),
        "Float32" => plain("REAL"),
        "Float64" => plain("DOUBLE"),
        "Utf8" | "LargeUtf8" | "Utf8View" | "String" => plain("TEXT"),
        "Boolean" => plain("BOOLEAN"),
        "Date32" | "Date64" => plain("DATE"),
        "Binary" | "LargeBinary" | "BinaryView" => plain("BYTEA"),
        "Null" => plain("NULL"),
        "Integer" => plain("INTEGER"),
        "Numeric" => plain("NUMERIC"),
        "Decimal" => plain("DECIMAL"),
        "Float" => plain("FLOAT"),
        "Time32" | "Time64" => Some(("TIME".into(), args.is_some())),
        "Interval" => Some(("INTERVAL".into(), args.is_some())),
        "Duration" => Some(("DURATION".into(), args.is_some())),
        "Decimal32" | "Decimal64" | "Decimal128" | "Decimal256" => match args {
            Some(a) => Some((format!("DECIMAL({a})"), true)),
            None => plain("DECIMAL"),
        },
        "Timestamp" => {
            let Some(a) = args else {
                return plain("TIMESTAMP");
            };
            let mut parts = a.splitn(2, ',');
            let unit = parts.next().unwrap_or("").trim();
            let zone = parts.next().is_some_and(|z| !z.trim().is_empty());
            let base = match unit {
                "s" | "Second" => "TIMESTAMP(0)",
                "ms" | "Millisecond" => "TIMESTAMP",
                "µs" | "us" | "Microsecond" => "TIMESTAMP(6)",
                "ns" | "Nanosecond" => "TIMESTAMP(9)",
                _ => return None,
            };
            let zone = if zone { " WITH TIME ZONE" } else { "" };
            Some((format!("{base}{zone}"), true))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_read_as_sql() {
        assert_eq!(
            sql_types("round(Float64, Int32) or sum(Utf8View), Timestamp(ms) > Int64"),
            "round(DOUBLE, INT) or sum(TEXT), TIMESTAMP > BIGINT"
        );
        assert_eq!(
            sql_types("Decimal128(10, 2), Timestamp(ns, \"+00:00\"), Interval(MonthDayNano)"),
            "DECIMAL(10, 2), TIMESTAMP(9) WITH TIME ZONE, INTERVAL"
        );
        assert_eq!(sql_types("Float64/Float32"), "DOUBLE/REAL");
        assert_eq!(sql_types("Cannot cast string"), "Cannot cast string");
    }

    #[test]
    fn datafusion_advice_is_dropped() {
        assert_eq!(
            tidy(
                "type_coercion\ncaused by\nError during planning: Cannot infer common argument \
                 type for comparison operation Timestamp(ms) > Int64"
            ),
            "Cannot infer common argument type for comparison operation TIMESTAMP > BIGINT"
        );
        assert_eq!(
            unknown_type("Unsupported SQL type FLOOT").unwrap(),
            "unknown type FLOOT; did you mean FLOAT?"
        );
    }
}
