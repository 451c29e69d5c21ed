//! What a proxy does with a message from the network, before routing: the
//! syntax checks plus the request checks of RFC 3261 §16.3 that need no state.

use crate::error::ErrorKind;
use crate::message::{parse_with, Framing, Message, UriKind, KNOWN_METHODS};
use crate::Limits;

/// The outcome of [`verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Well-formed; process normally (route, forward, absorb...).
    Accept,
    /// A request to refuse with this status code.
    Reject(u16),
    /// Discard silently (bad responses, unparseable garbage).
    Drop,
}

/// Proxy policy that the verdict depends on.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Size and count limits.
    pub limits: Limits,
    /// Option tags this proxy supports in Proxy-Require (none by default).
    pub proxy_extensions: Vec<String>,
}

/// [`verdict_with`] under the default [`Policy`], for a UDP datagram.
pub fn verdict(bytes: &[u8]) -> Verdict {
    verdict_with(bytes, &Policy::default(), Framing::Datagram)
}

/// Decides what to do with one message from the network.
///
/// Requests are checked in RFC 3261 §16.3 order: syntax (400, or 505/513/413),
/// URI scheme (416), Max-Forwards (483), Proxy-Require (420). A CSeq method
/// mismatch on an unknown method gets 501 (RFC 4475 §3.1.2.18 prefers it at
/// proxies). Anything wrong with a response means [`Verdict::Drop`]
/// (RFC 3261 §16.7, RFC 4475 §3.1.2.19).
pub fn verdict_with(bytes: &[u8], policy: &Policy, framing: Framing) -> Verdict {
    let looks_like_request = looks_like_request(bytes);
    let msg = match parse_with(bytes, &policy.limits, framing) {
        Ok((m, _)) => m,
        Err(e) if e.kind == ErrorKind::Incomplete => return Verdict::Drop,
        Err(e) if looks_like_request => return Verdict::Reject(e.status()),
        Err(_) => return Verdict::Drop,
    };
    check(&msg, policy)
}

/// [`verdict_with`] for a message the caller has already parsed (the proxy's hot path
/// parses once): validation, then the request checks.
pub fn check(msg: &Message<'_>, policy: &Policy) -> Verdict {
    check_with(msg, policy, |_| {}, |_| {})
}

/// [`check`], handing each Via and each Route value validation parses to `on_via` and
/// `on_route`, top first ([`Message::validate_with`]): they mean something only if the
/// verdict is [`Verdict::Accept`].
pub fn check_with<'m>(
    msg: &'m Message<'_>,
    policy: &Policy,
    on_via: impl FnMut(crate::header::Via<'m>),
    on_route: impl FnMut(&crate::header::NameAddr<'m>),
) -> Verdict {
    if let Err(e) = msg.validate_with(&policy.limits, on_via, on_route) {
        if !msg.is_request() {
            return Verdict::Drop;
        }
        let method_unknown = msg.method().is_some_and(|m| !KNOWN_METHODS.contains(&m));
        let cseq_mismatch = msg.cseq().is_ok_and(|c| Some(c.method) != msg.method());
        if method_unknown && cseq_mismatch {
            return Verdict::Reject(501);
        }
        return Verdict::Reject(e.status());
    }
    if !msg.is_request() {
        return Verdict::Accept;
    }
    request_checks(msg, policy)
}

fn request_checks(msg: &Message<'_>, policy: &Policy) -> Verdict {
    // The Request-URI parsed with the start line; its kind was kept then.
    match msg.request_uri_facts().map(|f| f.kind) {
        Ok(UriKind::Sip | UriKind::Tel) => {}
        Ok(UriKind::Absolute) => return Verdict::Reject(416),
        Err(_) => return Verdict::Drop,
    }
    match msg.max_forwards() {
        Ok(Some(0)) if msg.method() != Some("ACK") => return Verdict::Reject(483),
        Ok(Some(0)) => return Verdict::Drop,
        Ok(_) => {}
        Err(e) => return Verdict::Reject(e.status()),
    }
    match msg.proxy_require() {
        Ok(tags) => {
            let unknown = tags.iter().any(|t| {
                !policy
                    .proxy_extensions
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(t))
            });
            if unknown {
                return Verdict::Reject(420);
            }
        }
        Err(e) => return Verdict::Reject(e.status()),
    }
    Verdict::Accept
}

/// Does the first line start with a method token and a space (so a response
/// can be attempted)?
fn looks_like_request(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(bytes.len());
    let line = bytes.get(start..).unwrap_or_default();
    let tok = line
        .iter()
        .take_while(|&&b| crate::syntax::is_token_char(b))
        .count();
    tok > 0 && line.get(tok) == Some(&b' ') && !line.starts_with(b"SIP/")
}
