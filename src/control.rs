//! The control plane: how an operator changes and watches a migration. Nothing on the data
//! path imports it; it reads and changes the shared [`ProxyState`] and adds what only it uses.
//!
//! - [`file`] re-applies `[[routes]]`/`[[groups]]` from the config file (on change, SIGHUP);
//! - [`redis`] is the fleet-wide routing source: every instance follows one table;
//! - [`admin`] serves the admin API (routes, verify, backfill, users) and the status page,
//!   whose live figures [`console`] samples;
//! - [`cutover`] is the one way a routing table is put in force: it moves consumer groups
//!   (and their committed positions, translated with the mirror's offset map) when reads
//!   switch;
//! - [`backfill`] queues copies of a topic's history to its mirrors;
//! - [`offset_sync`] copies consumer groups' committed offsets, translated, to the other
//!   clusters holding their topics (`[[groups]] offset_sync_ms`);
//! - [`unrouted`] finds records written to a mirrored partition around kshift (they would
//!   be lost at cutover).

pub mod admin;
pub mod backfill;
pub mod console;
pub mod cutover;
pub mod file;
pub mod offset_sync;
pub mod redis;
pub mod unrouted;

use std::sync::Arc;

use crate::state::ProxyState;

/// The control plane's state: the data plane's, plus the routing source, the sync's and the
/// unrouted check's findings and the console's history.
#[derive(Debug)]
pub struct Control {
    pub state: Arc<ProxyState>,
    /// The fleet-wide routing source, when `[routing] redis` is set: updates go through it.
    pub redis: Option<Arc<redis::RedisSource>>,
    /// What the continuous consumer-offset sync (`[[groups]] offset_sync_ms`) has done.
    pub offset_sync: offset_sync::Stats,
    /// Records found written around kshift.
    pub unrouted: unrouted::Unrouted,
    /// The status page's migration console: rates, lag history, group positions, verify.
    pub console: console::Console,
}

/// The control plane sees everything the data plane does: `control.clusters`,
/// `control.routing`, … read the shared [`ProxyState`].
impl std::ops::Deref for Control {
    type Target = ProxyState;

    fn deref(&self) -> &ProxyState {
        &self.state
    }
}
