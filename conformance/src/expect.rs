//! Expectations in scenarios: JSON patterns with matchers, checked against
//! what a target sends (`<-` lines, `await-event` data).
//!
//! A pattern is JSON. Objects match partially: every member of the pattern
//! must be present and match, other members are allowed. Arrays match
//! element by element and must have the same length. Other values must be
//! equal. A string that starts with `$` is a matcher:
//!
//! | matcher     | matches                                                      |
//! |-------------|--------------------------------------------------------------|
//! | `$any`      | any value                                                    |
//! | `$string`, `$number`, `$bool`, `$object`, `$array` | a value of that JSON type |
//! | `$name:X`   | any value the first time X is seen (binds X); later only the bound value |
//! | `$$…`       | the literal string `$…`                                      |
//!
//! A bound name is also substituted in later `->` lines as `$X`
//! ([`substitute`]): `"$X"` becomes the bound JSON value, `$X` inside a
//! longer string the bound string's text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Result};
use serde_json::Value;

/// Values bound by `$name:X` matchers, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bindings(BTreeMap<String, Value>);

impl Bindings {
    /// The value bound to `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
}

/// One matcher string, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Any,
    Type(&'static str),
    Name(String),
    Literal(String),
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn matcher(s: &str) -> Result<Option<Matcher>> {
    let Some(m) = s.strip_prefix('$') else {
        return Ok(None);
    };
    Ok(Some(match m {
        "any" => Matcher::Any,
        "string" | "number" | "bool" | "object" | "array" => Matcher::Type(match m {
            "string" => "string",
            "number" => "number",
            "bool" => "bool",
            "object" => "object",
            _ => "array",
        }),
        _ if m.starts_with('$') => Matcher::Literal(m.to_owned()),
        _ => match m.strip_prefix("name:") {
            Some(n) if is_ident(n) => Matcher::Name(n.to_owned()),
            Some(n) => bail!("bad name in matcher \"$name:{n}\" (letters, digits, _)"),
            None => bail!(
                "unknown matcher \"{s}\" ($any, $string, $number, $bool, $object, $array, $name:X; $$ for a literal $)"
            ),
        },
    }))
}

/// Checks that every `$…` string in a pattern is a known matcher.
pub fn check_pattern(p: &Value) -> Result<()> {
    match p {
        Value::String(s) => matcher(s).map(|_| ()),
        Value::Array(a) => a.iter().try_for_each(check_pattern),
        Value::Object(o) => o.values().try_for_each(check_pattern),
        _ => Ok(()),
    }
}

/// The names a pattern binds (`$name:X`), in order of appearance.
pub fn bound_names(p: &Value, out: &mut Vec<String>) {
    match p {
        Value::String(s) => {
            if let Ok(Some(Matcher::Name(n))) = matcher(s) {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| bound_names(v, out)),
        Value::Object(o) => o.values().for_each(|v| bound_names(v, out)),
        _ => {}
    }
}

/// The `$IDENT` references in a text, in order of appearance.
pub fn references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos + 1..];
        let len = ident_len(after);
        if len > 0 && !out.iter().any(|n: &String| n == &after[..len]) {
            out.push(after[..len].to_owned());
        }
        rest = &after[len..];
    }
    out
}

fn ident_len(s: &str) -> usize {
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_');
    if !first_ok {
        return 0;
    }
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// Replaces `$NAME` for each of `names` with its bound value: `"$NAME"`
/// (the whole JSON string) becomes the value's JSON, `$NAME` elsewhere the
/// string's text (JSON-escaped) or the value's JSON. Errors name the first
/// unbound name.
pub fn substitute(text: &str, names: &[String], b: &Bindings) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos + 1..];
        let len = ident_len(after);
        let name = &after[..len];
        if len == 0 || !names.iter().any(|n| n == name) {
            out.push_str(&rest[..=pos]);
            rest = after;
            continue;
        }
        let v = b.get(name).ok_or_else(|| {
            format!("${name} is not bound (the expectation binding it did not match)")
        })?;
        let json = serde_json::to_string(v).unwrap_or_default();
        let before = &rest[..pos];
        if before.ends_with('"') && after[len..].starts_with('"') {
            out.push_str(&before[..before.len() - 1]);
            out.push_str(&json);
            rest = &after[len + 1..];
            continue;
        }
        out.push_str(before);
        match v {
            Value::String(_) => out.push_str(&json[1..json.len() - 1]),
            _ => out.push_str(&json),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Renders a value for a message, shortened.
pub fn short(v: &Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(117).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn at(path: &str) -> String {
    if path.is_empty() {
        "the message".to_owned()
    } else {
        format!("`{path}`")
    }
}

fn walk(path: &mut String, p: &Value, a: &Value, b: &mut Bindings) -> Result<(), String> {
    if let Value::String(s) = p {
        // Patterns are checked when parsed: an unknown matcher cannot get here.
        match matcher(s).ok().flatten() {
            None => {}
            Some(Matcher::Any) => return Ok(()),
            Some(Matcher::Type(t)) => {
                return if type_name(a) == t {
                    Ok(())
                } else {
                    Err(format!("{}: expected a {t}, got {}", at(path), short(a)))
                };
            }
            Some(Matcher::Name(n)) => {
                return match b.0.get(&n) {
                    None => {
                        b.0.insert(n, a.clone());
                        Ok(())
                    }
                    Some(v) if v == a => Ok(()),
                    Some(v) => Err(format!(
                        "{}: $name:{n} is bound to {}, got {}",
                        at(path),
                        short(v),
                        short(a)
                    )),
                };
            }
            Some(Matcher::Literal(l)) => {
                return if a.as_str() == Some(l.as_str()) {
                    Ok(())
                } else {
                    Err(format!("{}: expected \"{l}\", got {}", at(path), short(a)))
                };
            }
        }
    }
    match (p, a) {
        (Value::Object(po), Value::Object(ao)) => {
            for (k, pv) in po {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                let r = match ao.get(k) {
                    Some(av) => walk(path, pv, av, b),
                    None => {
                        let mut have = String::new();
                        for (i, k) in ao.keys().enumerate() {
                            let _ = write!(have, "{}{k}", if i > 0 { ", " } else { "" });
                        }
                        Err(format!("{}: missing (members: {have})", at(path)))
                    }
                };
                path.truncate(len);
                r?;
            }
            Ok(())
        }
        (Value::Array(pa), Value::Array(aa)) => {
            if pa.len() != aa.len() {
                return Err(format!(
                    "{}: expected {} elements, got {}: {}",
                    at(path),
                    pa.len(),
                    aa.len(),
                    short(a)
                ));
            }
            for (i, (pv, av)) in pa.iter().zip(aa).enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                let r = walk(path, pv, av, b);
                path.truncate(len);
                r?;
            }
            Ok(())
        }
        _ if p == a => Ok(()),
        _ => Err(format!(
            "{}: expected {}, got {}",
            at(path),
            short(p),
            short(a)
        )),
    }
}

/// Matches `actual` against `pattern`. On success the names the pattern
/// bound are added to `b`; on failure `b` is unchanged and the error says
/// where and how the value differs.
pub fn matches(pattern: &Value, actual: &Value, b: &mut Bindings) -> Result<(), String> {
    let mut trial = b.clone();
    walk(&mut String::new(), pattern, actual, &mut trial)?;
    *b = trial;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_match_partially_arrays_fully() {
        let mut b = Bindings::default();
        let a = json!({"return": [{"id": "s0", "status": "ready", "len": 5}], "id": "x"});
        assert!(matches(&json!({"return": [{"status": "ready"}]}), &a, &mut b).is_ok());
        let e = matches(&json!({"return": [{"status": "running"}]}), &a, &mut b).unwrap_err();
        assert_eq!(e, "`return[0].status`: expected \"running\", got \"ready\"");
        let e = matches(&json!({"return": []}), &a, &mut b).unwrap_err();
        assert!(e.starts_with("`return`: expected 0 elements, got 1"), "{e}");
        let e = matches(&json!({"error": {}}), &a, &mut b).unwrap_err();
        assert_eq!(e, "`error`: missing (members: return, id)");
    }

    #[test]
    fn type_matchers_and_literal_dollars() {
        let mut b = Bindings::default();
        let a = json!({"s": "x", "n": 1.5, "t": true, "o": {}, "l": [], "d": "$x"});
        let p = json!({"s": "$string", "n": "$number", "t": "$bool", "o": "$object", "l": "$array", "d": "$$x", "z": "$any"});
        // `z` is missing: $any needs the member to exist.
        assert!(matches(&p, &a, &mut b)
            .unwrap_err()
            .contains("`z`: missing"));
        let mut p = p;
        p.as_object_mut().unwrap().remove("z");
        assert!(matches(&p, &a, &mut b).is_ok());
        let e = matches(&json!({"n": "$string"}), &a, &mut b).unwrap_err();
        assert_eq!(e, "`n`: expected a string, got 1.5");
        assert!(check_pattern(&json!({"a": ["$nope"]})).is_err());
        assert!(check_pattern(&json!({"a": ["$name:1x"]})).is_err());
        assert!(check_pattern(&json!({"a": ["$name:node_1", "$$lit"]})).is_ok());
    }

    #[test]
    fn names_bind_once_and_failed_matches_bind_nothing() {
        let mut b = Bindings::default();
        let p = json!({"node-name": "$name:N", "x": 1});
        assert!(matches(&p, &json!({"node-name": "#block1", "x": 2}), &mut b).is_err());
        assert_eq!(b.get("N"), None);
        assert!(matches(&p, &json!({"node-name": "#block1", "x": 1}), &mut b).is_ok());
        assert_eq!(b.get("N"), Some(&json!("#block1")));
        let e = matches(&p, &json!({"node-name": "#block2", "x": 1}), &mut b).unwrap_err();
        assert_eq!(
            e,
            "`node-name`: $name:N is bound to \"#block1\", got \"#block2\""
        );
        let mut names = Vec::new();
        bound_names(&json!([{"a": "$name:A"}, "$name:B", "$name:A"]), &mut names);
        assert_eq!(names, ["A", "B"]);
    }

    #[test]
    fn substitution_quoted_inside_strings_and_unbound() {
        let mut b = Bindings::default();
        matches(
            &json!({"a": "$name:N", "n": "$name:K"}),
            &json!({"a": "#block1", "n": 7}),
            &mut b,
        )
        .unwrap();
        let names = vec!["N".to_owned(), "K".to_owned()];
        assert_eq!(
            substitute(
                r#"{"node-name": "$N", "x": "pre-$N", "k": "$K", "cost": "$5", "$N2": 1}"#,
                &names,
                &b
            )
            .unwrap(),
            r##"{"node-name": "#block1", "x": "pre-#block1", "k": 7, "cost": "$5", "$N2": 1}"##
        );
        assert_eq!(references("a $N b $K $N $5"), ["N", "K"]);
        let e = substitute("$M", &["M".to_owned()], &b).unwrap_err();
        assert!(e.contains("$M is not bound"), "{e}");
    }
}
