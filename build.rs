//! Compiles `proto/` with tonic and writes the descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Honour $PROTOC first so packagers can supply their own; otherwise use the vendored binary,
    // so a fresh machine needs no system protoc.
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Our codec counts a request's entries before prost decodes it (src/serving/grpc/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::serving::grpc::codec::BoundedCodec")
        .file_descriptor_set_path(out.join("modserve_descriptor.bin"))
        .compile_with_config(config, &["proto/modserve/v1/moderation.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
