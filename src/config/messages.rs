//! serde's error messages, said for the person who edits the file: no Rust type names
//! (`u32`, `struct AuthSection`, `a sequence`), the kind of value that was expected and what was
//! found instead.

/// What one serde message says about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Problem {
    /// `unknown field `x`, expected one of ...`: the key `x` of this table does not exist.
    UnknownKey { key: String, known: Vec<String> },
    /// `missing field `x``: the required key `x` of this table is not set.
    MissingKey { key: String },
    /// Anything else, already in plain words.
    Value(String),
}

/// Reads one serde message (from deserialising the configuration) into a [`Problem`].
pub(super) fn problem(message: &str) -> Problem {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, expected)) = rest.split_once('`') {
            return Problem::UnknownKey {
                key: key.to_owned(),
                known: backticked(expected),
            };
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((key, _)) = rest.split_once('`') {
            return Problem::MissingKey {
                key: key.to_owned(),
            };
        }
    }
    Problem::Value(plain(message))
}

/// The words in backticks of `text`: serde's list of the names it expected.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// serde's message `message` in plain words. Messages that are not serde's own (the job's
/// checks) pass through as they are.
pub(super) fn plain(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.rsplit_once(", expected ") {
                return format!(
                    "expected {}, found {}",
                    expected_kind(expected),
                    found_kind(found)
                );
            }
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((found, expected)) = rest.split_once('`') {
            let names = backticked(expected);
            return if names.is_empty() {
                format!("{found:?} is not one of the accepted values")
            } else {
                format!("{found:?} is not one of: {}", names.join(", "))
            };
        }
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        if let Some((n, expected)) = rest.split_once(", expected ") {
            return format!("expected {}, found {n} items", expected_kind(expected));
        }
    }
    if message == "invalid socket address syntax" {
        return "expected an address in quotes, such as \"127.0.0.1:9898\" (an IP address and a port)"
            .to_owned();
    }
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        if let Some((key, _)) = rest.split_once('`') {
            return format!("`{key}` is set twice");
        }
    }
    message.to_owned()
}

/// What serde's "expected ..." means, without type names.
fn expected_kind(expected: &str) -> String {
    let e = expected.trim();
    let kind = match e {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a string" | "string" | "a borrowed string" => "text in quotes",
        "a boolean" | "bool" => "true or false",
        "a character" | "char" => "a single character in quotes",
        "a duration" => "a duration in quotes, such as \"30s\", \"5m\" or \"1h 30m\"",
        "socket address" | "a socket address" => "an address in quotes, such as \"127.0.0.1:9898\"",
        "a map" | "map" => "a table",
        "a sequence" | "sequence" | "a tuple" => "a list, such as [\"a\", \"b\"]",
        "path string" | "a path" => "a path in quotes",
        "option" | "an option" => "a value",
        "unit" | "()" => "no value",
        _ if e.starts_with("struct ") || e.starts_with("tuple struct ") => "a table",
        _ if e.starts_with("enum ") => "one of the accepted names, in quotes",
        _ if e.starts_with("a Decimal") || e.contains("decimal") => "a decimal number",
        _ => return strip_type_names(e),
    };
    kind.to_owned()
}

/// What serde's description of the value found (`string "fast"`, `integer `5``) means.
fn found_kind(found: &str) -> String {
    let f = found.trim();
    if let Some(text) = f.strip_prefix("string ") {
        return format!("the text {text}");
    }
    for number in ["integer ", "floating point "] {
        if let Some(n) = f.strip_prefix(number) {
            return format!("the number {}", n.trim_matches('`'));
        }
    }
    if let Some(b) = f.strip_prefix("boolean ") {
        return b.trim_matches('`').to_owned();
    }
    if let Some(c) = f.strip_prefix("character ") {
        return format!("the character {c}");
    }
    match f {
        "map" => "a table (or a TOML date or time)".to_owned(),
        "sequence" => "a list".to_owned(),
        "unit value" | "Option value" => "no value".to_owned(),
        _ => strip_type_names(f),
    }
}

/// Last resort for a description serde (or a library) wrote that is not in the tables above:
/// drop `struct X` / `enum X` wording.
fn strip_type_names(text: &str) -> String {
    let mut words: Vec<&str> = Vec::new();
    let mut iter = text.split_whitespace().peekable();
    while let Some(w) = iter.next() {
        if matches!(w, "struct" | "enum") && iter.peek().is_some() {
            iter.next();
            words.push("a table");
        } else {
            words.push(w);
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_are_said_without_rust_type_names() {
        for (serde, plain_words) in [
            (
                "invalid type: string \"fast\", expected u32",
                "expected a whole number, 0 or more, found the text \"fast\"",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "expected a whole number, 0 or more, found the number -1",
            ),
            (
                "invalid type: integer `5`, expected a string",
                "expected text in quotes, found the number 5",
            ),
            (
                "invalid type: string \"x\", expected struct AuthSection",
                "expected a table, found the text \"x\"",
            ),
            (
                "invalid type: floating point `1.5`, expected usize",
                "expected a whole number, 0 or more, found the number 1.5",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                "expected true or false, found the text \"yes\"",
            ),
            (
                "invalid value: string \"5 minutes please\", expected a duration",
                "expected a duration in quotes, such as \"30s\", \"5m\" or \"1h 30m\", found the text \"5 minutes please\"",
            ),
            (
                "invalid type: map, expected a string",
                "expected text in quotes, found a table (or a TOML date or time)",
            ),
            (
                "invalid type: string \"a\", expected a sequence",
                "expected a list, such as [\"a\", \"b\"], found the text \"a\"",
            ),
            (
                "invalid value: integer `70000`, expected u16",
                "expected a whole number from 0 to 65535, found the number 70000",
            ),
            (
                "invalid type: integer `1`, expected enum BusKind",
                "expected one of the accepted names, in quotes, found the number 1",
            ),
            (
                "unknown variant `kafkaa`, expected `embedded` or `kafka`",
                "\"kafkaa\" is not one of: embedded, kafka",
            ),
            (
                "invalid type: boolean `true`, expected i32",
                "expected a whole number, found true",
            ),
            ("duplicate field `url`", "`url` is set twice"),
            (
                "invalid socket address syntax",
                "expected an address in quotes, such as \"127.0.0.1:9898\" (an IP address and a port)",
            ),
            // The job's own messages pass through.
            (
                "\"Mars/Olympus\" is not an IANA time zone",
                "\"Mars/Olympus\" is not an IANA time zone",
            ),
        ] {
            let said = plain(serde);
            assert_eq!(said, plain_words, "{serde}");
            for rust in ["u32", "u16", "usize", "i32", "struct", "enum", "BusKind", "sequence"] {
                assert!(
                    !said.split(|c: char| !c.is_alphanumeric()).any(|w| w == rust),
                    "{rust} in {said:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_and_missing_keys_are_recognised() {
        assert_eq!(
            problem("unknown field `max_inflight`, expected one of `url`, `max_in_flight`"),
            Problem::UnknownKey {
                key: "max_inflight".into(),
                known: vec!["url".into(), "max_in_flight".into()]
            }
        );
        assert_eq!(
            problem("unknown field `x`, there are no fields"),
            Problem::UnknownKey {
                key: "x".into(),
                known: vec![]
            }
        );
        assert_eq!(
            problem("missing field `url`"),
            Problem::MissingKey { key: "url".into() }
        );
        assert_eq!(
            problem("invalid type: string \"x\", expected u32"),
            Problem::Value("expected a whole number, 0 or more, found the text \"x\"".into())
        );
    }
}
