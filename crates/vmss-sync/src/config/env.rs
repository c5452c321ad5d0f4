//! `${VAR}` substitution in scalar values, bounded: one value may grow to
//! [`MAX_EXPANDED_VALUE_BYTES`] and the whole file may take [`MAX_EXPANSION_BYTES`] from
//! the environment, so a large variable used many times cannot exhaust memory.

use std::cell::Cell;

use super::limits::{MAX_EXPANDED_VALUE_BYTES, MAX_EXPANSION_BYTES};

/// One problem found while substituting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubstError {
    /// `${NAME}` where `NAME` is not set in the environment.
    Unset(String),
    /// `${` without a closing `}`.
    Unterminated,
    /// `${...}` whose content is not a variable name.
    BadName(String),
    /// The value would be longer than [`MAX_EXPANDED_VALUE_BYTES`] once `${NAME}` is in.
    ValueTooLong(String),
    /// The file's substitutions would read more than [`MAX_EXPANSION_BYTES`].
    FileTooLong(String),
}

impl SubstError {
    pub(crate) fn message(&self) -> String {
        match self {
            SubstError::Unset(name) => format!("environment variable {name} is not set"),
            SubstError::Unterminated => {
                "\"${\" without a closing \"}\" (write \"$${\" for a literal \"${\")".to_owned()
            }
            SubstError::BadName(name) => format!(
                "\"${{{name}}}\" is not a valid environment variable reference: a name is letters, \
                 digits and _, not starting with a digit (write \"$${{\" for a literal \"${{\")"
            ),
            SubstError::ValueTooLong(name) => format!(
                "with ${{{name}}} substituted the value is longer than {MAX_EXPANDED_VALUE_BYTES} \
                 bytes (64 KiB), the most a value may be"
            ),
            SubstError::FileTooLong(name) => format!(
                "${{{name}}}: ${{VAR}} substitution would read more than {MAX_EXPANSION_BYTES} \
                 bytes (1 MiB) from the environment for this file, the most it may"
            ),
        }
    }
}

/// Looks variables up for one file, counting what substitution inserts.
pub(crate) struct Expander<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    /// Bytes substitution may still insert into this file.
    left: Cell<usize>,
}

impl<'e> Expander<'e> {
    pub(crate) fn new(env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Expander {
            env,
            left: Cell::new(MAX_EXPANSION_BYTES),
        }
    }
}

/// Replaces every `${NAME}` in `raw` with the variable's value; `$${` stands for a literal
/// `${`. Every problem is reported, not only the first; after a size limit is reached the
/// rest of the value is not substituted. Every value looked up is charged to the file's
/// budget, inserted or not; once it is spent, no variable is even looked up.
pub(crate) fn substitute(raw: &str, env: &Expander<'_>) -> Result<String, Vec<SubstError>> {
    if !raw.contains("${") {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len().min(MAX_EXPANDED_VALUE_BYTES));
    let mut errors = Vec::new();
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let Some(end) = r.find('}') else {
                errors.push(SubstError::Unterminated);
                rest = "";
                break;
            };
            let name = &r[..end];
            rest = &r[end + 1..];
            if !is_var_name(name) {
                errors.push(SubstError::BadName(name.to_owned()));
                continue;
            }
            if env.left.get() == 0 {
                errors.push(SubstError::FileTooLong(name.to_owned()));
                break;
            }
            let Some(value) = (env.env)(name) else {
                errors.push(SubstError::Unset(name.to_owned()));
                continue;
            };
            // Every value looked up counts, inserted or not: a file cannot make the
            // process copy more than the budget out of the environment.
            let left = env.left.get();
            env.left.set(left.saturating_sub(value.len()));
            if value.len() > left {
                errors.push(SubstError::FileTooLong(name.to_owned()));
                break;
            }
            if out.len() + value.len() + rest.len() > MAX_EXPANDED_VALUE_BYTES {
                errors.push(SubstError::ValueTooLong(name.to_owned()));
                break;
            }
            out.push_str(&value);
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("s3cr3t".to_owned()),
            "EMPTY" => Some(String::new()),
            "DOLLAR" => Some("${KEY}".to_owned()),
            "BIG" => Some("x".repeat(40 << 10)),
            _ => None,
        }
    }

    fn sub(raw: &str) -> Result<String, Vec<SubstError>> {
        substitute(raw, &Expander::new(&lookup))
    }

    #[test]
    fn substitutes_variables_anywhere_in_the_value() {
        assert_eq!(sub("ApiKey ${KEY}").unwrap(), "ApiKey s3cr3t");
        assert_eq!(sub("${KEY}${KEY}").unwrap(), "s3cr3ts3cr3t");
        assert_eq!(sub("a${EMPTY}b").unwrap(), "ab");
        assert_eq!(sub("plain").unwrap(), "plain");
    }

    #[test]
    fn substituted_text_is_not_substituted_again() {
        assert_eq!(sub("${DOLLAR}").unwrap(), "${KEY}");
    }

    #[test]
    fn double_dollar_brace_is_a_literal() {
        assert_eq!(sub("$${KEY}").unwrap(), "${KEY}");
        assert_eq!(sub("a$b$$c$").unwrap(), "a$b$$c$");
        assert_eq!(sub("$$${KEY}").unwrap(), "$${KEY}");
    }

    #[test]
    fn reports_every_problem() {
        assert_eq!(
            sub("${A} ${KEY} ${B}").unwrap_err(),
            vec![
                SubstError::Unset("A".to_owned()),
                SubstError::Unset("B".to_owned())
            ]
        );
        assert_eq!(
            sub("${1X} ${KEY").unwrap_err(),
            vec![
                SubstError::BadName("1X".to_owned()),
                SubstError::Unterminated
            ]
        );
        assert_eq!(
            sub("${}").unwrap_err(),
            vec![SubstError::BadName(String::new())]
        );
    }

    #[test]
    fn one_value_may_not_grow_past_64_kib() {
        let e = Expander::new(&lookup);
        assert_eq!(substitute("${BIG}", &e).unwrap().len(), 40 << 10);
        assert_eq!(
            substitute("${BIG}${BIG}", &e).unwrap_err(),
            vec![SubstError::ValueTooLong("BIG".to_owned())]
        );
        assert!(
            SubstError::ValueTooLong("BIG".to_owned())
                .message()
                .contains("65536 bytes"),
            "the message names the limit"
        );
    }

    #[test]
    fn a_file_may_not_take_more_than_1_mib_from_the_environment() {
        let e = Expander::new(&lookup);
        // 40 KiB a time: 25 values fit in 1 MiB, the 26th does not.
        for _ in 0..25 {
            assert!(substitute("${BIG}", &e).is_ok());
        }
        assert_eq!(
            substitute("${BIG}", &e).unwrap_err(),
            vec![SubstError::FileTooLong("BIG".to_owned())]
        );
        // Values refused as too long count too.
        let e = Expander::new(&lookup);
        for _ in 0..13 {
            assert!(substitute("${BIG}${BIG}", &e).is_err());
        }
        assert_eq!(
            substitute("${BIG}", &e).unwrap_err(),
            vec![SubstError::FileTooLong("BIG".to_owned())]
        );
        // Spent: not even looked up any more.
        let calls = Cell::new(0);
        let counting = |n: &str| {
            calls.set(calls.get() + 1);
            lookup(n)
        };
        let e = Expander::new(&counting);
        e.left.set(0);
        assert!(substitute("${KEY}", &e).is_err());
        assert_eq!(calls.get(), 0);
        assert_eq!(substitute("no variables", &e).unwrap(), "no variables");
    }
}
