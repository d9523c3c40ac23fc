//! The znet provider: its answers parsed (`protocol`), its HTTP client (`client`) and a
//! simulator that speaks the same protocol with fault injection (`sim`).

pub mod client;
pub mod protocol;
pub mod sim;
