//! Shared build script for every package whose binaries, tests, examples or
//! benches link libtorch (referenced with `build = "..."` in their manifests).
//!
//! * Adds an rpath to `$LIBTORCH/lib` so nothing needs `LD_LIBRARY_PATH`.
//! * Links `libtorch_cuda` with `--no-as-needed` when the libtorch has it: the
//!   linker would otherwise drop it (no symbol is referenced directly) and
//!   CUDA would silently be unavailable at run time.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set: run `cargo xtask setup` (it installs torch 2.11.0 into .venv)"
        );
        return;
    };
    let libtorch = PathBuf::from(libtorch);
    let lib = libtorch.join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
