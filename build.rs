//! Compiles `proto/changelog.proto` without a system `protoc`: protox parses the schema in pure
//! Rust into a descriptor set, and prost-build generates the Rust types from it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/changelog.proto");
    let fds = protox::compile(["changelog.proto"], ["proto"])?;
    prost_build::Config::new()
        // Text values decode as zero-copy slices of the record buffer.
        .bytes(["."])
        .compile_fds(fds)?;
    Ok(())
}
