//! An on-disk cache of tokenised datasets, keyed by a fingerprint of the
//! data, the tokenizer, the chat template and the tokenisation settings, so
//! that a second run with the same inputs starts at once.
//!
//! File layout (little endian): the magic `SEALTOK1`, a `u64` header length,
//! a JSON header (`fingerprint`, `summary`, `count`), then per sample: `u32`
//! id length, id bytes, `u64` index, `u8` label code, `u32` response start,
//! `u32` token count, the tokens as `u32`s. Files are written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::fsutil;
use crate::sample::{Label, Sample};
use crate::tokenize::{
    tokenize_samples, TokenizeConfig, TokenizeSummary, TokenizedDataset, TokenizedSample,
};
use crate::tokenizer::TextTokenizer;

const MAGIC: &[u8; 8] = b"SEALTOK1";
/// Bumped whenever tokenisation semantics change, invalidating old caches.
const VERSION: &str = "seal-data tokenize v1";

/// The fingerprint (hex SHA-256) of tokenising `samples` with `tok` and
/// `cfg`: covers every sample's id, label and messages, the full tokenizer
/// definition, the template source, the end-of-turn ids and the settings.
pub fn fingerprint(
    samples: &[Sample],
    tok: &TextTokenizer,
    cfg: &TokenizeConfig,
) -> Result<String> {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(VERSION.as_bytes());
    let tok_json = tok
        .inner()
        .to_string(false)
        .map_err(|e| DataError::Tokenizer {
            path: None,
            message: format!("cannot serialise: {e}"),
        })?;
    field(tok_json.as_bytes());
    let template = cfg.template.as_ref().or(tok.template());
    field(template.map(|t| t.source()).unwrap_or("").as_bytes());
    for t in [
        template.and_then(|t| t.bos_token()),
        template.and_then(|t| t.eos_token()),
    ] {
        field(t.unwrap_or("\u{0}none").as_bytes());
    }
    let eos: Vec<u8> = tok
        .eos_token_ids()
        .iter()
        .flat_map(|i| i.to_le_bytes())
        .collect();
    field(&eos);
    let settings = format!(
        "{}|{:?}|{}",
        cfg.max_len, cfg.policy, cfg.add_special_tokens
    );
    field(settings.as_bytes());
    field(&(samples.len() as u64).to_le_bytes());
    for s in samples {
        field(s.id.as_bytes());
        field(&[Label::code(s.label)]);
        for m in &s.messages {
            field(format!("{:?}", m.role).as_bytes());
            field(m.content.as_bytes());
        }
        // Only when set, so that the fingerprints of samples without one
        // (every cache written before prefills existed) stay the same.
        if let Some(prefill) = &s.prefill {
            field(b"\0prefill");
            field(prefill.as_bytes());
        }
    }
    let digest = h.finalize();
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Serialize, Deserialize)]
struct Header {
    fingerprint: String,
    summary: TokenizeSummary,
    count: usize,
}

/// Writes `data` to `path` under `fingerprint` (atomically).
pub fn save(path: &Path, fingerprint: &str, data: &TokenizedDataset) -> Result<()> {
    let header = Header {
        fingerprint: fingerprint.to_string(),
        summary: data.summary.clone(),
        count: data.samples.len(),
    };
    let header = serde_json::to_vec(&header).map_err(|e| DataError::Cache {
        path: path.to_path_buf(),
        message: format!("cannot encode header: {e}"),
    })?;
    fsutil::write_atomic_with(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for s in &data.samples {
            w.write_all(&(s.id.len() as u32).to_le_bytes())?;
            w.write_all(s.id.as_bytes())?;
            w.write_all(&(s.index as u64).to_le_bytes())?;
            w.write_all(&[Label::code(s.label)])?;
            w.write_all(&(s.response_start as u32).to_le_bytes())?;
            w.write_all(&(s.input_ids.len() as u32).to_le_bytes())?;
            let mut buf = Vec::with_capacity(s.input_ids.len() * 4);
            for t in &s.input_ids {
                buf.extend_from_slice(&t.to_le_bytes());
            }
            w.write_all(&buf)?;
        }
        Ok(())
    })
}

struct Cursor<'a> {
    path: &'a Path,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| DataError::Cache {
                path: self.path.to_path_buf(),
                message: format!("truncated at byte {}", self.pos),
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn bad(&self, message: impl Into<String>) -> DataError {
        DataError::Cache {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Reads a cache file. Returns `Ok(None)` when the file does not exist or
/// holds another fingerprint; a corrupt file is an error.
pub fn load(path: &Path, fingerprint: &str) -> Result<Option<TokenizedDataset>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DataError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut c = Cursor {
        path,
        b: &bytes,
        pos: 0,
    };
    if c.take(8)? != MAGIC {
        return Err(c.bad("not a seal tokenisation cache (bad magic)"));
    }
    let hlen = usize::try_from(c.u64()?).map_err(|_| c.bad("header length overflows"))?;
    let header: Header =
        serde_json::from_slice(c.take(hlen)?).map_err(|e| c.bad(format!("bad header: {e}")))?;
    if header.fingerprint != fingerprint {
        return Ok(None);
    }
    let mut samples = Vec::with_capacity(header.count.min(1 << 24));
    for k in 0..header.count {
        let idlen = c.u32()? as usize;
        let id = std::str::from_utf8(c.take(idlen)?)
            .map_err(|_| c.bad(format!("sample {k}: id is not UTF-8")))?
            .to_string();
        let index = usize::try_from(c.u64()?).map_err(|_| c.bad("index overflows"))?;
        let label = Label::from_code(c.take(1)?[0])
            .ok_or_else(|| c.bad(format!("sample {k}: bad label code")))?;
        let response_start = c.u32()? as usize;
        let n = c.u32()? as usize;
        let raw = c.take(
            n.checked_mul(4)
                .ok_or_else(|| c.bad("token count overflows"))?,
        )?;
        let input_ids: Vec<u32> = raw
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        if response_start == 0 || response_start >= n {
            return Err(c.bad(format!(
                "sample {k} ({id}): response start {response_start} outside 1..{n}"
            )));
        }
        samples.push(TokenizedSample {
            id,
            index,
            label,
            input_ids,
            response_start,
        });
    }
    if c.pos != bytes.len() {
        return Err(c.bad("trailing bytes after the last sample"));
    }
    Ok(Some(TokenizedDataset {
        samples,
        summary: header.summary,
    }))
}

/// Tokenises `samples`, reusing `cache_dir/<fingerprint>.tok` when it
/// exists. Returns the dataset, whether it came from the cache, and the
/// cache file's path.
pub fn tokenize_cached(
    cache_dir: &Path,
    tok: &TextTokenizer,
    samples: &[Sample],
    cfg: &TokenizeConfig,
) -> Result<(TokenizedDataset, bool, PathBuf)> {
    let fp = fingerprint(samples, tok, cfg)?;
    let path = cache_dir.join(format!("{}.tok", &fp[..32]));
    if let Some(data) = load(&path, &fp)? {
        return Ok((data, true, path));
    }
    let data = tokenize_samples(tok, samples, cfg)?;
    save(&path, &fp, &data)?;
    Ok((data, false, path))
}
