//! Dequantisation of GGML blocks (F32, F16, BF16, Q8_0, Q4_0, Q4_1) to f32.

use super::*;

pub(super) fn f16(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// Dequantizes `bytes` of type `ty` holding `n` elements.
pub fn dequantize_bytes(
    ty: GgmlType,
    bytes: &[u8],
    n: usize,
) -> std::result::Result<Vec<f32>, String> {
    let (block, block_bytes) = ty
        .block_layout()
        .ok_or_else(|| format!("unsupported tensor type {ty}"))?;
    if n % block != 0 || bytes.len() != n / block * block_bytes {
        return Err(format!(
            "{ty} data of {} bytes does not hold {n} elements",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16(c[0], c[1]))),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16(b[0], b[1]);
                out.extend(b[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16(b[0], b[1]);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| (i32::from(q & 0x0F) - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| (i32::from(q >> 4) - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let d = f16(b[0], b[1]);
                let m = f16(b[2], b[3]);
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        _ => return Err(format!("unsupported tensor type {ty}")),
    }
    Ok(out)
}
