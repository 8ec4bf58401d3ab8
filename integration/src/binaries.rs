//! Where the binaries under test are: next to the test executable.
//!
//! Cargo puts a workspace's binaries in `target/<profile>/` and test
//! executables in `target/<profile>/deps/`. The harness builds nothing: it
//! takes what `cargo test --workspace` (or `cargo build --workspace --bins`)
//! left there, so the tests always run the binaries of the same build.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// The command that builds every binary the harness runs.
pub const BUILD_COMMAND: &str = "cargo build --workspace --bins";

/// The binaries the harness runs, by their cargo names.
pub const RANGERD: &str = "rangerd";
/// The controller's operator client.
pub const RANGERCTL: &str = "rangerctl";
/// A node of the example KV store.
pub const KV_NODE: &str = "kv-node";
/// The KV store's routing proxy.
pub const KV_PROXY: &str = "kv-proxy";
/// The KV store's command-line client.
pub const KV: &str = "kv";
/// The KV store's load generator and checker.
pub const HAMMER: &str = "hammer";

/// The path of binary `name` from the same cargo build as this test, or an
/// error naming the command that builds it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the test executable")?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .with_context(|| format!("{} has no grandparent directory", exe.display()))?;
    let path = profile_dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} is not built: {} is missing. The integration tests run the workspace's \
             binaries and build none themselves: run `cargo test --workspace`, or `{BUILD_COMMAND}` \
             before `cargo test -p ranger-integration` (with the same CARGO_TARGET_DIR and profile)",
            path.display()
        );
    }
    Ok(path)
}
