//! Compiles `proto/` with tonic, writes the descriptor set that server reflection serves, and
//! generates the proto3 JSON mapping (serde impls) the HTTP/JSON API decodes and encodes with.

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
    // From the same descriptors: field names in lowerCamelCase (both spellings accepted), enums
    // by name, unknown fields refused, as grpcurl does; responses carry zero values too, so a
    // JSON client finds every field it reads.
    let descriptors = std::fs::read(out.join("modserve_descriptor.bin"))?;
    pbjson_build::Builder::new().register_descriptors(&descriptors)?.emit_fields().build(&[".modserve.v1"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
