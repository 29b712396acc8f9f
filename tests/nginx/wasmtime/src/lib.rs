//! Wasmtime's C API as a C library for ngx_wasm_module: every `wasm_*`,
//! `wasi_*` and `wasmtime_*` symbol of wasmtime-c-api-impl, re-exported so
//! that the `staticlib` and `cdylib` outputs carry them.
pub use wasmtime_c_api::*;
