//! `.pt` selectors: `seal_bilevel::torch_pt::read_pt_tensor` (stored zip +
//! pickle). The seed is what `torch.save(tensor)` writes, built by hand:
//! every pickle opcode and argument is a recorded field, and so is every
//! size, offset, count and name length of the zip records. Pickle
//! mutations are re-zipped with correct CRCs so they reach the unpickler.

use std::path::Path;

use seal_bilevel::torch_pt::read_pt_tensor;

use super::{Case, Pool, Target};
use crate::mutate::{havoc, mutate_structured, FieldKind, Rng, Structured};

struct Pickle {
    s: Structured,
    memo: u8,
}

impl Pickle {
    fn op(&mut self, op: u8) {
        self.s.field(u64::from(op), 1, FieldKind::Opcode);
    }
    fn memo(&mut self) {
        self.op(b'q');
        self.s.field(u64::from(self.memo), 1, FieldKind::Int);
        self.memo += 1;
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.s.raw(format!("{module}\n{name}\n").as_bytes());
        self.memo();
    }
    fn str(&mut self, t: &str) {
        self.op(b'X');
        self.s.field(t.len() as u64, 4, FieldKind::Len);
        self.s.raw(t.as_bytes());
        self.memo();
    }
    /// An int in the seed's chosen width (K, J or LONG1).
    fn int(&mut self, v: i64, wide: u8) {
        match wide {
            0 => {
                self.op(b'K');
                self.s.field(v as u64, 1, FieldKind::Dim);
            }
            1 => {
                self.op(b'J');
                self.s.field(v as u64, 4, FieldKind::Dim);
            }
            _ => {
                self.op(0x8a);
                self.s.field(8, 1, FieldKind::Len);
                self.s.field(v as u64, 8, FieldKind::Dim);
            }
        }
    }
    fn tuple(&mut self, items: &[i64], wide: u8) {
        self.op(b'(');
        for &i in items {
            self.int(i, wide);
        }
        self.op(b't');
        self.memo();
    }
}

/// The pickle `torch.save` writes for a tensor of `size` (contiguous) over
/// storage key `0`; `param` wraps it in `_rebuild_parameter`.
pub fn tensor_pickle(storage: &str, size: &[i64], wide: u8, param: bool) -> Structured {
    let mut p = Pickle {
        s: Structured::default(),
        memo: 0,
    };
    p.op(0x80);
    p.s.field(2, 1, FieldKind::Int);
    if param {
        p.global("torch._utils", "_rebuild_parameter");
        p.op(b'(');
    }
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.op(b'(');
    p.op(b'(');
    p.str("storage");
    p.global("torch", storage);
    p.str("0");
    p.str("cuda:0");
    let numel: i64 = size.iter().product();
    p.int(numel, wide);
    p.op(b't');
    p.memo();
    p.op(b'Q');
    p.int(0, wide);
    p.tuple(size, wide);
    let mut stride = vec![1i64; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * size[i + 1];
    }
    p.tuple(&stride, wide);
    p.op(0x89);
    p.global("collections", "OrderedDict");
    p.op(b')');
    p.op(b'R');
    p.memo();
    p.op(b't');
    p.memo();
    p.op(b'R');
    p.memo();
    if param {
        p.op(0x88);
        p.global("collections", "OrderedDict");
        p.op(b')');
        p.op(b'R');
        p.memo();
        p.op(b't');
        p.memo();
        p.op(b'R');
        p.memo();
    }
    p.op(b'.');
    p.s
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A stored zip of `entries`, data aligned to 64 bytes as PyTorch does,
/// with every header field recorded.
pub fn write_zip(entries: &[(String, Vec<u8>)]) -> Structured {
    let mut z = Structured::default();
    let mut locals = Vec::new();
    for (name, data) in entries {
        locals.push(z.bytes.len() as u64);
        let crc = crc32(data);
        z.raw(&0x0403_4b50u32.to_le_bytes());
        z.raw(&[20, 0, 0, 0]);
        z.field(0, 2, FieldKind::Dtype);
        z.raw(&[0; 4]);
        z.field(u64::from(crc), 4, FieldKind::Int);
        z.field(data.len() as u64, 4, FieldKind::Len);
        z.field(data.len() as u64, 4, FieldKind::Len);
        z.field(name.len() as u64, 2, FieldKind::Len);
        let header_end = z.bytes.len() + 2 + name.len();
        let pad = (64 - (header_end + 4) % 64) % 64;
        z.field(4 + pad as u64, 2, FieldKind::Len);
        z.raw(name.as_bytes());
        z.raw(&0x4b46u16.to_le_bytes());
        z.field(pad as u64, 2, FieldKind::Len);
        z.raw(&vec![b'Z'; pad]);
        z.raw(data);
    }
    let cd_start = z.bytes.len() as u64;
    for ((name, data), local) in entries.iter().zip(&locals) {
        z.raw(&0x0201_4b50u32.to_le_bytes());
        z.raw(&[20, 0, 20, 0, 0, 0]);
        z.field(0, 2, FieldKind::Dtype);
        z.raw(&[0; 4]);
        z.field(u64::from(crc32(data)), 4, FieldKind::Int);
        z.field(data.len() as u64, 4, FieldKind::Len);
        z.field(data.len() as u64, 4, FieldKind::Len);
        z.field(name.len() as u64, 2, FieldKind::Len);
        z.field(0, 2, FieldKind::Len);
        z.field(0, 2, FieldKind::Len);
        z.raw(&[0; 8]);
        z.field(*local, 4, FieldKind::Offset);
        z.raw(name.as_bytes());
    }
    let cd_size = z.bytes.len() as u64 - cd_start;
    z.raw(&0x0605_4b50u32.to_le_bytes());
    z.raw(&[0; 4]);
    z.field(entries.len() as u64, 2, FieldKind::Count);
    z.field(entries.len() as u64, 2, FieldKind::Count);
    z.field(cd_size, 4, FieldKind::Len);
    z.field(cd_start, 4, FieldKind::Offset);
    z.field(0, 2, FieldKind::Len);
    z
}

/// The entries of a `torch.save` archive.
pub fn archive(pickle: &[u8], storage: &[u8], byteorder: &[u8]) -> Vec<(String, Vec<u8>)> {
    vec![
        ("logits/data.pkl".into(), pickle.to_vec()),
        ("logits/byteorder".into(), byteorder.to_vec()),
        ("logits/data/0".into(), storage.to_vec()),
        ("logits/version".into(), b"3\n".to_vec()),
    ]
}

struct Seed {
    pickle: Structured,
    storage: Vec<u8>,
}

/// The `.pt` target.
pub struct TorchPtTarget {
    seeds: Vec<Seed>,
    dict: Vec<Vec<u8>>,
    pool: Pool,
}

impl TorchPtTarget {
    /// Seeds: float / double / half / bf16 tensors, parameters, each int width.
    pub fn new() -> Self {
        let mut seeds = Vec::new();
        let specs: &[(&str, usize, &[i64])] = &[
            ("FloatStorage", 4, &[6]),
            ("DoubleStorage", 8, &[2, 3]),
            ("HalfStorage", 2, &[3, 1, 2]),
            ("BFloat16Storage", 2, &[4]),
            ("FloatStorage", 4, &[2, 2]),
            ("LongStorage", 8, &[2]),
        ];
        for (i, (storage, elt, size)) in specs.iter().enumerate() {
            let numel: i64 = size.iter().product();
            seeds.push(Seed {
                pickle: tensor_pickle(storage, size, (i % 3) as u8, i % 2 == 1),
                storage: vec![0x3c; numel as usize * elt],
            });
        }
        let mut dict: Vec<Vec<u8>> = [
            &b"cos\nsystem\n"[..],
            b"cbuiltins\neval\n",
            b"cposix\nsystem\n",
            b"\x8c\x05posix\x8c\x06system\x93",
            b"\x8c\x08builtins\x8c\x04exec\x93",
            b"ctorch\nLongStorage\n",
            b"ctorch._utils\n_rebuild_tensor_v2\n",
            b"ccollections\nOrderedDict\n",
            b"(",
            b"t",
            b")",
            b"\x85",
            b"\x86",
            b"R",
            b"Q",
            b"N",
            b"h\x00",
            b"j\xff\xff\xff\xff",
            b"q\x00",
            b"\x94",
            b"K\xff",
            b"J\xff\xff\xff\x7f",
            b"J\x00\x00\x00\x80",
            b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f",
            b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80",
            b"\x8a\xff",
            b"X\xff\xff\xff\x7f",
            b"B\xff\xff\xff\xff",
            b".",
        ]
        .iter()
        .map(|d| d.to_vec())
        .collect();
        // Memo doubling ("billion laughs"): each step pairs the memoised
        // value with itself.
        let mut laughs = b"]q\x01".to_vec();
        for _ in 0..48 {
            laughs.extend_from_slice(b"h\x01h\x01\x86q\x01");
        }
        dict.push(laughs);
        // Deep nesting: one-element tuples and persistent ids.
        let mut deep = b"N".to_vec();
        deep.extend(std::iter::repeat_n(0x85u8, 200_000));
        dict.push(deep);
        let mut deep_q = b"N".to_vec();
        deep_q.extend(std::iter::repeat_n(b'Q', 200_000));
        dict.push(deep_q);
        dict.push(vec![b'('; 100_000]);
        Self {
            seeds,
            dict,
            pool: Pool::default(),
        }
    }
}

impl Default for TorchPtTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for TorchPtTarget {
    fn generate(&mut self, rng: &mut Rng) -> Case {
        let dict: Vec<&[u8]> = self.dict.iter().map(Vec::as_slice).collect();
        if rng.one_in(8) {
            if let Some(c) = self.pool.mutate(rng, &dict, &[]) {
                return c;
            }
        }
        let seed = &self.seeds[rng.below(self.seeds.len())];
        let mut storage = seed.storage.clone();
        let mut byteorder = b"little".to_vec();
        let zip = match rng.below(10) {
            0..=4 => {
                let mut p = mutate_structured(rng, &seed.pickle, &dict);
                if rng.one_in(2) {
                    // a dangerous or bomb token at an opcode boundary
                    let f = *rng.pick(&seed.pickle.fields);
                    let tok = rng.pick(&dict).to_vec();
                    let at = f.off.min(p.len());
                    p.splice(at..at, tok);
                }
                write_zip(&archive(&p, &storage, &byteorder)).bytes
            }
            5 => {
                match rng.below(3) {
                    0 => storage.truncate(rng.below(storage.len() + 1)),
                    1 => storage.extend_from_slice(&[1; 3]),
                    _ => byteorder = b"big".to_vec(),
                }
                write_zip(&archive(&seed.pickle.bytes, &storage, &byteorder)).bytes
            }
            _ => {
                let z = write_zip(&archive(&seed.pickle.bytes, &storage, &byteorder));
                mutate_structured(rng, &z, &[b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"])
            }
        };
        let mut zip = zip;
        if rng.one_in(20) {
            havoc(rng, &mut zip, &dict, None);
        }
        Case::one("selector.pt", zip)
    }

    fn run(&mut self, dir: &Path, _scratch: &Path) -> bool {
        read_pt_tensor(&dir.join("selector.pt")).is_ok()
    }

    fn accept(&mut self, case: Case) {
        let bits = case.files.first().map(|f| f.1.len() as u64).unwrap_or(0);
        self.pool.add(case, bits);
    }
}
