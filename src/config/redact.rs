//! Hiding credentials in text meant for people: configuration dumps, logs and errors.
//!
//! In: any text that may quote a URL or connection string (one URL, a comma-separated list
//! of them, a libpq `key=value` string, an error message). Out: the same text with every
//! `user:password@` (any user info of a `scheme://` URL), and the value of every
//! credential parameter (`password=`, `token=`, `secret=`, … in query strings and key=value
//! strings, quoted or not) replaced by [`REDACTED`]. Everything else is kept, so hosts, ports
//! and database names still help whoever reads it.

/// What a hidden credential shows as.
pub const REDACTED: &str = "[REDACTED]";

/// Characters that end a word (a URL or a `key=value` pair) in free text.
fn is_delimiter(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            ',' | '"' | '\'' | '`' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}'
        )
}

/// Characters that separate parameters inside a word.
fn is_separator(c: char) -> bool {
    matches!(c, '?' | '&' | ';' | '#')
}

/// Whether a parameter named `key` holds a credential.
fn is_secret_key(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key.contains("password")
        || key.contains("token")
        || key.contains("secret")
        || matches!(
            key.as_str(),
            "pass" | "passwd" | "pwd" | "jwt" | "nkey" | "seed" | "private_key" | "privatekey"
        )
}

/// `text` with every credential in it replaced by [`REDACTED`].
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if is_delimiter(c) {
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        // A URL's user info may hold any of the word delimiters (`)`, `'`, `,`, …): hide
        // everything up to its last `@` before reading the rest as a word.
        if let Some((host_start, at)) = url_user_info(rest) {
            out.push_str(&rest[..host_start]);
            out.push_str(REDACTED);
            rest = &rest[at..];
            continue;
        }
        let end = rest.find(is_delimiter).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        let (redacted, value_follows) = redact_word(word);
        out.push_str(&redacted);
        rest = after;
        // `password='a b'`: the value is the quoted text that follows.
        if value_follows && let Some(quote @ ('\'' | '"')) = rest.chars().next() {
            let body = &rest[1..];
            let close = closing_quote(body, quote).unwrap_or(body.len());
            out.push(quote);
            out.push_str(REDACTED);
            rest = &body[close..];
        }
    }
    out
}

/// For text that starts with `scheme://` and has user info: where the user info starts and
/// where its last `@` is. The URL ends at white space or where the next URL of a
/// comma-separated list begins.
fn url_user_info(text: &str) -> Option<(usize, usize)> {
    let scheme_end = text.find("://")?;
    let scheme = &text[..scheme_end];
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let start = scheme_end + 3;
    let body = &text[start..];
    let mut end = body.find(char::is_whitespace).unwrap_or(body.len());
    // `a://u:p@h,b://u:p@h`: the first URL ends before `,b://`.
    for (i, _) in body[..end].match_indices(',') {
        if url_start(&body[i + 1..]) {
            end = i;
            break;
        }
    }
    let at = body[..end].rfind('@')?;
    Some((start, start + at))
}

/// Whether `text` starts with `scheme://`.
fn url_start(text: &str) -> bool {
    match text.find("://") {
        Some(i) => {
            i > 0
                && text.starts_with(|c: char| c.is_ascii_alphabetic())
                && text[..i]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// Where the quote that closes `body` is (a backslash escapes the next character).
fn closing_quote(body: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// One word: its user info and credential parameters hidden. Also says whether it ends in a
/// credential key whose value is not in the word (`password=` before a quote).
fn redact_word(word: &str) -> (String, bool) {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    let has_scheme = word.contains("://");
    if let Some(scheme_end) = word.find("://") {
        let start = scheme_end + 3;
        out.push_str(&word[..start]);
        rest = &word[start..];
        // The last `@` ends the user info (a password may hold an unescaped `@` or `/`).
        if let Some(at) = rest.rfind('@') {
            out.push_str(REDACTED);
            rest = &rest[at..];
        }
    } else if let Some(at) = word.rfind('@')
        && word[..at].contains(':')
    {
        // `user:password@host` without a scheme.
        out.push_str(REDACTED);
        rest = &word[at..];
    }
    let mut value_follows = false;
    let mut first = true;
    for part in rest.split_inclusive(is_separator) {
        let (param, separator) = match part.char_indices().last() {
            Some((i, c)) if is_separator(c) => (&part[..i], &part[i..]),
            _ => (part, ""),
        };
        value_follows = false;
        match param.split_once('=') {
            // The first part of a URL is its host and path, never a parameter.
            Some((key, value)) if is_secret_key(key) && !(first && has_scheme) => {
                out.push_str(key);
                out.push('=');
                if value.is_empty() {
                    value_follows = separator.is_empty();
                } else {
                    out.push_str(REDACTED);
                }
            }
            _ => out.push_str(param),
        }
        out.push_str(separator);
        first = false;
    }
    (out, value_follows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn hides(text: &str, expected: &str, secrets: &[&str]) {
        let got = redact(text);
        assert_eq!(got, expected, "redact({text:?})");
        for secret in secrets {
            assert!(!got.contains(secret), "{secret} leaked: {got}");
        }
    }

    #[test]
    fn user_info_of_a_url_is_hidden() {
        hides(
            "postgres://spot:hunter2@db:5432/spot",
            "postgres://[REDACTED]@db:5432/spot",
            &["hunter2", "spot:"],
        );
        // A token alone, as NATS takes it.
        hides(
            "nats://s3cr3tt0ken@nats:4222",
            "nats://[REDACTED]@nats:4222",
            &["s3cr3tt0ken"],
        );
        // Unescaped `@` and `/` in the password.
        hides(
            "postgres://u:p@ss/w0rd@db/x",
            "postgres://[REDACTED]@db/x",
            &["p@ss", "w0rd"],
        );
        hides("nats://nats:4222", "nats://nats:4222", &[]);
    }

    #[test]
    fn passwords_holding_word_delimiters_are_hidden_whole() {
        // RFC 3986 allows `( ) ' ! * ,` unescaped in user info.
        hides(
            "postgres://spot:ab)cd@h/db",
            "postgres://[REDACTED]@h/db",
            &["ab)cd", "cd@"],
        );
        hides(
            "error: postgres://spot:it's(x),y@db:5432/spot failed",
            "error: postgres://[REDACTED]@db:5432/spot failed",
            &["it's", "(x)", ",y"],
        );
        hides(
            "nats://a:p)1@h1,nats://b:p'2@h2",
            "nats://[REDACTED]@h1,nats://[REDACTED]@h2",
            &["p)1", "p'2"],
        );
    }

    #[test]
    fn every_url_of_a_comma_separated_list_is_hidden() {
        hides(
            "nats://a:pw1@n1:4222,nats://b:pw2@n2:4222, tls://c:pw3@n3:4222",
            "nats://[REDACTED]@n1:4222,nats://[REDACTED]@n2:4222, tls://[REDACTED]@n3:4222",
            &["pw1", "pw2", "pw3"],
        );
    }

    #[test]
    fn credential_parameters_of_a_query_string_are_hidden() {
        hides(
            "postgres://db/spot?user=u&password=pw1&sslmode=require",
            "postgres://db/spot?user=u&password=[REDACTED]&sslmode=require",
            &["pw1"],
        );
        hides(
            "wss://feed/ws?token=tok1;sslpassword=pw2#x",
            "wss://feed/ws?token=[REDACTED];sslpassword=[REDACTED]#x",
            &["tok1", "pw2"],
        );
        hides(
            "https://api/x?Auth_Token=t1&client_secret=s1",
            "https://api/x?Auth_Token=[REDACTED]&client_secret=[REDACTED]",
            &["t1", "s1"],
        );
    }

    #[test]
    fn key_value_connection_strings_are_hidden() {
        hides(
            "host=db port=5432 password=pw1 dbname=spot",
            "host=db port=5432 password=[REDACTED] dbname=spot",
            &["pw1"],
        );
        hides(
            "host=db password='two words\\' pw' user=u",
            "host=db password='[REDACTED]' user=u",
            &["two words", "pw'"],
        );
        hides("token=\"t o k\"", "token=\"[REDACTED]\"", &["t o k"]);
        hides("password=", "password=", &[]);
    }

    #[test]
    fn credentials_inside_error_messages_are_hidden() {
        hides(
            "cannot connect to (nats://u:pw1@h:4222): refused, also u2:pw2@h2",
            "cannot connect to (nats://[REDACTED]@h:4222): refused, also [REDACTED]@h2",
            &["pw1", "pw2"],
        );
        // Addresses without a password stay readable.
        hides("mail ops@example.com", "mail ops@example.com", &[]);
        hides("", "", &[]);
        hides(
            "ünïcode ✓ password=ü",
            "ünïcode ✓ password=[REDACTED]",
            &["=ü"],
        );
    }
}
