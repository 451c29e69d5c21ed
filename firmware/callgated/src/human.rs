//! Times and durations as people read them in the console's text output (the JSON keeps
//! milliseconds since the epoch): times in the appliance's local time zone as RFC 3339
//! with the offset (`2026-12-04T15:50:28+01:00`), durations as `1m04s`.

/// A time, in the appliance's zone (`/etc/localtime`; UTC when it has none).
pub fn time(ms: u64) -> String {
    let Ok(ts) = jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX)) else {
        return "-".into();
    };
    let tz = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
    ts.to_zoned(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// A duration: `950ms`, `4s`, `1m04s`, `2h03m`, `3d04h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Rows as a table: every column as wide as its widest cell, two spaces between, the
/// last column unpadded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = line(header, &width);
    for r in rows {
        out.push_str(&line(r, &width));
    }
    out
}

/// One line of a table: each cell padded to its column's width and two spaces, the last
/// one as it is.
pub fn line(cells: &[impl AsRef<str>], width: &[usize]) -> String {
    let mut l = String::new();
    for (i, c) in cells.iter().enumerate() {
        let c = c.as_ref();
        if i + 1 == cells.len() {
            l.push_str(c);
        } else {
            let w = width.get(i).copied().unwrap_or(0);
            l.push_str(&format!("{c:<w$}  "));
        }
    }
    l.trim_end().to_owned() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(950), "950ms");
        assert_eq!(duration(4_008), "4s");
        assert_eq!(duration(64_000), "1m04s");
        assert_eq!(duration(7_380_000), "2h03m");
        assert_eq!(duration(273_600_000), "3d04h");
    }

    #[test]
    fn times_carry_their_zone() {
        let t = time(1_796_397_000_143);
        // 2026-12-04 in any zone within a day of UTC, with a numeric offset.
        assert!(t.starts_with("2026-12-0"), "{t}");
        assert!(
            t.len() == 25 && (t.contains('+') || t[19..].contains('-')),
            "{t}"
        );
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            &[vec!["1".into(), "x".into(), "last".into()]],
        );
        assert_eq!(t, "A  LONG HEADER  C\n1  x            last\n");
    }
}
