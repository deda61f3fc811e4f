//! File helpers shared by the readers and writers: transparent gzip input,
//! line splitting with per-line UTF-8 checks, and atomic writes (a temporary
//! file in the target's directory, then a rename), so that a crash never
//! leaves a half-written dataset or cache behind.

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
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
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
}
