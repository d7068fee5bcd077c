#![no_main]
//! libFuzzer target; the body is nexus_fuzz_harness::pipeline_spec.

#[global_allocator]
static ALLOC: nexus_fuzz_harness::BoundedAlloc = nexus_fuzz_harness::BoundedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| nexus_fuzz_harness::pipeline_spec(data));
