//! Warming: fetching named images (tag → index → the chosen platforms'
//! manifests → their blobs, optionally their referrers) into the cache
//! before anyone pulls them, through the core's coalesced and verified
//! paths; checking whether an image is servable with the upstream down;
//! and the configured warm sets, refreshed on schedule and pinned.
//!
//! - `engine`: the walk itself, its rate-limit gate and its report.
//! - `sets`: `[[warm]]` sets: start-up warm, schedule, pins, metrics.

mod engine;
mod sets;

pub use engine::{CheckReport, ImageReport, Plan, Warmer};
pub use sets::{known_pins, spawn_sets, KnownPins, PinError, SetOptions, WarmHost};
