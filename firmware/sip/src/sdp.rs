//! SDP (RFC 4566) offers and answers: just what a media pinhole needs, borrowed
//! from the body.

use std::net::{IpAddr, SocketAddr};

use crate::syntax::{find_byte, split_byte, split_once_byte};

/// An SDP parse error (the SIP layer answers 400 or 488 as it sees fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid SDP: {0}")]
pub struct SdpError(pub &'static str);

type Result<T> = std::result::Result<T, SdpError>;

/// Limits on an SDP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdpLimits {
    /// Maximum number of lines.
    pub max_lines: usize,
    /// Maximum number of `m=` sections.
    pub max_media: usize,
}

impl Default for SdpLimits {
    fn default() -> Self {
        SdpLimits {
            max_lines: 512,
            max_media: 16,
        }
    }
}

/// `o=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// Username.
    pub username: &'a str,
    /// Session id.
    pub session_id: &'a str,
    /// Session version.
    pub session_version: &'a str,
    /// Network type (`IN`).
    pub net_type: &'a str,
    /// Address type (`IP4`/`IP6`).
    pub addr_type: &'a str,
    /// Unicast address as written.
    pub address: &'a str,
}

/// `c=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection<'a> {
    /// Network type (`IN`).
    pub net_type: &'a str,
    /// Address type (`IP4`/`IP6`).
    pub addr_type: &'a str,
    /// Address as written (may carry `/ttl[/count]` for multicast).
    pub address: &'a str,
}

impl Connection<'_> {
    /// The address as an IP, if it is one (multicast suffixes stripped).
    pub fn ip(&self) -> Option<IpAddr> {
        let base = split_once_byte(self.address, b'/').map_or(self.address, |(b, _)| b);
        let ip: IpAddr = base.parse().ok()?;
        let family_ok = match ip {
            IpAddr::V4(_) => self.addr_type.eq_ignore_ascii_case("IP4"),
            IpAddr::V6(_) => self.addr_type.eq_ignore_ascii_case("IP6"),
        };
        (self.net_type.eq_ignore_ascii_case("IN") && family_ok).then_some(ip)
    }
}

/// `a=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// Name (before `:`).
    pub name: &'a str,
    /// Value (after `:`), if any.
    pub value: Option<&'a str>,
}

/// Media direction attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv` (default).
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

/// An `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media<'a> {
    /// Media type (`audio`, `video`, ...).
    pub media: &'a str,
    /// Port (0 = rejected/disabled stream).
    pub port: u16,
    /// Port count (`/n`), default 1.
    pub port_count: u16,
    /// Transport protocol (`RTP/AVP`, ...).
    pub proto: &'a str,
    /// Formats (payload types for RTP).
    pub formats: Vec<&'a str>,
    /// Media-level connection, if any.
    pub connection: Option<Connection<'a>>,
    /// Media-level attributes.
    pub attributes: Vec<Attribute<'a>>,
}

impl<'a> Media<'a> {
    /// First attribute with that name.
    pub fn attribute(&self, name: &str) -> Option<&Attribute<'a>> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// `a=rtpmap` for a payload type: the encoding (`PCMU/8000`).
    pub fn rtpmap(&self, pt: &str) -> Option<&'a str> {
        self.attributes
            .iter()
            .filter(|a| a.name == "rtpmap")
            .filter_map(|a| a.value)
            .find_map(|v| {
                let (p, enc) = v.split_once(' ')?;
                (p == pt).then_some(enc.trim())
            })
    }

    /// `a=rtcp:port [IN IP4 addr]`.
    /// `None` when the attribute is absent or malformed (a port that is not a number, an
    /// address part that is not `nettype addrtype address`, anything after it).
    pub fn rtcp(&self) -> Option<(u16, Option<Connection<'a>>)> {
        let v = self.attribute("rtcp")?.value?;
        let mut parts = v.split_ascii_whitespace();
        let port = parts.next()?.parse().ok()?;
        let conn = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (None, _, _, _) => None,
            (Some(n), Some(a), Some(addr), None) => Some(Connection {
                net_type: n,
                addr_type: a,
                address: addr,
            }),
            _ => return None,
        };
        Some((port, conn))
    }
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp<'a> {
    /// `v=` (always 0).
    pub version: &'a str,
    /// `o=`.
    pub origin: Option<Origin<'a>>,
    /// `s=`.
    pub session_name: Option<&'a str>,
    /// Session-level `c=`.
    pub connection: Option<Connection<'a>>,
    /// `t=` lines as (start, stop).
    pub times: Vec<(&'a str, &'a str)>,
    /// Session-level attributes.
    pub attributes: Vec<Attribute<'a>>,
    /// `m=` sections.
    pub media: Vec<Media<'a>>,
}

/// The RTP and RTCP destinations of one media line: what a pinhole opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaFlow<'a> {
    /// Index of the `m=` line.
    pub index: usize,
    /// Media type.
    pub media: &'a str,
    /// RTP address and port.
    pub rtp: SocketAddr,
    /// RTCP address and port (`a=rtcp` or RTP port + 1; equal to RTP with `a=rtcp-mux`).
    pub rtcp: SocketAddr,
    /// Direction.
    pub direction: Direction,
}

impl<'a> Sdp<'a> {
    /// The RTP/RTCP endpoints per active media line, or why the description cannot be
    /// carried (the proxy answers 488): what a media pinhole would open is taken only
    /// from a description that says it exactly.
    ///
    /// - A line with port 0 is a disabled stream: no flow.
    /// - A connection address of `0.0.0.0` or `::` (hold, RFC 3264 §8.4) gives no flow.
    /// - Errors: an active line without a connection address, one that is not an IP
    ///   literal of its `IP4`/`IP6` type (`999.1.1.1`), multicast, a port count other than
    ///   1, a malformed `a=rtcp`, an RTP port of 65535 without `a=rtcp` or `a=rtcp-mux`
    ///   (its RTCP port would be 65536).
    pub fn media_flows(&self) -> Result<Vec<MediaFlow<'a>>> {
        let mut out = Vec::new();
        for (index, m) in self.media.iter().enumerate() {
            if m.port == 0 {
                continue;
            }
            if m.port_count != 1 {
                return Err(SdpError("m= port counts other than 1 are not supported"));
            }
            let conn = m
                .connection
                .or(self.connection)
                .ok_or(SdpError("active m= line without a c= address"))?;
            let ip = checked_ip(&conn)?;
            if ip.is_unspecified() {
                continue;
            }
            let rtp = SocketAddr::new(ip, m.port);
            let rtcp = if m.attribute("rtcp-mux").is_some() {
                rtp
            } else if m.attribute("rtcp").is_some() {
                let (port, conn) = m.rtcp().ok_or(SdpError("malformed a=rtcp"))?;
                if port == 0 {
                    return Err(SdpError("a=rtcp port 0"));
                }
                let ip = match conn {
                    Some(c) => checked_ip(&c)?,
                    None => ip,
                };
                SocketAddr::new(ip, port)
            } else {
                let port = m
                    .port
                    .checked_add(1)
                    .ok_or(SdpError("RTP port 65535 leaves no RTCP port"))?;
                SocketAddr::new(ip, port)
            };
            out.push(MediaFlow {
                index,
                media: m.media,
                rtp,
                rtcp,
                direction: direction(&m.attributes)
                    .or_else(|| direction(&self.attributes))
                    .unwrap_or(Direction::SendRecv),
            });
        }
        Ok(out)
    }
}

/// The unicast IP of a connection line, or why not.
fn checked_ip(c: &Connection<'_>) -> Result<IpAddr> {
    let ip = c.ip().ok_or(SdpError(
        "c= address is not an IP literal of its IN IP4/IP6 type",
    ))?;
    if find_byte(c.address, b'/').is_some() || ip.is_multicast() {
        return Err(SdpError("multicast media is not carried"));
    }
    Ok(ip)
}

fn direction(attrs: &[Attribute<'_>]) -> Option<Direction> {
    attrs.iter().find_map(|a| match a.name {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    })
}

/// Exactly `N` non-empty fields separated by single spaces.
fn fields<'a, const N: usize>(v: &'a str, what: &'static str) -> Result<[&'a str; N]> {
    let mut out = [""; N];
    let mut parts = split_byte(v, b' ');
    for slot in &mut out {
        *slot = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(SdpError(what))?;
    }
    if parts.next().is_some() {
        return Err(SdpError(what));
    }
    Ok(out)
}

fn parse_connection(v: &str) -> Result<Connection<'_>> {
    let [net_type, addr_type, address] = fields::<3>(v, "bad c= line")?;
    Ok(Connection {
        net_type,
        addr_type,
        address,
    })
}

fn parse_media(v: &str) -> Result<Media<'_>> {
    let mut parts = split_byte(v, b' ');
    let media = parts
        .next()
        .filter(|s| !s.is_empty())
        .ok_or(SdpError("bad m= media"))?;
    let port_s = parts.next().ok_or(SdpError("m= without port"))?;
    let (port, count) = match split_once_byte(port_s, b'/') {
        Some((p, c)) => (p, Some(c)),
        None => (port_s, None),
    };
    let num = |s: &str| -> Result<u16> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SdpError("bad m= port"));
        }
        s.parse().map_err(|_| SdpError("m= port out of range"))
    };
    let port = num(port)?;
    let port_count = match count {
        Some(c) => num(c)?,
        None => 1,
    };
    let proto = parts
        .next()
        .filter(|s| !s.is_empty())
        .ok_or(SdpError("m= without proto"))?;
    let formats: Vec<&str> = parts.collect();
    if formats.is_empty() || formats.iter().any(|f| f.is_empty()) {
        return Err(SdpError("m= without formats"));
    }
    Ok(Media {
        media,
        port,
        port_count,
        proto,
        formats,
        connection: None,
        attributes: Vec::new(),
    })
}

/// Parses an SDP body with default limits.
pub fn parse(body: &[u8]) -> Result<Sdp<'_>> {
    parse_with(body, &SdpLimits::default())
}

/// Parses an SDP body. Lines end in CRLF or LF; `v=0` must come first.
pub fn parse_with<'a>(body: &'a [u8], limits: &SdpLimits) -> Result<Sdp<'a>> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError("not UTF-8"))?;
    let mut lines = split_byte(text, b'\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .filter(|(i, l)| !(l.is_empty() && *i > 0));
    let mut sdp = Sdp {
        version: "",
        origin: None,
        session_name: None,
        connection: None,
        times: Vec::new(),
        attributes: Vec::new(),
        media: Vec::new(),
    };
    match lines.next() {
        Some((_, "v=0")) => sdp.version = "0",
        _ => return Err(SdpError("must start with v=0")),
    }
    for (n, line) in lines {
        if n >= limits.max_lines {
            return Err(SdpError("too many lines"));
        }
        let mut bytes = line.bytes();
        let (Some(kind), Some(b'=')) = (bytes.next(), bytes.next()) else {
            return Err(SdpError("line is not <type>=<value>"));
        };
        if !kind.is_ascii_lowercase() {
            return Err(SdpError("bad line type"));
        }
        let value = line.get(2..).unwrap_or("");
        if find_byte(value, b'\r').is_some() {
            return Err(SdpError("bare CR"));
        }
        let in_media = !sdp.media.is_empty();
        match kind {
            b'v' => return Err(SdpError("repeated v=")),
            b'o' if !in_media && sdp.origin.is_none() => {
                let [username, session_id, session_version, net_type, addr_type, address] =
                    fields::<6>(value, "bad o= line")?;
                sdp.origin = Some(Origin {
                    username,
                    session_id,
                    session_version,
                    net_type,
                    addr_type,
                    address,
                });
            }
            b's' if !in_media && sdp.session_name.is_none() => sdp.session_name = Some(value),
            b't' if !in_media => {
                let [start, stop] = fields::<2>(value, "bad t= line")?;
                sdp.times.push((start, stop));
            }
            b'c' => {
                let c = parse_connection(value)?;
                match sdp.media.last_mut() {
                    Some(m) => m.connection = Some(c),
                    None => sdp.connection = Some(c),
                }
            }
            b'm' => {
                if sdp.media.len() >= limits.max_media {
                    return Err(SdpError("too many m= lines"));
                }
                sdp.media.push(parse_media(value)?);
            }
            b'a' => {
                let (name, v) = match split_once_byte(value, b':') {
                    Some((n, v)) => (n, Some(v)),
                    None => (value, None),
                };
                if name.is_empty() {
                    return Err(SdpError("empty attribute"));
                }
                let a = Attribute { name, value: v };
                match sdp.media.last_mut() {
                    Some(m) => m.attributes.push(a),
                    None => sdp.attributes.push(a),
                }
            }
            b'o' | b's' => return Err(SdpError("o=/s= misplaced or repeated")),
            // i u e p b z k r and unknown types: ignored (RFC 4566 §5).
            _ => {}
        }
    }
    Ok(sdp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fields` takes what splitting at every space and asking for exactly `N` non-empty
    /// pieces takes.
    #[test]
    fn fields_are_exactly_n_non_empty_pieces() {
        for v in [
            "a b c", "a  b c", "a b", "a b c d", " a b", "a b ", "", "abc", "a b c ",
        ] {
            let pieces: Vec<&str> = v.split(' ').collect();
            let want = (pieces.len() == 3 && pieces.iter().all(|p| !p.is_empty()))
                .then(|| [pieces[0], pieces[1], pieces[2]]);
            assert_eq!(fields::<3>(v, "x").ok(), want, "{v:?}");
        }
    }

    const OFFER: &[u8] = b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.5\r\ns=-\r\n\
c=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n\
m=video 51372 RTP/AVP 31\r\nc=IN IP6 2001:db8::7\r\na=rtcp:53020\r\na=recvonly\r\n\
m=audio 0 RTP/AVP 0\r\n";

    #[test]
    fn flows() {
        let s = parse(OFFER).unwrap();
        assert_eq!(s.media.len(), 3);
        assert_eq!(s.media[0].rtpmap("0"), Some("PCMU/8000"));
        let f = s.media_flows().unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].rtp, "192.0.2.5:49170".parse().unwrap());
        assert_eq!(f[0].rtcp, "192.0.2.5:49171".parse().unwrap());
        assert_eq!(f[1].rtp, "[2001:db8::7]:51372".parse().unwrap());
        assert_eq!(f[1].rtcp, "[2001:db8::7]:53020".parse().unwrap());
        assert_eq!(f[1].direction, Direction::RecvOnly);
    }

    fn flows_of(body: &str) -> std::result::Result<Vec<MediaFlow<'_>>, SdpError> {
        parse(body.as_bytes())?.media_flows()
    }

    #[test]
    fn flows_refuse_what_a_pinhole_cannot_be_taken_from() {
        let head = "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nt=0 0\r\n";
        for (bad, why) in [
            (
                "c=IN IP4 999.1.1.1\r\nm=audio 4000 RTP/AVP 0\r\n",
                "bad c= address",
            ),
            (
                "c=IN IP6 192.0.2.5\r\nm=audio 4000 RTP/AVP 0\r\n",
                "family mismatch",
            ),
            (
                "c=IN IP4 host.example\r\nm=audio 4000 RTP/AVP 0\r\n",
                "a name",
            ),
            ("m=audio 4000 RTP/AVP 0\r\n", "no c= at all"),
            (
                "c=IN IP4 233.252.0.1/127\r\nm=audio 4000 RTP/AVP 0\r\n",
                "multicast",
            ),
            (
                "c=IN IP4 192.0.2.5\r\nm=audio 4000/2 RTP/AVP 0\r\n",
                "port count",
            ),
            (
                "c=IN IP4 192.0.2.5\r\nm=audio 65535 RTP/AVP 0\r\n",
                "no RTCP port",
            ),
            (
                "c=IN IP4 192.0.2.5\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:x\r\n",
                "rtcp",
            ),
            (
                "c=IN IP4 192.0.2.5\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:0\r\n",
                "rtcp 0",
            ),
            (
                "c=IN IP4 192.0.2.5\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:4001 IN IP4 1.2.3.999\r\n",
                "rtcp addr",
            ),
            (
                "c=IN IP4 192.0.2.5\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:4001 IN IP4\r\n",
                "rtcp short",
            ),
        ] {
            let body = format!("{head}{bad}");
            assert!(flows_of(&body).is_err(), "{why}: {bad}");
        }
        // Port 70000 and 1,000 m= lines do not even parse.
        assert!(parse(
            format!("{head}c=IN IP4 192.0.2.5\r\nm=audio 70000 RTP/AVP 0\r\n").as_bytes()
        )
        .is_err());
        let many = format!(
            "{head}c=IN IP4 192.0.2.5\r\n{}",
            "m=audio 4000 RTP/AVP 0\r\n".repeat(1000)
        );
        assert!(parse(many.as_bytes()).is_err());
        // Hold and disabled streams are fine and open nothing; rtcp-mux and a=rtcp work.
        let ok =
            format!("{head}c=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 31\r\n");
        assert_eq!(flows_of(&ok).unwrap(), vec![]);
        let ok = format!("{head}c=IN IP4 192.0.2.5\r\nm=audio 65535 RTP/AVP 0\r\na=rtcp-mux\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:5000 IN IP4 192.0.2.6\r\n");
        let f = flows_of(&ok).unwrap();
        assert_eq!(f[0].rtcp, "192.0.2.5:65535".parse().unwrap());
        assert_eq!(f[1].rtcp, "192.0.2.6:5000".parse().unwrap());
    }

    #[test]
    fn rejects() {
        assert!(parse(b"o=x\r\n").is_err());
        assert!(parse(b"v=0\r\nm =video 3227 RTP/AVP 31\r\n").is_err());
        assert!(parse(b"v=0\r\nm=audio 99999 RTP/AVP 0\r\n").is_err());
    }
}
