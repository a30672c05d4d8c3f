//! Which requests the server answers: the `Host` and `Origin` checks.
//!
//! A page on any web site can make the user's browser send requests to 127.0.0.1. Two attacks
//! follow, and both are refused here:
//! - DNS rebinding: evil.example resolves to 127.0.0.1 after the page loads, so the page can
//!   read the answers; its requests carry `Host: evil.example`. Only an IP literal, `localhost`
//!   or the name given to `--host`, on the served port, is answered.
//! - Cross-site requests: a form or `fetch` from evil.example that posts or deletes jobs; its
//!   `Origin` is evil.example (and Chromium says `Sec-Fetch-Site: cross-site`). A state-changing
//!   request with an `Origin` that is not this server's is refused. Scripts (curl) send no
//!   `Origin` and are answered.

use std::net::IpAddr;

/// Whether `host` (a `Host` header value) names this server: an IP literal, `localhost` or
/// `served_name`, with the port `port`.
pub fn host_allowed(host: &str, port: u16, served_name: &str) -> bool {
    let Some((name, p)) = split_host_port(host) else {
        return false;
    };
    if p != Some(port) && !(p.is_none() && port == 80) {
        return false;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.parse::<IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost") || name.eq_ignore_ascii_case(served_name)
}

/// Whether a state-changing request may proceed: no `Origin` (a script), or an `Origin` of
/// `http://` + the request's own `Host`; and not marked cross-site by the browser.
pub fn origin_allowed(origin: Option<&str>, host: &str, fetch_site: Option<&str>) -> bool {
    if fetch_site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return false;
    }
    match origin {
        None => true,
        Some(o) => o.strip_prefix("http://").is_some_and(|rest| rest.eq_ignore_ascii_case(host)),
    }
}

/// `name:port` → (name, Some(port)); `[::1]:80` → ("[::1]", Some(80)); `name` → (name, None).
fn split_host_port(host: &str) -> Option<(&str, Option<u16>)> {
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
        return None;
    }
    if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(p) => Some((name, Some(p.parse().ok()?))),
            None if rest.is_empty() => Some((name, None)),
            None => None,
        };
    }
    match host.rsplit_once(':') {
        Some((name, p)) => Some((name, Some(p.parse().ok()?))),
        None => Some((host, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_localhost_and_the_served_name_on_the_served_port_are_answered() {
        assert!(host_allowed("127.0.0.1:8440", 8440, "127.0.0.1"));
        assert!(host_allowed("localhost:8440", 8440, "127.0.0.1"));
        assert!(host_allowed("[::1]:8440", 8440, "::1"));
        assert!(!host_allowed("evil.example:8440", 8440, "127.0.0.1"));
        assert!(!host_allowed("127.0.0.1:8441", 8440, "127.0.0.1"));
        assert!(!host_allowed("127.0.0.1", 8440, "127.0.0.1"));
        assert!(!host_allowed("", 8440, "127.0.0.1"));
        assert!(!host_allowed("localhost.evil.example:8440", 8440, "127.0.0.1"));
    }

    #[test]
    fn a_cross_site_origin_is_refused_and_a_script_without_origin_is_not() {
        assert!(origin_allowed(None, "127.0.0.1:8440", None));
        assert!(origin_allowed(Some("http://127.0.0.1:8440"), "127.0.0.1:8440", Some("same-origin")));
        assert!(!origin_allowed(Some("http://evil.example"), "127.0.0.1:8440", None));
        assert!(!origin_allowed(Some("https://127.0.0.1:8440"), "127.0.0.1:8440", None));
        assert!(!origin_allowed(Some("null"), "127.0.0.1:8440", None));
        assert!(!origin_allowed(None, "127.0.0.1:8440", Some("cross-site")));
    }
}
