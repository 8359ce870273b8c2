//! Secrets kept out of messages: one place that hides credentials in URLs and in text that
//! holds URLs (errors, logs, status, events).
//!
//! What is hidden: the user info of a URL (`user:password@`), its query (presigned S3 URLs
//! and tokens live there) and its fragment. Text that does not parse as a URL is handled
//! by its shape, so a malformed URL in an error message is redacted too. Control
//! characters (newlines, ESC) are escaped by [`text`] so outside text cannot forge log lines.

use url::Url;

/// Shown where a query was.
pub const QUERY: &str = "?<redacted>";
/// Shown where user info was.
pub const USERINFO: &str = "<redacted>@";

/// `url` without user info, query or fragment (`?<redacted>` marks a removed query).
pub fn url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let query = u.query().is_some_and(|q| !q.is_empty());
    u.set_query(None);
    u.set_fragment(None);
    let mut s = u.to_string();
    if query {
        s.push_str(QUERY);
    }
    s
}

/// `text` with every URL-like part (`scheme://…` up to white space or a quote) redacted
/// as [`url()`] does, whether or not it parses, and control characters escaped.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: the letters, digits, '+', '-', '.' before "://".
        let scheme_len = rest[..i]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .map(char::len_utf8)
            .sum::<usize>();
        let start = i - scheme_len;
        out.push_str(&escape_controls(&rest[..start]));
        let tail = &rest[start..];
        // A quoted URL ends at its closing quote (it may hold spaces); a bare one at white
        // space or a quote.
        let quote = rest[..start]
            .chars()
            .next_back()
            .filter(|c| matches!(c, '"' | '\''));
        let end = match quote {
            Some(q) => tail.find(q),
            None => tail.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`')),
        }
        .unwrap_or(tail.len());
        out.push_str(&escape_controls(&url_like(&tail[..end])));
        rest = &tail[end..];
    }
    out.push_str(&escape_controls(rest));
    out
}

/// A value given as one URL (which may not parse, and may hold spaces): redacted as
/// [`url()`] does, by shape when it does not parse, with control characters escaped.
pub fn url_str(value: &str) -> String {
    escape_controls(&url_like(value))
}

/// One URL-like token, redacted by shape: user info before the host, query and fragment.
fn url_like(token: &str) -> String {
    if let Ok(u) = Url::parse(token)
        && u.has_host()
    {
        return url(&u);
    }
    let after_scheme = token.find("://").map_or(0, |i| i + 3);
    let authority_end = token[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(token.len(), |i| after_scheme + i);
    let mut s = String::with_capacity(token.len());
    s.push_str(&token[..after_scheme]);
    match token[after_scheme..authority_end].rfind('@') {
        Some(at) => {
            s.push_str(USERINFO);
            s.push_str(&token[after_scheme + at + 1..authority_end]);
        }
        None => s.push_str(&token[after_scheme..authority_end]),
    }
    let path_and_more = &token[authority_end..];
    match path_and_more.find(['?', '#']) {
        Some(q) => {
            s.push_str(&path_and_more[..q]);
            if path_and_more[q..].starts_with('?') && path_and_more.len() > q + 1 {
                s.push_str(QUERY);
            }
        }
        None => s.push_str(path_and_more),
    }
    s
}

/// User info in a value that may have no scheme (`user:pw@registry/repo`): hidden.
pub fn userinfo(value: &str) -> String {
    let start = value.find("://").map_or(0, |i| i + 3);
    let end = value[start..].find('/').map_or(value.len(), |i| start + i);
    match value[start..end].rfind('@') {
        Some(at) => format!("{}{USERINFO}{}", &value[..start], &value[start + at + 1..]),
        None => value.to_string(),
    }
}

/// Control characters (newline, carriage return, ESC, …) written as escapes, so text from
/// outside (a server's error body, a file name in an archive) stays on its line.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_user_info_query_and_fragment() {
        let u = Url::parse("https://u:p@s3.example/b/k?X-Amz-Signature=s#f").unwrap();
        assert_eq!(url(&u), "https://s3.example/b/k?<redacted>");
        let u = Url::parse("http://127.0.0.1:9/x").unwrap();
        assert_eq!(url(&u), "http://127.0.0.1:9/x");
    }

    #[test]
    fn text_redacts_urls_that_do_not_parse() {
        let t = text("invalid source \"https://u:secretpw@bad host/x?X-Amz-Signature=abc\": bad");
        assert_eq!(
            t,
            "invalid source \"https://<redacted>@bad host/x?<redacted>\": bad"
        );
        let t = text("s3://AKIA:sk@bucket/key?sig=1 and https://ok.example/p");
        assert_eq!(t, "s3://bucket/key?<redacted> and https://ok.example/p");
        let t = text("downloading https://s3/b/k.qcow2?X-Amz-Signature=abc to '/var/lib/vz/import/k.qcow2'");
        assert_eq!(
            t,
            "downloading https://s3/b/k.qcow2?<redacted> to '/var/lib/vz/import/k.qcow2'"
        );
        assert_eq!(text("no url: httpx"), "no url: httpx");
        for secret in ["secretpw", "X-Amz-Signature=abc", "sig=1"] {
            assert!(!text(&format!("a https://u:{secret}@h/p?{secret} b")).contains(secret));
        }
    }

    #[test]
    fn a_whole_value_is_one_url_even_with_spaces() {
        let v = url_str("https://u:secretpw@bad host/x?X-Amz-Signature=abc");
        assert_eq!(v, "https://<redacted>@bad host/x?<redacted>");
        assert_eq!(url_str("disk.img"), "disk.img");
    }

    #[test]
    fn text_escapes_control_characters() {
        assert_eq!(text("a\nFORGED line\x1b[31m"), "a\\nFORGED line\\u{1b}[31m");
    }

    #[test]
    fn user_info_without_a_scheme() {
        assert_eq!(
            userinfo("user:pw@registry.example/app"),
            "<redacted>@registry.example/app"
        );
        assert_eq!(userinfo("vcenter.example:443"), "vcenter.example:443");
        assert_eq!(
            userinfo("https://u:p@vcd.example/api"),
            "https://<redacted>@vcd.example/api"
        );
    }
}
