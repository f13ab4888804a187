//! The engine's effects outside cgroupfs (systemd), behind a trait so that the engine stays
//! synchronous and testable; the daemon implements it over systemd.

use crate::engine::Error;
use crate::engine::model::ExternalStep;

/// Effects outside cgroupfs (systemd), journalled as [`Step::External`].
///
/// `undo` must be safe whether or not `perform` ran (or ran to the end): after a crash the
/// engine undoes steps that were recorded but maybe not performed.
pub trait ExternalEffects {
    /// Called right before the step is journalled: fill in originals (e.g. a unit property's
    /// current value). The returned step is what gets journalled and performed.
    fn prepare(&self, step: &ExternalStep) -> Result<ExternalStep, Error> {
        Ok(step.clone())
    }
    /// Performs the step.
    fn perform(&self, step: &ExternalStep) -> Result<(), Error>;
    /// Undoes the step.
    fn undo(&self, step: &ExternalStep) -> Result<(), Error>;
    /// Waits for work an `undo` left running after it returned (see
    /// [`crate::daemon::systemd_effects`]): the engine calls it before it reads or changes
    /// anything, and the daemon before it exits.
    fn settle(&self) {}
}

/// Accepts every external step and does nothing (hosts without systemd, tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoExternalEffects;

impl ExternalEffects for NoExternalEffects {
    fn perform(&self, _: &ExternalStep) -> Result<(), Error> {
        Ok(())
    }
    fn undo(&self, _: &ExternalStep) -> Result<(), Error> {
        Ok(())
    }
}
