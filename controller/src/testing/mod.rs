//! Conformance suites for the controller's pluggable parts, public so that a
//! new implementation (another store, another discovery, another transport)
//! can prove itself against the same checks ours pass, as openraft ships its
//! storage `Suite`. Behind the `testing` cargo feature.

pub mod transport;
