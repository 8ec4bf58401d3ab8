//! Conformance suites for the controller's pluggable parts, public so that a
//! new implementation (another store, another discovery, another transport)
//! can prove itself against the same checks ours pass, as openraft ships its
//! storage `Suite` (DESIGN.md §9: every pluggable part has one public
//! conformance suite that every implementation runs). Behind the `testing`
//! cargo feature: the suites panic on a failed check, as a test does, so they
//! belong in tests only.

pub mod discovery;
pub mod persistence;
pub mod synthetic;
pub mod transport;
