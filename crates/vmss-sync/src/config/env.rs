//! `${VAR}` substitution in scalar values.

/// One problem found while substituting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubstError {
    /// `${NAME}` where `NAME` is not set in the environment.
    Unset(String),
    /// `${` without a closing `}`.
    Unterminated,
    /// `${...}` whose content is not a variable name.
    BadName(String),
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
        }
    }
}

/// Replaces every `${NAME}` in `raw` with `env(NAME)`; `$${` stands for a literal `${`.
/// Every problem is reported, not only the first.
pub(crate) fn substitute(
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<SubstError>> {
    if !raw.contains("${") {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
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
            match env(name) {
                Some(value) => out.push_str(&value),
                None => errors.push(SubstError::Unset(name.to_owned())),
            }
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

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("s3cr3t".to_owned()),
            "EMPTY" => Some(String::new()),
            "DOLLAR" => Some("${KEY}".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_variables_anywhere_in_the_value() {
        assert_eq!(substitute("ApiKey ${KEY}", &env).unwrap(), "ApiKey s3cr3t");
        assert_eq!(substitute("${KEY}${KEY}", &env).unwrap(), "s3cr3ts3cr3t");
        assert_eq!(substitute("a${EMPTY}b", &env).unwrap(), "ab");
        assert_eq!(substitute("plain", &env).unwrap(), "plain");
    }

    #[test]
    fn substituted_text_is_not_substituted_again() {
        assert_eq!(substitute("${DOLLAR}", &env).unwrap(), "${KEY}");
    }

    #[test]
    fn double_dollar_brace_is_a_literal() {
        assert_eq!(substitute("$${KEY}", &env).unwrap(), "${KEY}");
        assert_eq!(substitute("a$b$$c$", &env).unwrap(), "a$b$$c$");
        assert_eq!(substitute("$$${KEY}", &env).unwrap(), "$${KEY}");
    }

    #[test]
    fn reports_every_problem() {
        assert_eq!(
            substitute("${A} ${KEY} ${B}", &env).unwrap_err(),
            vec![
                SubstError::Unset("A".to_owned()),
                SubstError::Unset("B".to_owned())
            ]
        );
        assert_eq!(
            substitute("${1X} ${KEY", &env).unwrap_err(),
            vec![
                SubstError::BadName("1X".to_owned()),
                SubstError::Unterminated
            ]
        );
        assert_eq!(
            substitute("${}", &env).unwrap_err(),
            vec![SubstError::BadName(String::new())]
        );
    }
}
