//! What the daemon builds once, as it starts, from the running config, and the restart a
//! commit that changes it takes.
//!
//! Most of a commit takes effect at once (the firewall, the proxy's routes and listeners,
//! accounts, the uplink, retention). Three things are wired when the records open
//! (`crate::lifecycle::start`): whether the SIP proxy runs at all (with its record writer),
//! whether the appliance is one of a pair (the replicator, the takeover of calls, the
//! parity of this node's record ids), and this node's place in the pair. A commit that
//! changes one of them is applied like any other (the firewall enforces it, the revision is
//! kept); then the daemon stops in order (the pair stepped down, every record flushed) and
//! exits with [`crate::EXIT_RESTART`], for its supervisor to start it again (systemd's
//! `Restart=always` on the image) with the new shape. That is how an appliance set up from
//! the factory config gets its proxy and its pair: the site config is committed over the
//! console.
//!
//! In a running pair, a change of shape committed on both appliances at once would restart
//! both at once and drop the calls in progress: it is refused (`crate::dispatch`), with
//! the ways to do it in turn.

use std::sync::Arc;

use callgate_config::Config;
use tokio::sync::{mpsc, watch};

/// The wiring a config asks for when the daemon starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The SIP proxy runs (it has listen addresses).
    sip: bool,
    /// The appliance is one of a pair: `Some(this node's index among the nodes)`.
    pair: Option<Option<u8>>,
}

impl Shape {
    pub fn of(cfg: &Config) -> Shape {
        Shape {
            sip: crate::calls::runs_proxy(cfg),
            pair: cfg.pair.as_ref().map(|p| p.index_of(&cfg.appliance.name)),
        }
    }

    /// What changes from `self` to `next` that only a restart applies; `None`: nothing.
    pub fn change(self, next: Shape) -> Option<String> {
        let mut what = Vec::new();
        match (self.sip, next.sip) {
            (false, true) => what.push("the SIP proxy starts"),
            (true, false) => what.push("the SIP proxy stops"),
            _ => {}
        }
        match (self.pair, next.pair) {
            (None, Some(_)) => what.push("the pair is added"),
            (Some(_), None) => what.push("the pair is removed"),
            (Some(a), Some(b)) if a != b => what.push("this appliance's place in the pair changes"),
            _ => {}
        }
        (!what.is_empty()).then(|| what.join(" and "))
    }
}

/// Follows the running config from `started` (the shape the running daemon was built
/// with) and says once, on `restart`, what a commit changed that needs a restart.
pub async fn follow(
    mut config: watch::Receiver<Arc<Config>>,
    started: Shape,
    restart: mpsc::Sender<String>,
) {
    while config.changed().await.is_ok() {
        let now = Shape::of(&config.borrow_and_update());
        if let Some(what) = started.change(now) {
            let _ = restart.send(what).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sip: bool, pair: Option<Option<u8>>) -> Shape {
        Shape { sip, pair }
    }

    #[test]
    fn only_the_proxy_the_pair_and_the_place_in_it_need_a_restart() {
        let factory = shape(false, None);
        assert_eq!(factory.change(factory), None);
        assert_eq!(
            factory.change(shape(true, Some(Some(0)))).as_deref(),
            Some("the SIP proxy starts and the pair is added")
        );
        let site = shape(true, Some(Some(1)));
        assert_eq!(site.change(site), None);
        assert_eq!(
            site.change(shape(true, Some(Some(0)))).as_deref(),
            Some("this appliance's place in the pair changes")
        );
        assert_eq!(
            site.change(shape(false, Some(Some(1)))).as_deref(),
            Some("the SIP proxy stops")
        );
        assert_eq!(
            site.change(shape(true, None)).as_deref(),
            Some("the pair is removed")
        );
    }

    #[test]
    fn the_shape_is_read_from_the_config() {
        let lab = Config::parse(
            include_str!("../../../config/lab-pair-b.toml"),
            std::path::Path::new("lab-pair-b.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Shape::of(&lab), shape(true, Some(Some(1))));
        let factory = Config::parse(
            include_str!("../../../config/factory.toml"),
            std::path::Path::new("factory.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Shape::of(&factory), shape(false, None));
    }
}
