//! Operator subcommands beyond `serve` and `check`: clients of a running kshift or of its
//! clusters, and `demo`, a live migration on one machine.

pub mod backfill;
pub mod bench;
pub mod cutover;
pub mod demo;
pub mod progress;
pub mod repair;
pub mod routes;
pub mod verify;
