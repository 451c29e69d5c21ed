//! Parse errors and the status codes they map to.

/// What went wrong, coarse enough to pick the status code a server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ErrorKind {
    /// Syntax error or inconsistent message (RFC 3261 400 Bad Request).
    #[error("malformed message")]
    Malformed,
    /// SIP-Version other than SIP/2.0 (505 Version Not Supported).
    #[error("unsupported SIP version")]
    BadVersion,
    /// The message, a header or a count exceeds the configured [`crate::Limits`]
    /// (513 Message Too Large).
    #[error("message too large")]
    TooLarge,
    /// The body exceeds the configured limit (413 Request Entity Too Large).
    #[error("body too large")]
    BodyTooLarge,
    /// A stream framing needs more bytes (never returned for datagrams).
    #[error("incomplete message")]
    Incomplete,
    /// A URI scheme the element does not understand where one is required
    /// (416 Unsupported URI Scheme).
    #[error("unsupported URI scheme")]
    UnsupportedScheme,
}

impl ErrorKind {
    /// The status code a server answers a request failing this way with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Malformed | ErrorKind::Incomplete => 400,
            ErrorKind::BadVersion => 505,
            ErrorKind::TooLarge => 513,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::UnsupportedScheme => 416,
        }
    }
}

/// A message (or a part of one) could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct ParseError {
    /// The class of error; [`ErrorKind::status`] gives the response code.
    pub kind: ErrorKind,
    /// A static description of what was expected (never echoes input bytes).
    pub detail: &'static str,
}

impl ParseError {
    pub(crate) const fn new(kind: ErrorKind, detail: &'static str) -> Self {
        ParseError { kind, detail }
    }

    pub(crate) const fn malformed(detail: &'static str) -> Self {
        ParseError::new(ErrorKind::Malformed, detail)
    }

    /// The status code a server answers a request failing this way with.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }
}

pub(crate) type Result<T> = std::result::Result<T, ParseError>;
