//! The partition engine: the model and the pure [`plan`], the crash-safe [`journal`], and
//! [`apply`] (performs a plan journal first, rolls back, releases, replays at start-up).

pub mod apply;
pub mod journal;
pub mod plan;
