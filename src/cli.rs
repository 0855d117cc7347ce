//! Operator subcommands beyond `serve` and `check`, each a client of a running kshift.

pub mod backfill;
pub mod bench;
pub mod cutover;
pub mod progress;
pub mod repair;
pub mod routes;
pub mod verify;
