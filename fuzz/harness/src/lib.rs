//! The bodies of Nexus's fuzz targets, in one place for the two callers that must not
//! drift apart: the libFuzzer binaries in `fuzz/fuzz_targets/` (built by `cargo fuzz`,
//! see `scripts/fuzz.sh`) and the corpus replay in this crate's `tests/corpus.rs`, which
//! runs every committed input of `fuzz/corpus/<target>/` in the workspace's debug build.
//!
//! Each body hands untrusted bytes to the public entry point the server itself uses for
//! them, discards the result, and so checks only what must hold for *any* input: no panic,
//! no abort, no stack overflow and (with [`BoundedAlloc`] as the global allocator) no
//! allocation growing beyond [`LIVE_BYTES_LIMIT`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use nexus_registry::search::{self, Entity};

/// A fuzz target: its name (the folder of its corpus and the name of its binary) and body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order `scripts/fuzz.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "v2_json",
        run: v2_json,
    },
    Target {
        name: "v2_binary",
        run: v2_binary,
    },
    Target {
        name: "grpc_model_infer",
        run: grpc_model_infer,
    },
    Target {
        name: "config_pbtxt",
        run: config_pbtxt,
    },
    Target {
        name: "mlflow_filter",
        run: mlflow_filter,
    },
    Target {
        name: "pipeline_spec",
        run: pipeline_spec,
    },
    Target {
        name: "kfp_ir",
        run: kfp_ir,
    },
];

/// A KServe V2 inference request body in plain JSON, as `POST /v2/models/m/infer` gets it.
pub fn v2_json(data: &[u8]) {
    let _ = nexus_serving::http::codec::decode(&Bytes::copy_from_slice(data), None, "m", "");
}

/// A body using Triton's binary tensor extension: the input's first two bytes (u16, little
/// endian) are the `Inference-Header-Content-Length` value, the rest is the body (a JSON
/// header followed by raw tensor bytes). The length is not clamped: a header length past
/// the end of the body is input too.
pub fn v2_binary(data: &[u8]) {
    let Some((length, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let header_length = usize::from(u16::from_le_bytes(*length));
    let _ = nexus_serving::http::codec::decode(
        &Bytes::copy_from_slice(body),
        Some(header_length),
        "m",
        "",
    );
}

/// An `inference.ModelInferRequest` protobuf message as the gRPC service receives it:
/// decoded by prost, then converted into Nexus's request.
pub fn grpc_model_infer(data: &[u8]) {
    let _ = nexus_serving::grpc::server::decode_infer_request(data);
}

/// A model's `config.pbtxt`. A config that parses must also survive being written back as
/// text and read again, since the model cache stores registry models' configs that way.
pub fn config_pbtxt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = nexus_models::config::parse_text(text) else {
        return;
    };
    let written = nexus_models::config::to_text(&config);
    if let Err(e) = nexus_models::config::parse_text(&written) {
        panic!("config.pbtxt written by to_text does not parse again: {e}\n{written}");
    }
}

/// An MLflow search `filter` (and the same text as an `order_by` clause), translated for
/// every searchable entity, as the `*/search` endpoints do.
pub fn mlflow_filter(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for entity in [
        Entity::Runs,
        Entity::Experiments,
        Entity::RegisteredModels,
        Entity::ModelVersions,
        Entity::LoggedModels,
    ] {
        let _ = search::filter(entity, text, 1);
        let _ = search::order_by(entity, &[text]);
    }
}

/// A Nexus YAML pipeline spec, parsed and checked as at submission.
pub fn pipeline_spec(data: &[u8]) {
    let _ = nexus_pipelines::plan_nexus_spec(data);
}

/// A compiled Kubeflow Pipelines v2 IR document (YAML or JSON), imported as at submission.
pub fn kfp_ir(data: &[u8]) {
    let _ = nexus_pipelines::plan_kfp_ir(data);
}

/// The most heap a process using [`BoundedAlloc`] may hold at once. Fuzz inputs are at most
/// 64 KiB (`-max_len` in `scripts/fuzz.sh`) and the replay's largest generated input about
/// 1 MiB, so reaching this means an allocation sized by a number in the input rather than
/// by the input's length.
pub const LIVE_BYTES_LIMIT: usize = 1 << 30;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and aborting the process (a crash libFuzzer
/// reports with its input) when they would exceed [`LIVE_BYTES_LIMIT`].
pub struct BoundedAlloc;

impl BoundedAlloc {
    /// Counts `size` more live bytes, aborting past the limit.
    fn grow(size: usize) {
        let live = LIVE_BYTES.fetch_add(size, Ordering::Relaxed) + size;
        if live > LIVE_BYTES_LIMIT {
            // Writing to stderr without formatting allocates nothing, so this cannot
            // recurse into the allocator.
            let _ = std::io::stderr().write_all(
                b"BoundedAlloc: more than LIVE_BYTES_LIMIT bytes of heap requested; aborting\n",
            );
            std::process::abort();
        }
    }

    fn shrink(size: usize) {
        LIVE_BYTES.fetch_sub(size, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's own arguments, so the
// contract of `GlobalAlloc` holds as it does for `System`; the counting touches no memory
// that is handed out.
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::grow(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::grow(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned, with its layout.
        unsafe { System.dealloc(ptr, layout) };
        Self::shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            Self::grow(new_size - layout.size());
        }
        // SAFETY: the caller upholds `realloc`'s contract for `ptr`, `layout`, `new_size`.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size < layout.size() {
            Self::shrink(layout.size() - new_size);
        } else if moved.is_null() {
            // The block kept its old size.
            Self::shrink(new_size - layout.size());
        }
        moved
    }
}
