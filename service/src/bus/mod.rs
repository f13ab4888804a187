//! The D-Bus edge: the objects ([`isolator`]), the validation of `Isolate` arguments
//! ([`request`]), whose target a call acts on and the actions that needs ([`authz`]), polkit
//! ([`polkit`]), and the engine's errors as D-Bus replies ([`error`]).

pub mod authz;
pub mod error;
pub mod isolator;
pub mod polkit;
pub mod request;
