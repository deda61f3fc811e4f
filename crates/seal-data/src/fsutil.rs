//! File helpers shared by the readers and writers: transparent gzip input,
//! line splitting with per-line UTF-8 checks, atomic writes (a temporary
//! file in the target's directory, then a rename), so that a crash never
//! leaves a half-written dataset or cache behind, and the output checks
//! every command runs before it starts: nothing a user did not ask to
//! replace is deleted or renamed over (see [`check_output_dir`],
//! [`StagingDir`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole file into memory, decompressing it when it is gzip
/// (recognised by the gzip magic bytes, whatever the extension).
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| io_err(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| io_err(path, e))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Splits `bytes` into lines (`\n`, with a trailing `\r` removed), checking
/// that each line is valid UTF-8. Yields `(1-based line number, text)`.
pub fn lines<'a>(
    path: &'a Path,
    bytes: &'a [u8],
) -> impl Iterator<Item = Result<(usize, &'a str)>> + 'a {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut parts = bytes.split(|&b| b == b'\n').enumerate().peekable();
    std::iter::from_fn(move || {
        let (i, line) = parts.next()?;
        // A final empty piece after the last newline is not a line.
        if line.is_empty() && parts.peek().is_none() {
            return None;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Some(match std::str::from_utf8(line) {
            Ok(s) => Ok((i + 1, s)),
            Err(e) => Err(DataError::Utf8 {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("byte {} of the line: {e}", e.valid_up_to() + 1),
            }),
        })
    })
}

/// Decodes a whole file as UTF-8, naming the first bad line on failure.
pub fn utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let upto = e.valid_up_to();
            let line = bytes[..upto].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(DataError::Utf8 {
                path: path.to_path_buf(),
                line,
                message: format!("at byte offset {upto}: {e}"),
            })
        }
    }
}

/// Writes a file atomically: `write` fills a temporary file created in the
/// destination directory, which is flushed, synced and renamed over `path`.
/// On error the temporary file is removed and `path` is left untouched.
///
/// Only regular files are ever replaced: a symbolic link is followed (its
/// target is replaced, the link stays), a character device or FIFO (such as
/// `/dev/null`, `/dev/stdout` or a process substitution) is written in place,
/// and a directory, block device or socket is refused.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let path = &resolve_link(path)?;
    if let Some(kind) = special_kind(path)? {
        return write_in_place(path, kind, write);
    }
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let tmp = temp_file_beside(&dir, path);
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        keep_permissions(path, &tmp);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes several files as one unit: every file is first written to a
/// temporary file beside its target, and only when all of them are on disk
/// are they renamed into place (renames need no space). A full disk or any
/// other write error therefore leaves every target as it was.
pub fn write_files_atomic(files: &[(&Path, &[u8])]) -> Result<()> {
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(files.len());
    let cleanup = |staged: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in staged {
            let _ = std::fs::remove_file(tmp);
        }
    };
    for (path, bytes) in files {
        let checked = resolve_link(path).and_then(|target| match special_kind(&target)? {
            Some(kind) => Err(DataError::Output {
                path: target,
                message: format!("is a {kind}; this output must be a regular file"),
            }),
            None => Ok(target),
        });
        let target = match checked {
            Ok(t) => t,
            Err(e) => {
                cleanup(&staged);
                return Err(e);
            }
        };
        let dir = parent_dir(&target);
        let tmp = temp_file_beside(&dir, &target);
        let written = std::fs::create_dir_all(&dir).and_then(|_| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            cleanup(&staged);
            return Err(io_err(&target, e));
        }
        staged.push((tmp, target));
    }
    for (i, (tmp, target)) in staged.iter().enumerate() {
        keep_permissions(target, tmp);
        if let Err(e) = std::fs::rename(tmp, target) {
            cleanup(&staged[i..]);
            return Err(io_err(target, e));
        }
    }
    Ok(())
}

/// The kind of an existing non-regular file at `path` that an output may be
/// written to in place, `None` for a regular or missing file; an error for
/// a directory, block device or socket.
fn special_kind(path: &Path) -> Result<Option<&'static str>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let refuse = |what: &str| {
        Err(DataError::Output {
            path: path.to_path_buf(),
            message: format!("is a {what}, not a file; choose a file path"),
        })
    };
    if meta.is_dir() {
        return refuse("directory");
    }
    if meta.is_file() {
        return Ok(None);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_char_device() {
            return Ok(Some("character device"));
        }
        if t.is_fifo() {
            return Ok(Some("FIFO"));
        }
        if t.is_block_device() {
            return refuse("block device");
        }
        if t.is_socket() {
            return refuse("socket");
        }
    }
    refuse("special file")
}

/// Writes to a character device or FIFO directly (no temporary file, no
/// rename). A FIFO without a reader is an error instead of a hang.
fn write_in_place(
    path: &Path,
    kind: &str,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    #[cfg(unix)]
    if kind == "FIFO" {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| DataError::Output {
        path: path.to_path_buf(),
        message: format!("cannot open this {kind} for writing: {e}"),
    })?;
    #[cfg(unix)]
    if kind == "FIFO" {
        use std::os::unix::io::AsRawFd;
        // Blocking writes from here on: the reader sets the pace.
        // Safety: plain fcntl calls on a descriptor this function owns.
        unsafe {
            let fd = file.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
    let mut w = std::io::BufWriter::new(file);
    write(&mut w)
        .and_then(|_| w.flush())
        .map_err(|e| io_err(path, e))
}

/// `path` with a final symbolic link resolved, so that a rename replaces the
/// link's target and not the link.
fn resolve_link(path: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(path) {
            Ok(p) => Ok(p),
            // A dangling link: write where it points.
            Err(_) => {
                let to = std::fs::read_link(path).map_err(|e| io_err(path, e))?;
                Ok(if to.is_absolute() {
                    to
                } else {
                    parent_dir(path).join(to)
                })
            }
        },
        _ => Ok(path.to_path_buf()),
    }
}

/// `.NAME.tmp-<pid>-<n>` in `dir` for a write to `target`; temporary files
/// of killed writes to the same target are removed first.
fn temp_file_beside(dir: &Path, target: &Path) -> PathBuf {
    let prefix = format!(".{}.tmp-", file_name(target));
    remove_stale(dir, &prefix, false);
    dir.join(unique_name(&prefix))
}

/// `<prefix><pid>-<n>`: the names [`remove_stale`] recognises.
fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}-{}", std::process::id(), unique_suffix())
}

fn keep_permissions(from: &Path, to: &Path) {
    if let Ok(m) = std::fs::metadata(from) {
        let _ = std::fs::set_permissions(to, m.permissions());
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether a process with this id runs (Linux: `/proc/<pid>`); where that
/// cannot be told, it is assumed to run, so nothing of it is removed.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Removes the temporary files (or, with `dirs`, staging directories) that
/// this module names `<prefix><pid>...` in `dir` and whose process is gone:
/// leftovers of killed runs. Nothing else is touched.
fn remove_stale(dir: &Path, prefix: &str, dirs: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if process_alive(pid) {
            continue;
        }
        let Ok(t) = e.file_type() else { continue };
        let removed = if dirs && t.is_dir() {
            std::fs::remove_dir_all(e.path())
        } else if !dirs && t.is_file() {
            std::fs::remove_file(e.path())
        } else {
            continue;
        };
        if removed.is_ok() {
            tracing::info!(path = %e.path().display(), "removed the leftover of a killed run");
        }
    }
}

/// Checks, before any work starts, that a single-file output can be
/// written at `path`: not a directory, block device or socket, and its
/// directory (or the nearest existing ancestor) is a writable directory.
pub fn check_output_file(path: &Path) -> Result<()> {
    let path = resolve_link(path)?;
    if special_kind(&path)?.is_some() {
        return Ok(());
    }
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| DataError::Output {
                path: path.clone(),
                message: format!("cannot be written: {e}"),
            })?;
    }
    check_writable_dir(&parent_dir(&path), &path)
}

/// Checks, before any work starts, that `path` can be a command's output
/// directory: missing (it will be created), or an existing directory that
/// is empty, or (with `force`) any existing directory, whose files of the
/// same names are then replaced and whose other files are left alone.
pub fn check_output_dir(path: &Path, force: bool) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(DataError::Output {
            path: path.to_path_buf(),
            message: "exists and is not a directory; an output directory is expected here".into(),
        }),
        Ok(_) => {
            let entries = std::fs::read_dir(path)
                .map_err(|e| io_err(path, e))?
                .count();
            if entries > 0 && !force {
                return Err(DataError::Output {
                    path: path.to_path_buf(),
                    message: format!(
                        "is not empty ({entries} entries); choose a new directory, or pass \
                         --force to write into it (only the files this command writes are \
                         replaced)"
                    ),
                });
            }
            check_writable_dir(path, path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            check_writable_dir(&parent_dir(path), path)
        }
        Err(e) => Err(io_err(path, e)),
    }
}

/// `dir`, or its nearest existing ancestor, is a directory a file can be
/// created in (probed with a file that is removed at once).
fn check_writable_dir(dir: &Path, output: &Path) -> Result<()> {
    let mut d = dir.to_path_buf();
    loop {
        match std::fs::metadata(&d) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(DataError::Output {
                    path: output.to_path_buf(),
                    message: format!("{} is not a directory", d.display()),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match d.parent() {
                Some(p) if !p.as_os_str().is_empty() => d = p.to_path_buf(),
                _ => {
                    d = PathBuf::from(".");
                    break;
                }
            },
            Err(e) => return Err(io_err(&d, e)),
        }
    }
    let probe = d.join(unique_name(".seal-write-probe-"));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(DataError::Output {
            path: output.to_path_buf(),
            message: format!("cannot create files in {}: {e}", d.display()),
        }),
    }
}

/// A directory that an output is assembled in before it is moved into
/// place: `.NAME.partial-<pid>` beside the target. It is removed when
/// dropped unless [`StagingDir::commit`] moved it into place, so a failed
/// command leaves nothing behind; staging directories of killed runs are
/// removed by the next run that stages the same target.
#[derive(Debug)]
pub struct StagingDir {
    path: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Creates a fresh staging directory for `target`.
    pub fn new(target: &Path) -> Result<Self> {
        // Absolute, so that `.` or `dir/..` get a staging directory beside
        // them and not inside.
        let target = &std::fs::canonicalize(target)
            .or_else(|_| std::path::absolute(target))
            .map_err(|e| io_err(target, e))?;
        if target.file_name().is_none() {
            return Err(DataError::Output {
                path: target.clone(),
                message: "has no name to stage an output beside".into(),
            });
        }
        let parent = parent_dir(target);
        std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, e))?;
        let name = file_name(target);
        let prefix = format!(".{name}.partial-");
        remove_stale(&parent, &prefix, true);
        let path = parent.join(unique_name(&prefix));
        std::fs::create_dir(&path).map_err(|e| io_err(&path, e))?;
        Ok(Self {
            path,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// The staging directory to write into.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the staged files into the target: the whole directory when the
    /// target does not exist, else file by file (a file of the same name is
    /// replaced; every other entry of the target stays).
    pub fn commit(mut self) -> Result<PathBuf> {
        match std::fs::metadata(&self.target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::rename(&self.path, &self.target).map_err(|e| io_err(&self.target, e))?;
            }
            Err(e) => return Err(io_err(&self.target, e)),
            Ok(m) if !m.is_dir() => {
                return Err(DataError::Output {
                    path: self.target.clone(),
                    message: "exists and is not a directory".into(),
                })
            }
            Ok(_) => {
                merge_into(&self.path, &self.target)?;
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Moves every entry of `from` into the existing directory `to`.
fn merge_into(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from).map_err(|e| io_err(from, e))? {
        let e = e.map_err(|e| io_err(from, e))?;
        let dst = to.join(e.file_name());
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && dst.is_dir() {
            merge_into(&e.path(), &dst)?;
            continue;
        }
        if dst.is_dir() {
            return Err(DataError::Output {
                path: dst,
                message: "is a directory where this command writes a file; not replaced".into(),
            });
        }
        std::fs::rename(e.path(), &dst).map_err(|err| io_err(&dst, err))?;
    }
    Ok(())
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (nanos << 16) ^ COUNTER.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_report_bad_utf8_with_line_number() {
        let p = Path::new("x.jsonl");
        let data = b"ok\r\nfine\n\xff\xfe\n";
        let got: Vec<_> = lines(p, data).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().ok(), Some(&(1, "ok")));
        assert_eq!(got[1].as_ref().ok(), Some(&(2, "fine")));
        match &got[2] {
            Err(DataError::Utf8 { line, .. }) => assert_eq!(*line, 3),
            other => panic!("expected a UTF-8 error, got {other:?}"),
        }
    }

    #[test]
    fn gzip_is_transparent_and_atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("a.txt.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"hello\nworld\n").unwrap();
        write_atomic(&gz, &enc.finish().unwrap()).unwrap();
        assert_eq!(read_bytes(&gz).unwrap(), b"hello\nworld\n");
        write_atomic(&gz, b"plain").unwrap();
        assert_eq!(read_bytes(&gz).unwrap(), b"plain");
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_written_in_place_never_renamed_over() {
        let null = Path::new("/dev/null");
        write_atomic(null, b"hello").unwrap();
        let meta = std::fs::metadata(null).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(meta.file_type().is_char_device(), "/dev/null was replaced");
        // A full device is a clear error, not a replaced node.
        let err = write_atomic(Path::new("/dev/full"), &[0u8; 1 << 16]).unwrap_err();
        assert!(err.to_string().contains("/dev/full"), "{err}");
        assert!(std::fs::metadata("/dev/full")
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[test]
    fn directories_are_refused_as_file_outputs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), b"mine").unwrap();
        let err = write_atomic(dir.path(), b"x").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        assert!(check_output_file(dir.path()).is_err());
        assert_eq!(std::fs::read(dir.path().join("keep.txt")).unwrap(), b"mine");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_output_replaces_its_target_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.txt");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
    }

    #[test]
    fn output_dirs_must_be_new_or_empty_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        check_output_dir(&out, false).unwrap();
        std::fs::create_dir(&out).unwrap();
        check_output_dir(&out, false).unwrap();
        std::fs::write(out.join("user.txt"), b"mine").unwrap();
        let err = check_output_dir(&out, false).unwrap_err().to_string();
        assert!(
            err.contains("not empty") && err.contains("--force"),
            "{err}"
        );
        check_output_dir(&out, true).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(check_output_dir(&file, true).is_err());
        assert!(check_output_dir(&file.join("sub"), false).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn unwritable_places_are_found_before_any_work() {
        let err = check_output_dir(Path::new("/proc/seal-out"), false).unwrap_err();
        assert!(err.to_string().contains("/proc"), "{err}");
        assert!(check_output_file(Path::new("/proc/seal-out.json")).is_err());
    }

    #[test]
    fn staging_commits_into_an_existing_dir_without_touching_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("notes.txt"), b"mine").unwrap();
        std::fs::write(target.join("config.json"), b"old").unwrap();
        let staging = StagingDir::new(&target).unwrap();
        std::fs::write(staging.path().join("config.json"), b"new").unwrap();
        std::fs::write(staging.path().join("weights"), b"w").unwrap();
        staging.commit().unwrap();
        assert_eq!(std::fs::read(target.join("notes.txt")).unwrap(), b"mine");
        assert_eq!(std::fs::read(target.join("config.json")).unwrap(), b"new");
        assert_eq!(std::fs::read(target.join("weights")).unwrap(), b"w");
        // Only `model` is left in the parent: no staging directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_staging_is_removed_and_stale_ones_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        {
            let s = StagingDir::new(&target).unwrap();
            std::fs::write(s.path().join("big"), b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A killed run's leftover (a pid that cannot exist) and a user's
        // directory of a similar name.
        let stale = dir.path().join(".out.partial-4194999-1");
        std::fs::create_dir(&stale).unwrap();
        let users = dir.path().join(".out.partial-mine");
        std::fs::create_dir(&users).unwrap();
        let s = StagingDir::new(&target).unwrap();
        if Path::new("/proc/self").exists() {
            assert!(!stale.exists(), "stale staging directory kept");
        }
        assert!(
            users.exists(),
            "a directory this module did not name was removed"
        );
        drop(s);
    }

    #[test]
    fn multi_file_writes_are_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.bin");
        let b = dir.path().join("sub-is-file");
        std::fs::write(&a, b"old a").unwrap();
        std::fs::write(&b, b"file").unwrap();
        // The second target's directory is a file: nothing may change.
        let bad = b.join("b.json");
        let err = write_files_atomic(&[(&a, b"new a"), (&bad, b"b")]).unwrap_err();
        assert!(err.to_string().contains("sub-is-file"), "{err}");
        assert_eq!(std::fs::read(&a).unwrap(), b"old a");
        let ok = dir.path().join("b.json");
        write_files_atomic(&[(&a, b"new a"), (&ok, b"b")]).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"new a");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
