//! The znet provider: its answers parsed (`protocol`) and its HTTP client (`client`). Its
//! simulator, which speaks the same protocol with fault injection, is test bed
//! (`crate::testbed::sim`).

pub mod client;
pub mod protocol;
