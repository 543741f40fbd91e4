//! Secrets out of command lines before they are reported. What is masked with `***`:
//!
//! - values of arguments whose name is a secret: `--password=…`, `--token …`,
//!   `PGPASSWORD=…`, `MYSQL_PWD=…`, `…?token=…&sig=…`, `#access_token=…` (every
//!   `key=value` inside an argument, in query strings and option lists too);
//! - the password options of clients that take one on the command line: `mysql -psecret`
//!   or `-p secret`, `redis-cli -a secret`, `sshpass -p`, `mongosh -p`, `ldapsearch -w`,
//!   the password in `curl -u user:secret`;
//! - secret HTTP header values: `Authorization: Bearer ***`, `Cookie: ***`,
//!   `X-Auth-Token: ***`;
//! - the user info of every URL in an argument: `https://user:***@host`,
//!   `https://***@host` (a token used as the user name).
//!
//! Arguments are also read as command lines of their own, word by word, so that the same
//! rules hold inside `sh -c '…'` and in titles a process set with `setproctitle`.
//!
//! A name is a secret when it, or one of its `-`/`_`/`.` separated words, is one of the
//! configured keys (`enrich.redact_keys`), or, whatever the configuration, when it contains
//! one of [`ALWAYS_SECRET_PARTS`], has one of [`ALWAYS_SECRET_WORDS`] as a word, or ends
//! in `_pwd`: those never name anything but a secret, so a short configured list cannot
//! leak them.

use std::collections::HashSet;

const MASK: &str = "***";

/// Substrings that make any argument name a secret (`PGPASSWORD`, `X-Amz-Credential`).
const ALWAYS_SECRET_PARTS: [&str; 7] = [
    "password",
    "bearer",
    "passwd",
    "secret",
    "token",
    "credential",
    "signature",
];

/// Words (between `-`, `_`, `.`) that make a name a secret: signed URLs' `sig=`.
const ALWAYS_SECRET_WORDS: [&str; 1] = ["sig"];

/// Headers whose whole value is a credential, whatever their name's words.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// `Authorization` schemes (RFC 9110 and the IANA registry), kept before the masked
/// credential.
const AUTH_SCHEMES: [&str; 13] = [
    "basic",
    "bearer",
    "digest",
    "dpop",
    "gnap",
    "hoba",
    "mutual",
    "negotiate",
    "ntlm",
    "oauth",
    "token",
    "aws4-hmac-sha256",
    "scram-sha-256",
];

/// Redacts the values of arguments whose names are (or contain, as a `-`/`_`/`.` separated
/// word) one of the configured keys, and the other secrets listed in the module's
/// documentation.
#[derive(Debug, Clone)]
pub struct Redactor {
    keys: HashSet<String>,
}

/// How a client program takes a secret on its command line.
#[derive(Debug)]
struct Client {
    /// Short options whose value (attached or the next word) is a password.
    short: &'static [ShortOption],
    /// Long options whose value is `user:password` (`curl --user`).
    long_user_password: &'static [&'static str],
}

#[derive(Debug, Clone, Copy)]
struct ShortOption {
    letter: char,
    /// Only what follows the first `:` is secret (`curl -u user:secret`).
    after_colon: bool,
}

const fn password(letter: char) -> ShortOption {
    ShortOption {
        letter,
        after_colon: false,
    }
}

const fn user_password(letter: char) -> ShortOption {
    ShortOption {
        letter,
        after_colon: true,
    }
}

/// The client that takes its password as `-p`: mysql, mariadb, sshpass, mongosh.
const DASH_P: Client = Client {
    short: &[password('p')],
    long_user_password: &[],
};
const REDIS_CLI: Client = Client {
    short: &[password('a')],
    long_user_password: &[],
};
const LDAP: Client = Client {
    short: &[password('w')],
    long_user_password: &[],
};
const CURL: Client = Client {
    short: &[user_password('u'), user_password('U')],
    long_user_password: &["--user", "--proxy-user"],
};

/// The client named `word` (a path or a basename), if it is one of those that take a
/// password as a short option. Short options mean different things to different programs
/// (`ssh -p 22`, `nginx -p /prefix`, `ls -a`), so they are masked only after the program
/// they belong to.
fn client(word: &str) -> Option<&'static Client> {
    let program = word.rsplit('/').next().unwrap_or(word);
    Some(match program {
        p if p.starts_with("mysql") || p.starts_with("mariadb") || p.starts_with("mongo") => {
            &DASH_P
        }
        "sshpass" => &DASH_P,
        "redis-cli" | "valkey-cli" | "keydb-cli" => &REDIS_CLI,
        p if p.starts_with("ldap") => &LDAP,
        "curl" => &CURL,
        _ => return None,
    })
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
        if key.is_empty() {
            return false;
        }
        let mut words = key.split(['-', '_', '.']);
        self.keys.contains(&key)
            || ALWAYS_SECRET_PARTS.iter().any(|part| key.contains(part))
            || key.ends_with("_pwd")
            || words.any(|word| self.keys.contains(word) || ALWAYS_SECRET_WORDS.contains(&word))
    }

    /// The command line, arguments joined by spaces, secrets replaced by `***`.
    pub fn redact(&self, args: &[String]) -> String {
        let line = args
            .iter()
            .map(|arg| self.redact_arg(arg))
            .collect::<Vec<_>>()
            .join(" ");
        self.redact_options(&line)
    }

    /// Option values that are separate words (`--password hunter2`, `-p hunter2`) or
    /// attached short options (`-phunter2`), word by word over the whole line.
    fn redact_options(&self, line: &str) -> String {
        let mut out = Vec::new();
        let mut program: Option<&'static Client> = None;
        // The option whose value the next word is: mask all of it, or after its colon.
        let mut pending: Option<bool> = None;
        for word in line.split(' ') {
            if word.is_empty() {
                out.push(String::new());
                continue;
            }
            if let Some(after_colon) = pending.take() {
                if !word.starts_with('-') {
                    out.push(mask_value(word, after_colon));
                    continue;
                }
            }
            if let Some(found) = client(word) {
                program = Some(found);
            }
            if word.starts_with("--") {
                let (name, value) = word.split_once('=').unwrap_or((word, ""));
                let user_password = program.is_some_and(|c| c.long_user_password.contains(&name));
                if user_password && !value.is_empty() {
                    out.push(format!("{name}={}", mask_value(value, true)));
                    continue;
                }
                if user_password {
                    pending = Some(true);
                } else if !word.contains('=') && self.is_secret_key(word) {
                    pending = Some(false);
                }
                out.push(word.to_string());
                continue;
            }
            let short = word.strip_prefix('-').and_then(|rest| {
                let letter = rest.chars().next()?;
                Some((letter, &rest[letter.len_utf8()..]))
            });
            let option = short.and_then(|(letter, _)| {
                program
                    .into_iter()
                    .flat_map(|c| c.short)
                    .find(|o| o.letter == letter)
                    .copied()
            });
            match (option, short) {
                (Some(option), Some((_, ""))) => {
                    pending = Some(option.after_colon);
                    out.push(word.to_string());
                }
                (Some(option), Some((letter, value))) => {
                    out.push(format!(
                        "-{letter}{}",
                        mask_value(value, option.after_colon)
                    ));
                }
                _ => {
                    // `-password hunter2` (one dash, Java and Go style).
                    if short.is_some() && !word.contains('=') && self.is_secret_key(word) {
                        pending = Some(false);
                    }
                    out.push(word.to_string());
                }
            }
        }
        out.join(" ")
    }

    fn redact_arg(&self, arg: &str) -> String {
        let arg = self.redact_headers(arg);
        let arg = self.redact_json_members(&arg);
        let arg = redact_url_userinfo(&arg);
        self.redact_assignments(&arg)
    }

    /// `"password": "hunter2"` → `"password": "***"`: JSON bodies (`curl -d '{…}'`).
    fn redact_json_members(&self, arg: &str) -> String {
        let mut result = String::with_capacity(arg.len());
        let mut rest = arg;
        while let Some(colon) = rest.find("\":") {
            let (before, after) = rest.split_at(colon + 1);
            let key = before[..colon]
                .rfind('"')
                .map_or("", |start| &before[start + 1..colon]);
            result.push_str(before);
            let after = &after[1..];
            result.push(':');
            let spaces = after.len() - after.trim_start().len();
            let value = &after[spaces..];
            let end = value
                .strip_prefix('"')
                .and_then(|inner| inner.find('"'))
                .map(|end| end + 2);
            match end {
                Some(end) if self.is_secret_key(key) && end > 2 => {
                    result.push_str(&after[..spaces]);
                    result.push('"');
                    result.push_str(MASK);
                    result.push('"');
                    rest = &value[end..];
                }
                _ => rest = after,
            }
        }
        result.push_str(rest);
        result
    }

    /// key=value pairs, alone or inside a query string, a fragment or an option list.
    fn redact_assignments(&self, arg: &str) -> String {
        const KEY_START: [char; 9] = ['?', '&', ';', ',', ' ', '#', '\'', '"', '\t'];
        const VALUE_END: [char; 8] = ['&', ';', ',', ' ', '#', '\'', '"', '\t'];
        let mut result = String::with_capacity(arg.len());
        let mut rest = arg;
        loop {
            let Some(eq) = rest.find('=') else {
                result.push_str(rest);
                break;
            };
            let (before, after) = rest.split_at(eq);
            let key_start = before.rfind(KEY_START).map_or(0, |i| i + 1);
            let key = &before[key_start..];
            result.push_str(before);
            result.push('=');
            let after = &after[1..];
            let value_end = after.find(VALUE_END).unwrap_or(after.len());
            if self.is_secret_key(key) && value_end > 0 {
                result.push_str(MASK);
            } else {
                result.push_str(&after[..value_end]);
            }
            rest = &after[value_end..];
        }
        result
    }

    /// `Authorization: Bearer abc` → `Authorization: Bearer ***`, `X-Auth-Token: abc` →
    /// `X-Auth-Token: ***`: a header name at the start of the argument or of one of its
    /// words (or quoted strings), its value up to the end of the argument or a quote.
    fn redact_headers(&self, arg: &str) -> String {
        let mut result = String::with_capacity(arg.len());
        let mut rest = arg;
        while let Some(colon) = rest.find(':') {
            let (before, after) = rest.split_at(colon);
            let name_start = before
                .char_indices()
                .rev()
                .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .map_or(0, |(i, c)| i + c.len_utf8());
            let name = &before[name_start..];
            let at_word_start = before[..name_start]
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || c == '\'' || c == '"');
            let after = &after[1..];
            let secret_header = !name.is_empty()
                && at_word_start
                && !after.starts_with("//")
                && (SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                    || self.is_secret_key(name));
            result.push_str(before);
            result.push(':');
            if !secret_header {
                rest = after;
                continue;
            }
            let value_start = after.len() - after.trim_start_matches([' ', '\t']).len();
            let value_end = after.find(['\'', '"', '\n', '\r']).unwrap_or(after.len());
            if value_end <= value_start {
                rest = after;
                continue;
            }
            let value = &after[value_start..value_end];
            result.push_str(&after[..value_start]);
            // The scheme (`Bearer`, `Basic`) says what kind of credential it was; only a
            // known one is kept, a first word could be the secret itself.
            match value.split_once(' ') {
                Some((scheme, _))
                    if AUTH_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) =>
                {
                    result.push_str(scheme);
                    result.push(' ');
                }
                _ => {}
            }
            result.push_str(MASK);
            rest = &after[value_end..];
        }
        result.push_str(rest);
        result
    }
}

/// `word` masked whole, or only after its first `:` when there is one and `after_colon`.
fn mask_value(word: &str, after_colon: bool) -> String {
    match word.split_once(':') {
        Some((user, _)) if after_colon => format!("{user}:{MASK}"),
        _ if after_colon => word.to_string(),
        _ => MASK.to_string(),
    }
}

/// The user info of every URL in `arg`: `scheme://user:secret@host` →
/// `scheme://user:***@host`, `scheme://TOKEN@host` → `scheme://***@host`.
fn redact_url_userinfo(arg: &str) -> String {
    const AUTHORITY_END: [char; 9] = ['/', '?', '#', ' ', '\t', '\'', '"', '<', '>'];
    let mut result = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = rest[authority_start..]
            .find(AUTHORITY_END)
            .map_or(rest.len(), |i| authority_start + i);
        let authority = &rest[authority_start..authority_end];
        result.push_str(&rest[..authority_start]);
        match authority.rfind('@') {
            Some(at) if at > 0 => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    // GitHub's `TOKEN:x-oauth-basic@`: the token is the user name.
                    Some((_, "x-oauth-basic")) => result.push_str(MASK),
                    Some((user, _)) => {
                        result.push_str(user);
                        result.push(':');
                        result.push_str(MASK);
                    }
                    None => result.push_str(MASK),
                }
                result.push_str(&authority[at..]);
            }
            _ => result.push_str(authority),
        }
        rest = &rest[authority_end..];
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's default keys (`enrich.redact_keys`).
    fn default_redactor() -> Redactor {
        Redactor::new(&crate::config::Config::default().enrich.redact_keys)
    }

    /// Input argv → the command line reported. Every secret in these is `hunter2` (or
    /// contains it), so that a leak is also caught by the check below the table.
    const CASES: &[(&[&str], &str)] = &[
        // Long options, attached or separate.
        (
            &["app", "--password=hunter2", "--port=80"],
            "app --password=*** --port=80",
        ),
        (
            &["app", "--db-password", "hunter2", "--verbose"],
            "app --db-password *** --verbose",
        ),
        (&["app", "--api-key", "hunter2"], "app --api-key ***"),
        (&["app", "-password", "hunter2"], "app -password ***"),
        (&["app", "--keyfile", "/etc/k"], "app --keyfile /etc/k"),
        (&["app", "--token"], "app --token"),
        (&["app", "--token", "--verbose"], "app --token --verbose"),
        (&["app", "--passenger=3"], "app --passenger=3"),
        // Short password options of clients.
        (
            &["mysql", "-uroot", "-phunter2", "shop"],
            "mysql -uroot -p*** shop",
        ),
        (&["mysql", "-p", "hunter2"], "mysql -p ***"),
        (
            &["/usr/bin/mysqldump", "-h", "db", "-phunter2"],
            "/usr/bin/mysqldump -h db -p***",
        ),
        (&["mariadb", "-phunter2"], "mariadb -p***"),
        (
            &["redis-cli", "-h", "cache", "-a", "hunter2", "ping"],
            "redis-cli -h cache -a *** ping",
        ),
        (&["redis-cli", "-ahunter2"], "redis-cli -a***"),
        (
            &["sshpass", "-p", "hunter2", "ssh", "host"],
            "sshpass -p *** ssh host",
        ),
        (
            &["mongosh", "-u", "app", "-p", "hunter2"],
            "mongosh -u app -p ***",
        ),
        (
            &["ldapsearch", "-D", "cn=admin", "-w", "hunter2"],
            "ldapsearch -D cn=admin -w ***",
        ),
        (
            &["curl", "-u", "app:hunter2", "http://h/"],
            "curl -u app:*** http://h/",
        ),
        (&["curl", "-uapp:hunter2"], "curl -uapp:***"),
        (
            &["curl", "--user", "app:hunter2", "--proxy-user=p:hunter2"],
            "curl --user app:*** --proxy-user=p:***",
        ),
        (
            &["curl", "--oauth2-bearer", "hunter2", "http://h/"],
            "curl --oauth2-bearer *** http://h/",
        ),
        // Inside another command line: sh -c, docker exec.
        (
            &["sh", "-c", "mysql -uroot -phunter2 shop < dump.sql"],
            "sh -c mysql -uroot -p*** shop < dump.sql",
        ),
        (
            &["docker", "exec", "db", "mysql", "-p", "hunter2"],
            "docker exec db mysql -p ***",
        ),
        // Short options of other programs are not passwords.
        (&["ssh", "-p", "2222", "host"], "ssh -p 2222 host"),
        (
            &["nginx", "-p", "/srv/nginx", "-c", "nginx.conf"],
            "nginx -p /srv/nginx -c nginx.conf",
        ),
        (&["redis-cli", "-p", "6380"], "redis-cli -p 6380"),
        // Environment-style assignments.
        (
            &["env", "PGPASSWORD=hunter2", "psql", "-h", "db"],
            "env PGPASSWORD=*** psql -h db",
        ),
        (&["env", "MYSQL_PWD=hunter2", "mysql"], "env MYSQL_PWD=*** mysql"),
        (
            &["env", "GITHUB_TOKEN=hunter2", "AWS_SECRET_ACCESS_KEY=hunter2", "A=b"],
            "env GITHUB_TOKEN=*** AWS_SECRET_ACCESS_KEY=*** A=b",
        ),
        (&["env", "SECRET=hunter2", "A=b"], "env SECRET=*** A=b"),
        (&["env", "PWD=/home/app"], "env PWD=/home/app"),
        (
            &["app", "--opts=user=a,password=hunter2,port=1"],
            "app --opts=user=a,password=***,port=1",
        ),
        // HTTP headers.
        (
            &["curl", "-H", "Authorization: Bearer hunter2", "https://api/"],
            "curl -H Authorization: Bearer *** https://api/",
        ),
        (
            &["curl", "-H", "authorization:Basic aHVudGVyMg==hunter2"],
            "curl -H authorization:Basic ***",
        ),
        (
            &["curl", "-H", "Authorization: hunter2"],
            "curl -H Authorization: ***",
        ),
        // A first word that is no scheme may be the secret itself.
        (
            &["curl", "-H", "Authorization: hunter2 hunter2"],
            "curl -H Authorization: ***",
        ),
        (
            &["curl", "-H", "X-Auth-Token: hunter2", "-H", "X-Api-Key:hunter2"],
            "curl -H X-Auth-Token: *** -H X-Api-Key:***",
        ),
        (
            &["curl", "-H", "Cookie: session=hunter2; theme=dark"],
            "curl -H Cookie: ***",
        ),
        (
            &["sh", "-c", "curl -H 'Authorization: Bearer hunter2' -H \"X-Vault-Token: hunter2\" http://h/"],
            "sh -c curl -H 'Authorization: Bearer ***' -H \"X-Vault-Token: ***\" http://h/",
        ),
        (
            &["curl", "-H", "Accept: text/html", "-H", "Host: a:80"],
            "curl -H Accept: text/html -H Host: a:80",
        ),
        // JSON bodies.
        (
            &["curl", "-d", r#"{"user":"app","password": "hunter2","n":1}"#, "http://h/"],
            r#"curl -d {"user":"app","password": "***","n":1} http://h/"#,
        ),
        (
            &["curl", "-d", r#"{"client_secret":"hunter2"}"#],
            r#"curl -d {"client_secret":"***"}"#,
        ),
        // URL user info, every URL in an argument.
        (
            &["psql", "postgres://app:hunter2@db:5432/x"],
            "psql postgres://app:***@db:5432/x",
        ),
        (
            &["git", "clone", "https://hunter2@github.com/o/r.git"],
            "git clone https://***@github.com/o/r.git",
        ),
        (
            &["app", "--upstreams=http://a:hunter2@one/,https://hunter2@two:8443"],
            "app --upstreams=http://a:***@one/,https://***@two:8443",
        ),
        (
            &["sh", "-c", "wget -q 'https://u:hunter2@h/f' && curl http://hunter2@h2/"],
            "sh -c wget -q 'https://u:***@h/f' && curl http://***@h2/",
        ),
        (
            &["git", "push", "https://hunter2:x-oauth-basic@github.com/o/r"],
            "git push https://***@github.com/o/r",
        ),
        (&["x", "http://host/a@b"], "x http://host/a@b"),
        (&["x", "mailto:a@b"], "x mailto:a@b"),
        // Signed URLs and tokens in query strings and fragments.
        (
            &["curl", "http://h/x?user=a&token=hunter2&x=1"],
            "curl http://h/x?user=a&token=***&x=1",
        ),
        (
            &["curl", "https://acct.blob.core.windows.net/c/f?sv=2022&se=2026&sp=r&sig=hunter2"],
            "curl https://acct.blob.core.windows.net/c/f?sv=2022&se=2026&sp=r&sig=***",
        ),
        (
            &["curl", "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAhunter2%2F20261201&X-Amz-Signature=hunter2&X-Amz-Security-Token=hunter2"],
            "curl https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***",
        ),
        (
            &["app", "--callback=https://h/cb#access_token=hunter2&state=1"],
            "app --callback=https://h/cb#access_token=***&state=1",
        ),
        (&["app", "https://h/p#key=hunter2&x=1"], "app https://h/p#key=***&x=1"),
        (
            &["app", "upstream is http://h/ready?token=hunter2 now"],
            "app upstream is http://h/ready?token=*** now",
        ),
    ];

    #[test]
    fn redaction_table() {
        let redactor = default_redactor();
        let mut failures = Vec::new();
        for (argv, expected) in CASES {
            let args: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            let got = redactor.redact(&args);
            if got != *expected {
                failures.push(format!("{argv:?}\n  want {expected}\n  got  {got}"));
            }
            // The table's secrets are all `hunter2`: none may survive, whatever the case says.
            assert!(!got.contains("hunter2"), "leaked: {argv:?} → {got}");
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Command lines are chosen by any local user: no byte of them may crash the agent.
    /// Every pair of these awkward pieces (multi-byte characters where a slice could cut
    /// one, separators at the very end) goes through as one argument and as two.
    #[test]
    fn no_command_line_panics() {
        const PIECES: [&str; 24] = [
            "-é",
            "-",
            "--",
            "-pé",
            "-aé",
            "mysql",
            "redis-cli",
            "curl",
            "-u",
            "é:é",
            "=",
            "é=é",
            "password=",
            "=é",
            "://",
            "é://é@",
            "https://é:é@",
            "@",
            ":",
            "Authorization:",
            "\"",
            "\"password\":",
            "\"password\": \"é",
            "#é=",
        ];
        let redactor = default_redactor();
        for a in PIECES {
            for b in PIECES {
                redactor.redact(&[a.to_string(), b.to_string()]);
                redactor.redact(&[format!("{a}{b}")]);
                redactor.redact(&[format!("{a} {b}")]);
            }
        }
        // And random lines of the same alphabet (a fixed seed: the same lines every run).
        const ALPHABET: [&str; 22] = [
            "é",
            "-",
            "=",
            ":",
            "/",
            "@",
            "\"",
            "'",
            " ",
            "#",
            "?",
            "&",
            "p",
            "a",
            "u",
            "x",
            "mysql ",
            "curl ",
            "password",
            "Authorization",
            "://",
            "\u{9b}",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5_000 {
            let args: Vec<String> = (0..next() % 4 + 1)
                .map(|_| {
                    (0..next() % 24)
                        .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                        .collect()
                })
                .collect();
            redactor.redact(&args);
        }
    }

    #[test]
    fn configured_keys_still_count() {
        let redactor = Redactor::new(&["session"]);
        let redact = |argv: &[&str]| {
            redactor.redact(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            redact(&["app", "--session-id=abc", "--x-session", "abc", "--id=1"]),
            "app --session-id=*** --x-session *** --id=1"
        );
        // Not configured here, so not a secret: `key` and `pass` are only defaults.
        assert_eq!(redact(&["app", "--api-key=abc"]), "app --api-key=abc");
        // The names that only ever hold secrets are masked whatever the configuration.
        assert_eq!(
            redact(&["env", "PGPASSWORD=abc", "DB_PWD=abc", "--token", "abc"]),
            "env PGPASSWORD=*** DB_PWD=*** --token ***"
        );
    }
}
