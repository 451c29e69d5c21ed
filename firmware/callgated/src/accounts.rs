//! The console accounts follow the running config: at start and after every commit the
//! system's accounts and key files are made to match `[[user]]` (`callgate-accounts`:
//! here when the daemon is root, by its accounts helper when it is not).

use std::sync::Arc;

use callgate_accounts::privileged::{Answer, Privileged, Request, WantedAccount};
use callgate_config::Config;
use tokio::sync::watch;

/// Reconciles now and whenever the running config changes (the work runs off the async
/// runtime; one reconcile at a time, the last config wins).
pub fn spawn(
    mut config: watch::Receiver<Arc<Config>>,
    privileged: Arc<Privileged>,
    socket: std::path::PathBuf,
) {
    tokio::spawn(async move {
        loop {
            let cfg = config.borrow_and_update().clone();
            let p = privileged.clone();
            let sock = socket.clone();
            let r = tokio::task::spawn_blocking(move || {
                let wanted =
                    callgate_accounts::wants(&cfg.user, cfg.console.break_glass_password.as_ref());
                let wanted = wanted.iter().map(WantedAccount::from).collect();
                let r = p.call(Request::Reconcile { wanted });
                // The socket's group exists once the first account does.
                if let Err(e) = callgate_control::set_socket_group(&sock) {
                    log::error!("accounts: the control socket's group: {e}");
                }
                r
            })
            .await;
            match r {
                Ok(Ok(Answer::Reconciled { steps, errors })) => {
                    for step in &steps {
                        log::warn!("accounts: {step}");
                    }
                    for e in &errors {
                        log::error!("accounts: {e}");
                    }
                }
                Ok(Ok(Answer::Refused { why })) => log::error!("accounts: refused: {why}"),
                Ok(Ok(other)) => log::error!("accounts: unexpected answer {other:?}"),
                Ok(Err(e)) => log::error!("accounts: {e}"),
                Err(e) => log::error!("accounts: internal error: {e}"),
            }
            if config.changed().await.is_err() {
                return;
            }
        }
    });
}
