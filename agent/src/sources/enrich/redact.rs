//! Secrets out of command lines before they are reported: `--password=…`, `--token …`,
//! `…?token=…`, `scheme://user:pass@host`.

use std::collections::HashSet;

const MASK: &str = "***";

/// Redacts the values of arguments whose names are (or contain, as a `-`/`_`/`.` separated
/// word) one of the configured keys.
#[derive(Debug, Clone)]
pub struct Redactor {
    keys: HashSet<String>,
}

impl Redactor {
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|k| k.as_ref().to_ascii_lowercase())
                .collect(),
        }
    }

    fn is_secret_key(&self, key: &str) -> bool {
        let key = key.trim_start_matches('-').to_ascii_lowercase();
        !key.is_empty()
            && (self.keys.contains(&key)
                || key
                    .split(['-', '_', '.'])
                    .any(|word| self.keys.contains(word)))
    }

    /// The command line, arguments joined by spaces, secrets replaced by `***`.
    pub fn redact(&self, args: &[String]) -> String {
        let mut out = Vec::with_capacity(args.len());
        let mut mask_next = false;
        for arg in args {
            if mask_next && !arg.starts_with('-') {
                out.push(MASK.to_string());
                mask_next = false;
                continue;
            }
            mask_next = arg.starts_with('-') && !arg.contains('=') && self.is_secret_key(arg);
            out.push(self.redact_arg(arg));
        }
        out.join(" ")
    }

    fn redact_arg(&self, arg: &str) -> String {
        let arg = redact_url_password(arg);
        // key=value pairs, alone or inside a query string / option list.
        let mut result = String::with_capacity(arg.len());
        let mut rest = arg.as_str();
        loop {
            let Some(eq) = rest.find('=') else {
                result.push_str(rest);
                break;
            };
            let (before, after) = rest.split_at(eq);
            let key_start = before.rfind(['?', '&', ';', ',', ' ']).map_or(0, |i| i + 1);
            let key = &before[key_start..];
            result.push_str(before);
            result.push('=');
            let after = &after[1..];
            let value_end = after.find(['&', ';', ',', ' ']).unwrap_or(after.len());
            if self.is_secret_key(key) && value_end > 0 {
                result.push_str(MASK);
            } else {
                result.push_str(&after[..value_end]);
            }
            rest = &after[value_end..];
        }
        result
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
fn redact_url_password(arg: &str) -> String {
    let Some(scheme_end) = arg.find("://") else {
        return arg.to_string();
    };
    let authority_start = scheme_end + 3;
    let authority_end = arg[authority_start..]
        .find(['/', '?', '#'])
        .map_or(arg.len(), |i| authority_start + i);
    let authority = &arg[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return arg.to_string();
    };
    let Some(colon) = authority[..at].find(':') else {
        return arg.to_string();
    };
    format!(
        "{}{}{MASK}{}",
        &arg[..authority_start],
        &authority[..colon + 1],
        &arg[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(args: &[&str]) -> String {
        let r = Redactor::new(&["password", "token", "secret", "key", "pass"]);
        r.redact(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flag_values() {
        assert_eq!(
            redact(&["app", "--password=hunter2", "--port=80"]),
            "app --password=*** --port=80"
        );
        assert_eq!(
            redact(&["app", "--db-password", "hunter2", "--verbose"]),
            "app --db-password *** --verbose"
        );
        assert_eq!(redact(&["app", "--api-key", "abc"]), "app --api-key ***");
        assert_eq!(
            redact(&["app", "--keyfile", "/etc/k"]),
            "app --keyfile /etc/k"
        );
        assert_eq!(redact(&["app", "--token"]), "app --token");
        assert_eq!(redact(&["app", "--passenger=3"]), "app --passenger=3");
    }

    #[test]
    fn query_strings_and_env_style() {
        assert_eq!(
            redact(&["curl", "http://h/x?user=a&token=s3cr3t&x=1"]),
            "curl http://h/x?user=a&token=***&x=1"
        );
        assert_eq!(redact(&["env", "SECRET=x", "A=b"]), "env SECRET=*** A=b");
    }

    #[test]
    fn url_credentials() {
        assert_eq!(
            redact(&["psql", "postgres://app:hunter2@db:5432/x"]),
            "psql postgres://app:***@db:5432/x"
        );
        assert_eq!(redact(&["x", "http://host/a@b"]), "x http://host/a@b");
    }
}
