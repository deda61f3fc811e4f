//! Build-script helper for every package whose binaries, tests, examples or
//! benches link libtorch: each such package has a two-line `build.rs` that
//! calls [`link_libtorch`].
//!
//! * Adds an rpath to `$LIBTORCH/lib`, so nothing needs `LD_LIBRARY_PATH`.
//! * Links `libtorch_cuda` with `--no-as-needed` when the libtorch has it: the
//!   linker would otherwise drop it (no symbol is referenced directly) and
//!   CUDA would silently be unavailable at run time.
//! * Reruns only when `LIBTORCH` or the package's `build.rs` changes, so an
//!   unchanged `cargo build`, `cargo test` or `cargo bench` rebuilds nothing.

use std::path::PathBuf;

/// Emits the link arguments above for the calling package's build script.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    // Paths are relative to the calling package's root: its own build.rs.
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set: run `cargo xtask setup` (it installs torch 2.11.0 into .venv)"
        );
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
