//! Transaction matching keys: RFC 3261 §17.1.3 (client) and §17.2.3 (server).

/// The RFC 3261 branch prefix (§8.1.1.7): its presence says the branch is unique.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Which side of a transaction we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// We sent the request.
    Client,
    /// We received the request.
    Server,
}

/// Why a key could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The branch lacks the `z9hG4bK` cookie: an RFC 2543 peer (see [`TransactionKey`]).
    #[error("Via branch does not start with the RFC 3261 magic cookie")]
    NotRfc3261Branch,
    /// The method is empty.
    #[error("empty method")]
    EmptyMethod,
    /// The branch or the sent-by is longer than [`MAX_PART`] bytes.
    #[error("Via branch or sent-by too long for a transaction key")]
    TooLong,
}

/// What identifies a transaction.
///
/// - Server side (§17.2.3): the top Via's `branch` and `sent-by`, and the request
///   method, where an ACK matches the INVITE transaction it acknowledges (so the key of
///   an ACK uses method `INVITE`). CANCEL keeps its own method: it is a transaction of
///   its own with the INVITE's branch.
/// - Client side (§17.1.3): the top Via's `branch` (which we generated) and the CSeq
///   method of the response; `sent-by` is ours and not compared.
///
/// The role is part of the key, so a peer can never hit one of our client transactions
/// by echoing our branch in a request.
///
/// `sent-by` is compared after lowercasing; the caller should pass it with an explicit
/// port (the codec's normalized `host:port`), so `a.example` and `a.example:5060` match.
///
/// **RFC 2543 fallback (not implemented).** A branch without the magic cookie comes from
/// an RFC 2543 element; §17.2.3 then matches on Request-URI, To tag, From tag, Call-ID,
/// CSeq and top Via (and, for an ACK, the To tag of the response sent). Such requests
/// get [`KeyError::NotRfc3261Branch`]; the proxy may handle them statelessly or refuse
/// them.
///
/// Cloning is cheap (a reference count): the table files every key twice (by key and by
/// deadline) and the proxy keeps copies per call.
///
/// One allocation per key (the proxy holds two per call, and memory per dialog is a
/// benchmark figure): an `Arc<str>` of a 7-byte header, then `branch`, `sent_by` and
/// `method` back to back. The header is the role (`C` or `S`) and the lengths of the
/// branch and of the sent-by, 18 bits each in three characters of 6 bits
/// ([`encode_len`]); equality, hashing and order cover it, so two keys are equal exactly
/// when role, branch, sent-by and method are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionKey(std::sync::Arc<str>);

/// Bytes of a key's header: role, then two lengths of three characters.
const HEADER: usize = 7;
/// The longest branch or sent-by a key holds (18 bits).
pub const MAX_PART: usize = (1 << 18) - 1;

/// A length in three printable characters (`0` plus 6 bits each).
fn encode_len(n: usize, into: &mut String) {
    for shift in [12, 6, 0] {
        into.push(char::from(b'0' + ((n >> shift) & 0x3f) as u8));
    }
}

/// The length [`encode_len`] wrote at the start of `s` (0 for anything else).
fn decode_len(s: &[u8]) -> usize {
    s.iter().take(3).fold(0, |n, &c| {
        (n << 6) | usize::from(c.wrapping_sub(b'0') & 0x3f)
    })
}

impl TransactionKey {
    /// The key of a server transaction for a received request (§17.2.3).
    pub fn server(branch: &str, sent_by: &str, method: &str) -> Result<Self, KeyError> {
        let method = if method == "ACK" { "INVITE" } else { method };
        Self::build(Role::Server, branch, &sent_by.to_ascii_lowercase(), method)
    }

    /// The key of a client transaction (§17.1.3): the branch we generated and the
    /// request's method (a response's CSeq method when matching a response).
    pub fn client(branch: &str, method: &str) -> Result<Self, KeyError> {
        Self::build(Role::Client, branch, "", method)
    }

    fn build(role: Role, branch: &str, sent_by: &str, method: &str) -> Result<Self, KeyError> {
        if branch.len() <= MAGIC_COOKIE.len() || !branch.starts_with(MAGIC_COOKIE) {
            return Err(KeyError::NotRfc3261Branch);
        }
        if method.is_empty() {
            return Err(KeyError::EmptyMethod);
        }
        if branch.len() > MAX_PART || sent_by.len() > MAX_PART {
            return Err(KeyError::TooLong);
        }
        let mut text = String::with_capacity(HEADER + branch.len() + sent_by.len() + method.len());
        text.push(match role {
            Role::Client => 'C',
            Role::Server => 'S',
        });
        encode_len(branch.len(), &mut text);
        encode_len(sent_by.len(), &mut text);
        text.push_str(branch);
        text.push_str(sent_by);
        text.push_str(method);
        Ok(TransactionKey(std::sync::Arc::from(text)))
    }

    /// The branch's and the sent-by's lengths.
    fn lens(&self) -> (usize, usize) {
        let b = self.0.as_bytes();
        (
            decode_len(b.get(1..4).unwrap_or_default()),
            decode_len(b.get(4..HEADER).unwrap_or_default()),
        )
    }

    /// Client or server.
    pub fn role(&self) -> Role {
        if self.0.starts_with('S') {
            Role::Server
        } else {
            Role::Client
        }
    }

    /// The Via branch.
    pub fn branch(&self) -> &str {
        let (b, _) = self.lens();
        self.0.get(HEADER..HEADER + b).unwrap_or_default()
    }

    /// The Via sent-by (lowercased; empty for client keys).
    pub fn sent_by(&self) -> &str {
        let (b, s) = self.lens();
        self.0.get(HEADER + b..HEADER + b + s).unwrap_or_default()
    }

    /// The method (methods are case-sensitive, §7.1).
    pub fn method(&self) -> &str {
        let (b, s) = self.lens();
        self.0.get(HEADER + b + s..).unwrap_or_default()
    }

    /// Whether this is an INVITE transaction.
    pub fn is_invite(&self) -> bool {
        self.method() == "INVITE"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_matches_the_invite_server_transaction() {
        let inv = TransactionKey::server("z9hG4bKabc", "10.0.0.1:5060", "INVITE").unwrap();
        let ack = TransactionKey::server("z9hG4bKabc", "10.0.0.1:5060", "ACK").unwrap();
        assert_eq!(inv, ack);
        assert!(ack.is_invite());
    }

    #[test]
    fn cancel_is_its_own_transaction() {
        let inv = TransactionKey::server("z9hG4bKabc", "h:5060", "INVITE").unwrap();
        let cancel = TransactionKey::server("z9hG4bKabc", "h:5060", "CANCEL").unwrap();
        assert_ne!(inv, cancel);
    }

    #[test]
    fn sent_by_and_role_separate_transactions() {
        let a = TransactionKey::server("z9hG4bKabc", "A.example:5060", "BYE").unwrap();
        let b = TransactionKey::server("z9hG4bKabc", "b.example:5060", "BYE").unwrap();
        let a2 = TransactionKey::server("z9hG4bKabc", "a.example:5060", "BYE").unwrap();
        let c = TransactionKey::client("z9hG4bKabc", "BYE").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a2);
        assert_ne!(a, c);
        assert_eq!(a.sent_by(), "a.example:5060");
    }

    /// The parts come back as given, whatever their lengths; a split elsewhere between
    /// branch and sent-by is another key.
    #[test]
    fn parts_round_trip_and_lengths_separate_keys() {
        for (branch, sent_by, method) in [
            ("z9hG4bKa", "h:1", "BYE"),
            (
                "z9hG4bK-long-branch-0123456789",
                "[2001:db8::1]:5061",
                "INVITE",
            ),
            (
                &*format!("z9hG4bK{}", "x".repeat(5000)),
                &*"y".repeat(70000),
                "OPTIONS",
            ),
        ] {
            let k = TransactionKey::server(branch, sent_by, method).unwrap();
            assert_eq!(
                (k.role(), k.branch(), k.sent_by(), k.method()),
                (Role::Server, branch, sent_by, method)
            );
            let c = TransactionKey::client(branch, method).unwrap();
            assert_eq!(
                (c.role(), c.branch(), c.sent_by()),
                (Role::Client, branch, "")
            );
        }
        let a = TransactionKey::server("z9hG4bKab", "c:5060", "BYE").unwrap();
        let b = TransactionKey::server("z9hG4bKa", "bc:5060", "BYE").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            TransactionKey::server("z9hG4bKa", &"h".repeat(MAX_PART + 1), "BYE"),
            Err(KeyError::TooLong)
        );
    }

    #[test]
    fn rfc2543_branches_and_empty_methods_are_refused() {
        assert_eq!(
            TransactionKey::server("abc", "h:5060", "INVITE"),
            Err(KeyError::NotRfc3261Branch)
        );
        assert_eq!(
            TransactionKey::client("z9hG4bK", "INVITE"),
            Err(KeyError::NotRfc3261Branch)
        );
        assert_eq!(
            TransactionKey::client("z9hg4bkabc", "INVITE"),
            Err(KeyError::NotRfc3261Branch)
        );
        assert_eq!(
            TransactionKey::client("z9hG4bKabc", ""),
            Err(KeyError::EmptyMethod)
        );
    }
}
