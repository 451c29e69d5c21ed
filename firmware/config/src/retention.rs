//! `[retention]`: how long the appliance keeps its records.
//!
//! ```toml
//! [retention]
//! call_records_days = 90   # a call record goes this many days after its call ended
//! audit_days = 365         # an audit entry goes this many days after it was written
//! ```
//!
//! Each is a whole number of days from 1 to [`MAX_DAYS`]; absent: kept until removed
//! otherwise. The daemon deletes what is older (`callgate_store::Store::expire`) and
//! shreds the key of every subject none of whose records remain.

use serde::Deserialize;

/// The longest retention that can be asked for (100 years): more is a typo.
pub const MAX_DAYS: u32 = 36_500;

/// How long records are kept, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Call records, counted from the end of their call.
    #[serde(default)]
    pub call_records_days: Option<Days>,
    /// Audit entries, counted from when they were written.
    #[serde(default)]
    pub audit_days: Option<Days>,
}

/// A retention in whole days, 1 to [`MAX_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "i64")]
pub struct Days(u32);

impl TryFrom<i64> for Days {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        match u32::try_from(v) {
            Ok(d) if (1..=MAX_DAYS).contains(&d) => Ok(Days(d)),
            _ => Err(format!(
                "expected a whole number of days from 1 to {MAX_DAYS}, got {v}"
            )),
        }
    }
}

impl Days {
    pub fn get(self) -> u32 {
        self.0
    }

    /// In milliseconds.
    pub fn as_ms(self) -> u64 {
        u64::from(self.0) * 86_400_000
    }
}

impl std::fmt::Display for Days {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} days", self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Doc {
        retention: Retention,
    }

    fn parse(s: &str) -> Result<Retention, String> {
        toml::from_str::<Doc>(s)
            .map(|d| d.retention)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn retention_is_parsed_into_days_and_nonsense_is_refused() {
        let r = parse("[retention]\ncall_records_days = 90\naudit_days = 365\n").unwrap();
        assert_eq!(r.call_records_days.map(Days::get), Some(90));
        assert_eq!(r.audit_days.map(Days::as_ms), Some(365 * 86_400_000));
        assert_eq!(parse("[retention]\n").unwrap(), Retention::default());
        for bad in [
            "call_records_days = 0",
            "call_records_days = -1",
            "audit_days = 36501",
            "audit_days = 1.5",
            "audit_days = \"90\"",
            "call_records_days = 99999999999",
            "records_days = 3",
        ] {
            let e = parse(&format!("[retention]\n{bad}\n")).unwrap_err();
            assert!(e.contains("line 2"), "{bad}: {e}");
        }
        let e = parse("[retention]\naudit_days = 0\n").unwrap_err();
        assert!(e.contains("from 1 to 36500"), "{e}");
    }

    #[test]
    fn the_config_file_takes_retention_and_names_the_line_of_a_bad_value() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml");
        let base = std::fs::read_to_string(&path).unwrap();
        let ok = format!("{base}\n[retention]\ncall_records_days = 30\n");
        let cfg = crate::Config::parse(&ok, &path).unwrap();
        assert_eq!(cfg.retention.call_records_days.map(Days::get), Some(30));
        assert_eq!(cfg.retention.audit_days, None);
        assert_eq!(
            crate::Config::parse(&base, &path).unwrap().retention,
            Retention::default()
        );
        let bad = format!("{base}\n[retention]\naudit_days = 0\n");
        let line = bad.lines().count();
        let e = crate::Config::parse(&bad, &path).unwrap_err().to_string();
        assert!(e.contains(&format!(":{line}:")), "{e}");
        assert!(e.contains("from 1 to 36500"), "{e}");
    }
}
