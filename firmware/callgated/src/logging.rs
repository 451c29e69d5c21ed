//! Logs go to the systemd journal (structured, via `systemd-journal-logger`) when stderr is
//! connected to journald, and to stderr otherwise. The level comes from `CALLGATE_LOG`
//! (read once here, at start-up): error, warn, info (default), debug, trace.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let _ = writeln!(
                std::io::stderr().lock(),
                "callgated[{}]: {:<5} {}: {}",
                std::process::id(),
                r.level(),
                r.target(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

static STDERR: Stderr = Stderr;

pub fn init() {
    let level = std::env::var("CALLGATE_LOG")
        .ok()
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    let journal = systemd_journal_logger::connected_to_journal()
        .then(|| systemd_journal_logger::JournalLog::new().ok())
        .flatten();
    match journal {
        Some(j) => {
            let _ = j
                .with_extra_fields(vec![("CALLGATE_COMPONENT", "callgated")])
                .install();
        }
        None => {
            let _ = log::set_logger(&STDERR);
        }
    }
    log::set_max_level(level);
}
