//! The partition engine: the model and the pure [`plan`], the crash-safe [`journal`], and
//! [`apply`] (performs a plan journal first, rolls back, releases, replays at start-up) with
//! each step kind's prepare/perform/undo in `step`; its
//! [`Error`] becomes an `org.kvmisolate.Error.*` reply only at the bus edge ([`crate::bus::error`]).

pub mod apply;
pub mod effects;
pub mod error;
pub mod journal;
pub mod model;
pub mod partition;
pub mod plan;
pub(crate) mod step;

pub use error::Error;
