//! The D-Bus edge: the objects ([`isolator`]), the validation of `Isolate` arguments
//! ([`request`]), whose target a call acts on and the actions that needs ([`authz`]), and polkit
//! ([`polkit`]).

pub mod authz;
pub mod isolator;
pub mod polkit;
pub mod request;
