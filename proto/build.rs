//! Compiles `apscore.proto` with the protoc binary vendored as a crate, so a bare machine
//! needs no protoc installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=apscore.proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &["apscore.proto"], &["."])?;
    Ok(())
}
