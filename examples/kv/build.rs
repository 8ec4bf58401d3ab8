//! Compiles the example store's own contract, `proto/kv.proto`, into Rust at
//! build time. It belongs to this crate, not to the framework's `ranger-proto`:
//! a storage system sharded with Ranger brings its own service definitions.
//! `protox` is a pure-Rust protobuf compiler, so nothing but cargo is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/kv.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // A snapshot chunk's packed pairs (1 MB) are taken out of the
        // received buffer as they are, not copied into a new vector.
        .bytes(".kv.SnapshotChunk.packed")
        .compile_fds(descriptors)?;
    Ok(())
}
