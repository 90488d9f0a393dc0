//! The gRPC transport: `modserve.v1.Moderation` (`service`), proto <-> domain conversion and
//! request validation (`convert`), and the one mapping from `Error` to `tonic::Status`
//! (`status`). Nothing outside this module sees proto types.

pub mod admin;
pub mod auth;
pub mod codec;
pub mod convert;
pub mod delivery;
pub mod endless;
pub mod feedback;
pub mod service;
pub mod status;
pub mod transport;
pub mod upload;

/// The gRPC listener's name in metrics and logs.
pub(crate) const LISTENER: &str = "grpc";

/// Generated protobuf and tonic code for `proto/modserve/v1/moderation.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("modserve.v1");
    // serde impls in the proto3 JSON mapping, for the HTTP/JSON API (`serving::http`).
    include!(concat!(env!("OUT_DIR"), "/modserve.v1.serde.rs"));

    /// The encoded descriptor set served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("modserve_descriptor");
}
