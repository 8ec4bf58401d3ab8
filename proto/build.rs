//! Compiles `proto/*.proto` into Rust at build time.
//!
//! We parse the `.proto` files with `protox`, a pure-Rust protobuf compiler, rather
//! than requiring `protoc`: a fresh machine then builds with nothing but cargo, and
//! CI needs no system package for code generation.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/ranger.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // A range's bounds decode as slices of the received buffer, not as
        // a fresh allocation each: a controller probing a million ranges
        // decodes two million of them every probe interval (issue 13).
        .bytes(".ranger.RangeMeta")
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
