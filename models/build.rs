//! Compiles Triton's model configuration schema: prost types for the code, and a
//! descriptor set so `config.pbtxt` is parsed by a real text-format parser
//! (prost-reflect) and `/config` answers in protobuf's JSON mapping.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    prost_build::Config::new()
        .file_descriptor_set_path(out.join("model_config.bin"))
        .compile_protos(&["proto/model_config.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/model_config.proto");
    Ok(())
}
