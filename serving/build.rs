//! Compiles the KServe V2 / Triton gRPC service. `ModelConfig` comes from nexus-models,
//! which compiles model_config.proto, so both crates share one Rust type.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    // The HTTP front end serialises these messages directly: Triton's JSON for metadata,
    // statistics and the repository index uses the proto field names.
    let serialize = "#[derive(serde::Serialize)]";
    let skip_empty = "#[serde(skip_serializing_if = \"String::is_empty\")]";
    tonic_prost_build::configure()
        .build_client(true)
        .bytes(".inference")
        .type_attribute(".inference.ModelMetadataResponse", serialize)
        .type_attribute(".inference.ModelStatisticsResponse", serialize)
        .type_attribute(".inference.ModelStatistics", serialize)
        .type_attribute(".inference.InferStatistics", serialize)
        .type_attribute(".inference.InferBatchStatistics", serialize)
        .type_attribute(".inference.StatisticDuration", serialize)
        .type_attribute(".inference.RepositoryIndexResponse.ModelIndex", serialize)
        .field_attribute(
            ".inference.RepositoryIndexResponse.ModelIndex.version",
            skip_empty,
        )
        .field_attribute(
            ".inference.RepositoryIndexResponse.ModelIndex.state",
            skip_empty,
        )
        .field_attribute(
            ".inference.RepositoryIndexResponse.ModelIndex.reason",
            skip_empty,
        )
        .extern_path(".inference.ModelConfig", "::nexus_models::pb::ModelConfig")
        .compile_protos(&["proto/grpc_service.proto"], &["proto", "../models/proto"])?;
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    println!("cargo:rerun-if-changed=../models/proto/model_config.proto");
    Ok(())
}
