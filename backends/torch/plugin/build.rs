//! Compiles the C++ half of the plugin (src/shim.cpp: what tch does not expose, such as
//! `forward`'s argument names and inference mode) against the libtorch that tch links,
//! and puts libtorch's folder into the plugin's rpath so that opening the plugin finds it.

fn main() {
    let libtorch = std::env::var("LIBTORCH")
        .expect("LIBTORCH must name the libtorch folder: use scripts/install-torch-backend.sh");
    let root = std::path::Path::new(&libtorch);
    cc::Build::new()
        .cpp(true)
        .file("src/shim.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-w")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .compile("nexus_torch_shim");
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,{}",
        root.join("lib").display()
    );
}
