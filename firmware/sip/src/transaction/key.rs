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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionKey(std::sync::Arc<KeyParts>);

/// One allocation per key: `branch`, `sent_by` and `method` back to back in `text`.
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct KeyParts {
    role: Role,
    /// Length of the branch and of the sent-by in `text`.
    lens: (u32, u32),
    text: Box<str>,
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
        let mut text = String::with_capacity(branch.len() + sent_by.len() + method.len());
        text.push_str(branch);
        text.push_str(sent_by);
        text.push_str(method);
        Ok(TransactionKey(std::sync::Arc::new(KeyParts {
            role,
            lens: (branch.len() as u32, sent_by.len() as u32),
            text: text.into_boxed_str(),
        })))
    }

    /// Client or server.
    pub fn role(&self) -> Role {
        self.0.role
    }

    /// The Via branch.
    pub fn branch(&self) -> &str {
        self.0
            .text
            .get(..self.0.lens.0 as usize)
            .unwrap_or_default()
    }

    /// The Via sent-by (lowercased; empty for client keys).
    pub fn sent_by(&self) -> &str {
        let (b, s) = self.0.lens;
        self.0
            .text
            .get(b as usize..(b + s) as usize)
            .unwrap_or_default()
    }

    /// The method (methods are case-sensitive, §7.1).
    pub fn method(&self) -> &str {
        let (b, s) = self.0.lens;
        self.0.text.get((b + s) as usize..).unwrap_or_default()
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
