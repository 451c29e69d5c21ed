//! Retention (`[retention]` in the config): at start, hourly, and at every config change
//! (any commit: what an admin runs to apply it at once), the store
//! deletes the records older than their table's retention and shreds the keys no
//! remaining record needs (`callgate_store::Store::expire`, with the clock read here).
//! Followers of a pair run it too, on their own copies; each appliance's clock decides.
//! `hil-tests/tests/retention.rs` moves this daemon's wall clock with libfaketime (the
//! product has no clock of its own to set) and checks it under a sipp load.

use std::sync::Arc;
use std::time::Duration;

use callgate_config::Config;
use callgate_store::Store;
use tokio::sync::watch;

/// Between runs.
const EVERY: Duration = Duration::from_secs(3600);

/// Starts the retention task.
pub fn spawn(mut config: watch::Receiver<Arc<Config>>, store: Arc<Store>) {
    tokio::spawn(async move {
        loop {
            let r = config.borrow_and_update().retention;
            let (cdrs, audit) = (
                r.call_records_days.map(callgate_config::Days::as_ms),
                r.audit_days.map(callgate_config::Days::as_ms),
            );
            if cdrs.is_some() || audit.is_some() {
                let st = store.clone();
                let now = callgate_revisions::now_ms();
                match tokio::task::spawn_blocking(move || st.expire(now, cdrs, audit)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => log::error!("retention: {}", callgate_store::error_chain(&e)),
                    Err(e) => log::error!("retention: internal error: {e}"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                changed = config.changed() => if changed.is_err() { return },
            }
        }
    });
}
