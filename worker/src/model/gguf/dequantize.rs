//! ggml's tensor types (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) and their
//! dequantization to f32, as llama.cpp's reference (gguf-py) does it.

use half::{bf16, f16};

/// ggml type ids and names.
pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q8_0: u32 = 8;
pub const Q4_K: u32 = 12;
pub const Q5_K: u32 = 13;
pub const Q6_K: u32 = 14;
pub const BF16: u32 = 30;

/// A ggml tensor type's name, for messages.
pub fn type_name(kind: u32) -> String {
    match kind {
        F32 => "F32".into(),
        F16 => "F16".into(),
        Q4_0 => "Q4_0".into(),
        Q4_1 => "Q4_1".into(),
        6 => "Q5_0".into(),
        7 => "Q5_1".into(),
        Q8_0 => "Q8_0".into(),
        9 => "Q8_1".into(),
        10 => "Q2_K".into(),
        11 => "Q3_K".into(),
        Q4_K => "Q4_K".into(),
        Q5_K => "Q5_K".into(),
        Q6_K => "Q6_K".into(),
        15 => "Q8_K".into(),
        BF16 => "BF16".into(),
        other => format!("type {other}"),
    }
}

/// (elements per block, bytes per block) of the supported types.
pub fn block_layout(kind: u32) -> Option<(usize, usize)> {
    Some(match kind {
        F32 => (1, 4),
        F16 | BF16 => (1, 2),
        Q8_0 => (32, 34),
        Q4_0 => (32, 18),
        Q4_1 => (32, 20),
        Q4_K => (256, 144),
        Q5_K => (256, 176),
        Q6_K => (256, 210),
        _ => return None,
    })
}

/// `elements` values of type `kind` stored in `data`, as f32. `kind` must be one
/// [`block_layout`] knows.
pub fn dequantize(kind: u32, data: &[u8], elements: usize) -> Vec<f32> {
    let (_, size) = block_layout(kind).expect("a supported tensor type");
    let mut out = Vec::with_capacity(elements);
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match kind {
        F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
        ),
        F16 => out.extend(data.chunks_exact(2).map(half)),
        BF16 => out.extend(
            data.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Q8_0 => {
            for b in data.chunks_exact(size) {
                let d = half(b);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        Q4_0 => {
            for b in data.chunks_exact(size) {
                let d = half(b);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| d * ((q & 0xF) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        Q4_1 => {
            for b in data.chunks_exact(size) {
                let (d, m) = (half(b), half(&b[2..]));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| d * (q & 0xF) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        Q4_K => {
            for b in data.chunks_exact(size) {
                let (d, dmin) = (half(b), half(&b[2..]));
                let scales = &b[4..16];
                let mut q = &b[16..144];
                for j in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    out.extend(q[..32].iter().map(|&v| d1 * (v & 0xF) as f32 - m1));
                    out.extend(q[..32].iter().map(|&v| d2 * (v >> 4) as f32 - m2));
                    q = &q[32..];
                }
            }
        }
        Q5_K => {
            for b in data.chunks_exact(size) {
                let (d, dmin) = (half(b), half(&b[2..]));
                let scales = &b[4..16];
                let qh = &b[16..48];
                let mut ql = &b[48..176];
                for j in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                    out.extend((0..32).map(|l| {
                        let high = if qh[l] & u1 != 0 { 16 } else { 0 };
                        d1 * ((ql[l] & 0xF) + high) as f32 - m1
                    }));
                    out.extend((0..32).map(|l| {
                        let high = if qh[l] & u2 != 0 { 16 } else { 0 };
                        d2 * ((ql[l] >> 4) + high) as f32 - m2
                    }));
                    ql = &ql[32..];
                }
            }
        }
        Q6_K => {
            for b in data.chunks_exact(size) {
                let d = half(&b[208..210]);
                let mut block = [0f32; 256];
                for n in 0..2 {
                    let ql = &b[n * 64..n * 64 + 64];
                    let qh = &b[128 + n * 32..128 + n * 32 + 32];
                    let sc = &b[192 + n * 8..192 + n * 8 + 8];
                    let y = &mut block[n * 128..n * 128 + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
                out.extend_from_slice(&block);
            }
        }
        _ => unreachable!("block_layout admits only the types above"),
    }
    out
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a K-quant block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgufFile;

    /// Every supported type against llama.cpp's reference dequantization (gguf-py), on random
    /// blocks: `tests/fixtures/make_quant_fixture.py`.
    #[test]
    fn every_type_dequantizes_like_the_reference() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quants.gguf");
        let file = GgufFile::read(&path).unwrap();
        let mut checked = Vec::new();
        for t in file.tensors.iter().filter(|t| t.name.starts_with("q.")) {
            let kind = &t.name[2..];
            let expected = file
                .tensors
                .iter()
                .find(|e| e.name == format!("expected.{kind}"))
                .unwrap();
            let got = file.tensor_f32(t).unwrap();
            let want = file.tensor_f32(expected).unwrap();
            assert_eq!(got.len(), want.len(), "{kind}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{kind}[{i}]: {g} vs the reference {w}"
                );
            }
            checked.push(kind.to_string());
        }
        assert_eq!(
            checked,
            ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16"]
        );
    }

    #[test]
    fn q8_0_and_q4_1_blocks_dequantize() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(2u64.to_le_bytes()); // tensors
        bytes.extend(0u64.to_le_bytes()); // metadata
        let mut info = |name: &str, kind: u32, offset: u64| {
            bytes.extend((name.len() as u64).to_le_bytes());
            bytes.extend(name.as_bytes());
            bytes.extend(1u32.to_le_bytes());
            bytes.extend(32u64.to_le_bytes());
            bytes.extend(kind.to_le_bytes());
            bytes.extend(offset.to_le_bytes());
        };
        info("a", Q8_0, 0);
        info("b", Q4_1, 64);
        while !bytes.len().is_multiple_of(32) {
            bytes.push(0);
        }
        let start = bytes.len();
        bytes.extend(f16::from_f32(0.5).to_le_bytes());
        bytes.extend((0..32).map(|i| (i as i8 - 16) as u8));
        bytes.resize(start + 64, 0);
        bytes.extend(f16::from_f32(2.0).to_le_bytes());
        bytes.extend(f16::from_f32(-1.0).to_le_bytes());
        bytes.extend((0..16).map(|i| (i as u8) | (((15 - i) as u8) << 4)));
        let file = GgufFile::parse(bytes, "t.gguf".into()).unwrap();
        let a = file.tensor_f32(&file.tensors[0]).unwrap();
        assert_eq!(a[0], -8.0);
        assert_eq!(a[31], 7.5);
        let b = file.tensor_f32(&file.tensors[1]).unwrap();
        assert_eq!(b[0], -1.0); // 2·0 − 1
        assert_eq!(b[15], 29.0); // 2·15 − 1
        assert_eq!(b[16], 29.0); // high nibble of byte 0: 15
        assert_eq!(b[31], -1.0);
    }
}
