//! A request's validation, as a pure function: the head's facts and the body in, a
//! [`Submission`] or a [`Reject`] (with its HTTP status) out. No I/O, no clock.

use serde::Deserialize;
use zeroize::Zeroizing;

/// The one path the intake serves.
pub const PATH: &str = "/v1/transcripts";
/// The call id's header for `text/plain` bodies.
pub const CALL_ID_HEADER: &str = "x-call-id";
/// The kind's header for `text/plain` bodies (`transcript` when absent).
pub const KIND_HEADER: &str = "x-kind";
/// The longest call id accepted (bytes).
pub const MAX_CALL_ID: usize = 256;

/// What the PBX hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Transcript,
    Note,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Transcript => "transcript",
            Kind::Note => "note",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "transcript" => Some(Kind::Transcript),
            "note" => Some(Kind::Note),
            _ => None,
        }
    }
}

/// A valid submission. The text is the original: wiped when dropped.
#[derive(Debug)]
pub struct Submission {
    pub call_id: String,
    pub kind: Kind,
    pub text: Zeroizing<String>,
}

/// Why a request is refused: its status and a plain reason (which never quotes the body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("not found: the intake serves POST {PATH} only")]
    NotFound,
    #[error("method not allowed: use POST")]
    Method,
    #[error("the body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("unsupported content type: send application/json or text/plain; charset=utf-8")]
    ContentType,
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("the body is not the expected JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Field(String),
    #[error("too many requests from this source: retry later")]
    Rate,
}

impl Reject {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Reject::NotFound => 404,
            Reject::Method => 405,
            Reject::TooLarge(_) => 413,
            Reject::ContentType => 415,
            Reject::NotUtf8 | Reject::Json(_) | Reject::Field(_) => 400,
            Reject::Rate => 429,
        }
    }
}

/// The request's head as far as validation needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Head<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub content_length: Option<u64>,
    /// `X-Call-Id` (text/plain only).
    pub call_id: Option<&'a [u8]>,
    /// `X-Kind` (text/plain only).
    pub kind: Option<&'a [u8]>,
}

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// Checks the head before the body is read: path, method, content type, declared length.
pub fn check_head(head: &Head<'_>, limit: usize) -> Result<Format, Reject> {
    if head.path != PATH {
        return Err(Reject::NotFound);
    }
    if head.method != "POST" {
        return Err(Reject::Method);
    }
    if head
        .content_length
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(Reject::TooLarge(limit));
    }
    let ct = head.content_type.ok_or(Reject::ContentType)?;
    let mut parts = ct.split(';').map(str::trim);
    let mime = parts.next().unwrap_or("").to_ascii_lowercase();
    let params: Vec<String> = parts.map(|p| p.to_ascii_lowercase()).collect();
    let utf8 = params.iter().all(|p| match p.split_once('=') {
        Some(("charset", v)) => matches!(v.trim_matches('"'), "utf-8" | "utf8"),
        _ => true,
    });
    if !utf8 {
        return Err(Reject::ContentType);
    }
    match mime.as_str() {
        "application/json" => Ok(Format::Json),
        "text/plain" => Ok(Format::Text),
        _ => Err(Reject::ContentType),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    call_id: String,
    kind: Kind,
    text: String,
}

/// Checks the whole request: the head ([`check_head`]), then the body, at most `limit`
/// bytes, UTF-8, its fields. The text must hold something other than white space.
pub fn validate(head: &Head<'_>, body: &[u8], limit: usize) -> Result<Submission, Reject> {
    let format = check_head(head, limit)?;
    if body.len() > limit {
        return Err(Reject::TooLarge(limit));
    }
    let body = std::str::from_utf8(body).map_err(|_| Reject::NotUtf8)?;
    let (call_id, kind, text) = match format {
        Format::Json => {
            let b: Body = serde_json::from_str(body).map_err(|e| {
                // serde_json's messages name the field or the position, never the value.
                Reject::Json(json_reason(&e))
            })?;
            (b.call_id, b.kind, Zeroizing::new(b.text))
        }
        Format::Text => {
            let call_id = head
                .call_id
                .ok_or_else(|| Reject::Field("text/plain needs the X-Call-Id header".into()))?;
            let call_id = std::str::from_utf8(call_id)
                .map_err(|_| Reject::Field("X-Call-Id is not a call id".into()))?
                .to_owned();
            let kind = match head.kind {
                None => Kind::Transcript,
                Some(k) => std::str::from_utf8(k)
                    .ok()
                    .and_then(|k| Kind::parse(k.trim()))
                    .ok_or_else(|| Reject::Field("X-Kind: expected transcript or note".into()))?,
            };
            (call_id, kind, Zeroizing::new(body.to_owned()))
        }
    };
    check_call_id(&call_id)?;
    if text.trim().is_empty() {
        return Err(Reject::Field("text is empty".into()));
    }
    if text.contains('\0') {
        return Err(Reject::Field("text holds a NUL character".into()));
    }
    Ok(Submission {
        call_id,
        kind,
        text,
    })
}

/// A SIP Call-ID's characters (RFC 3261 `word`, and `@`): visible ASCII other than the
/// few it excludes; 1 to [`MAX_CALL_ID`] bytes.
pub fn check_call_id(id: &str) -> Result<(), Reject> {
    let ok = !id.is_empty()
        && id.len() <= MAX_CALL_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~()<>:\\\"/[]?{}@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Reject::Field(format!(
            "call_id: expected 1 to {MAX_CALL_ID} characters of a SIP Call-ID (letters, digits, -.!%*_+`'~()<>:\\\"/[]?{{}} and @)"
        )))
    }
}

fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            // Only our own words: serde's messages may quote what the peer sent (an unknown
            // field's name, a variant).
            let msg = e.to_string();
            if msg.starts_with("missing field") {
                msg.split(" at line").next().unwrap_or("").to_owned()
            } else if msg.starts_with("unknown field") {
                "unknown field: expected only call_id, kind and text".into()
            } else if msg.contains("variant") {
                "kind: expected transcript or note".into()
            } else {
                "expected an object of strings {call_id, kind, text}".into()
            }
        }
        Category::Syntax | Category::Eof => {
            format!("malformed JSON at line {} column {}", e.line(), e.column())
        }
        Category::Io => "unreadable".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    fn json() -> Head<'static> {
        Head {
            method: "POST",
            path: PATH,
            content_type: Some("application/json"),
            ..Head::default()
        }
    }

    #[test]
    fn a_json_submission_is_accepted() {
        let s = validate(
            &json(),
            br#"{"call_id":"a84b4c76e66710@pbx.example","kind":"note","text":"call me"}"#,
            1024,
        )
        .unwrap();
        assert_eq!(s.call_id, "a84b4c76e66710@pbx.example");
        assert_eq!(s.kind, Kind::Note);
        assert_eq!(s.text.as_str(), "call me");
        let h = Head {
            content_type: Some("application/json; charset=UTF-8"),
            ..json()
        };
        assert!(validate(&h, br#"{"call_id":"c","kind":"transcript","text":"x"}"#, 64).is_ok());
    }

    #[test]
    fn a_text_submission_takes_its_call_id_from_a_header() {
        let h = Head {
            content_type: Some("text/plain; charset=utf-8"),
            call_id: Some(b"abc@host"),
            ..json()
        };
        let s = validate(&h, "caf\u{e9} notes".as_bytes(), 64).unwrap();
        assert_eq!((s.call_id.as_str(), s.kind), ("abc@host", Kind::Transcript));
        let h = Head {
            kind: Some(b"note"),
            ..h
        };
        assert_eq!(validate(&h, b"x", 64).unwrap().kind, Kind::Note);
        let h = Head {
            kind: Some(b"memo"),
            ..h
        };
        assert_eq!(validate(&h, b"x", 64).unwrap_err().status(), 400);
        let h = Head { call_id: None, ..h };
        assert!(matches!(validate(&h, b"x", 64), Err(Reject::Field(_))));
    }

    #[test]
    fn each_bad_request_gets_its_status() {
        let ok = br#"{"call_id":"c1","kind":"transcript","text":"hello"}"#;
        let cases: Vec<(Head<'static>, &[u8], u16)> = vec![
            (
                Head {
                    path: "/v1/other",
                    ..json()
                },
                ok,
                404,
            ),
            (
                Head {
                    path: "/v1/transcripts/",
                    ..json()
                },
                ok,
                404,
            ),
            (
                Head {
                    method: "GET",
                    ..json()
                },
                ok,
                405,
            ),
            (
                Head {
                    method: "PUT",
                    ..json()
                },
                ok,
                405,
            ),
            (
                Head {
                    content_type: None,
                    ..json()
                },
                ok,
                415,
            ),
            (
                Head {
                    content_type: Some("application/xml"),
                    ..json()
                },
                ok,
                415,
            ),
            (
                Head {
                    content_type: Some("text/plain; charset=latin1"),
                    ..json()
                },
                ok,
                415,
            ),
            (
                Head {
                    content_length: Some(65),
                    ..json()
                },
                ok,
                413,
            ),
            (json(), &[b'a'; 65], 413),
            (
                json(),
                b"{\"call_id\":\"c\",\"kind\":\"note\",\"text\":\"\xff\"}",
                400,
            ),
            (json(), b"{\"call_id\":", 400),
            (json(), b"not json", 400),
            (json(), b"[]", 400),
            (json(), br#"{"call_id":"c","kind":"memo","text":"x"}"#, 400),
            (json(), br#"{"call_id":"c","kind":"note"}"#, 400),
            (
                json(),
                br#"{"call_id":"c","kind":"note","text":"x","more":1}"#,
                400,
            ),
            (json(), br#"{"call_id":5,"kind":"note","text":"x"}"#, 400),
            (json(), br#"{"call_id":"","kind":"note","text":"x"}"#, 400),
            (
                json(),
                br#"{"call_id":"a b","kind":"note","text":"x"}"#,
                400,
            ),
            (
                json(),
                br#"{"call_id":"c\n","kind":"note","text":"x"}"#,
                400,
            ),
            (
                json(),
                br#"{"call_id":"c","kind":"note","text":"  \n "}"#,
                400,
            ),
            (
                json(),
                br#"{"call_id":"c","kind":"note","text":"a\u0000b"}"#,
                400,
            ),
        ];
        for (i, (h, body, status)) in cases.into_iter().enumerate() {
            let r = validate(&h, body, 64);
            assert_eq!(
                r.as_ref().err().map(Reject::status),
                Some(status),
                "case {i}: {r:?}"
            );
        }
        let long = format!(
            r#"{{"call_id":"{}","kind":"note","text":"x"}}"#,
            "c".repeat(257)
        );
        assert_eq!(
            validate(&json(), long.as_bytes(), 1024)
                .unwrap_err()
                .status(),
            400
        );
        let max = format!(
            r#"{{"call_id":"{}","kind":"note","text":"x"}}"#,
            "c".repeat(256)
        );
        assert!(validate(&json(), max.as_bytes(), 1024).is_ok());
    }

    #[test]
    fn a_refusal_never_quotes_the_text() {
        for body in [
            r#"{"call_id":"c","kind":"note","text":"4111111111111111" "#.to_owned(),
            r#"{"call_id":"c","kind":"note","text":4111111111111111}"#.to_owned(),
            r#"{"call_id":"c","kind":"4111111111111111","text":"x"}"#.to_owned(),
            r#"{"call_id":"c","kind":"note","4111111111111111":"x"}"#.to_owned(),
        ] {
            let e = validate(&json(), body.as_bytes(), 1024).unwrap_err();
            assert!(!e.to_string().contains("4111"), "{e}");
        }
    }
}
