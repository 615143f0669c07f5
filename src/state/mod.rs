//! The pure decision core: no I/O, no clock, no async. Everything here takes `now` as an
//! argument so it can be table-tested with literal timestamps.

pub mod binding;
pub mod decide;
pub mod dockerconfig;
pub mod inputs;
pub mod jwt;
pub mod lease;
pub mod names;
pub mod reason;
pub mod record;
pub mod refresh;
pub mod scope;
pub mod selector;
pub mod server;
pub mod status_schema;
pub mod tenancy;
pub mod text;
pub mod token;
pub mod verify;
