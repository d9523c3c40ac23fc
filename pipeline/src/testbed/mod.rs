//! The test bed, not production: the znet provider simulator ([`sim`]), the load generator
//! ([`load`]) and the benchmark ([`bench`]), behind `orderflow sim-znet`, `orderflow load`
//! and `orderflow bench`, the demo, the benchmarks and the integration tests.
//!
//! Production modules (core, provider, znet's client and protocol, kafka, db, the stages,
//! metrics, ...) never import this module; only unit tests under `#[cfg(test)]` may (the
//! znet client's tests run against the simulator). It is compiled with the `testbed`
//! feature, on by default; `cargo build --no-default-features` builds a production binary
//! without it and without its subcommands.

pub mod bench;
pub mod load;
pub mod sim;
