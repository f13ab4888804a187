//! `Step::External`: an effect outside cgroupfs (systemd), delegated to the engine's
//! [`crate::engine::effects::ExternalEffects`].

use super::StepFailure;
use crate::engine::apply::Engine;
use crate::engine::model::{ExternalStep, Step};

pub(super) fn prepare(engine: &Engine, e: &ExternalStep) -> Result<Step, StepFailure> {
    Ok(Step::External(
        engine.effects.prepare(e).map_err(StepFailure::untouched)?,
    ))
}

pub(super) fn perform(engine: &Engine, e: &ExternalStep) -> Result<(), StepFailure> {
    engine.effects.perform(e).map_err(StepFailure::touched)
}

pub(super) fn undo(engine: &Engine, e: &ExternalStep) -> Result<(), String> {
    engine.effects.undo(e).map_err(|e| format!("{e:?}"))
}
