//! A small streaming FLAC encoder: 2 channels, 48 kHz, 16 bit, fixed block size 4096,
//! independent channels, CONSTANT / FIXED (orders 0-4, partitioned Rice) / VERBATIM subframes
//! (what `flac -0`/`-1` do, minus stereo decorrelation: the two channels carry different
//! people, so mid/side buys little).
//!
//! Why not libFLAC (flac-bound): its encoder handle is `!Send` and it needs `unsafe` (which the
//! workspace forbids) for metadata blocks, so a recording could not move between threads and
//! could not carry Vorbis comments. This writer is `Send`, writes a VORBIS_COMMENT block, and at
//! [`FlacWriter::finish`] rewrites STREAMINFO in place (total samples, frame sizes, MD5), which
//! takes constant time whatever the length. It is checked against `flac -t`, sox, ffprobe and
//! symphonia in the crate's tests.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::clock::SAMPLE_RATE;
use crate::error::RecorderError;

/// Samples per channel in every frame but the last.
pub const BLOCK_SIZE: usize = 4096;
const CHANNELS: usize = 2;
const BITS_PER_SAMPLE: u32 = 16;
/// Byte offset of the STREAMINFO body: "fLaC" + a 4-byte block header.
const STREAMINFO_OFFSET: u64 = 8;
const MAX_PARTITION_ORDER: u32 = 6;
const MAX_RICE_PARAM: u32 = 14;

const CRC8: crc::Crc<u8> = crc::Crc::<u8>::new(&crc::CRC_8_SMBUS);
const CRC16: crc::Crc<u16, crc::Table<16>> =
    crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_UMTS);

/// MSB-first bit writer; whole 32-bit words go to `buf` as they fill.
#[derive(Default)]
struct BitWriter {
    buf: Vec<u8>,
    acc: u64,
    /// Bits pending in `acc` (always < 32 between calls).
    n: u32,
}

impl BitWriter {
    fn clear(&mut self) {
        self.buf.clear();
        self.acc = 0;
        self.n = 0;
    }

    #[inline]
    fn put(&mut self, bits: u32, value: u64) {
        debug_assert!(bits <= 32);
        if bits == 0 {
            return;
        }
        self.acc = (self.acc << bits) | (value & ((1u64 << bits) - 1));
        self.n += bits;
        if self.n >= 32 {
            self.n -= 32;
            self.buf
                .extend_from_slice(&((self.acc >> self.n) as u32).to_be_bytes());
        }
    }

    #[inline]
    fn put_signed(&mut self, bits: u32, value: i32) {
        self.put(bits, value as u32 as u64);
    }

    /// Rice code of an already folded (zigzag) value.
    #[inline]
    fn put_rice(&mut self, k: u32, u: u32) {
        let mut q = u >> k;
        if q + 1 + k <= 32 {
            self.put(q + 1 + k, (1u64 << k) | u64::from(u & ((1u32 << k) - 1)));
            return;
        }
        while q >= 32 {
            self.put(32, 0);
            q -= 32;
        }
        self.put(q + 1, 1);
        self.put(k, u64::from(u & ((1u32 << k) - 1)));
    }

    /// Rice codes of a run of residuals, with the writer state kept in registers.
    fn put_rice_run(&mut self, k: u32, residuals: &[i32]) {
        let (mut acc, mut n) = (self.acc, self.n);
        let mask = (1u32 << k) - 1;
        for &r in residuals {
            let u = fold(r);
            let q = u >> k;
            let len = q + 1 + k;
            if len <= 32 {
                acc = (acc << len) | u64::from((1u32 << k) | (u & mask));
                n += len;
                if n >= 32 {
                    n -= 32;
                    self.buf
                        .extend_from_slice(&((acc >> n) as u32).to_be_bytes());
                }
            } else {
                (self.acc, self.n) = (acc, n);
                self.put_rice(k, u);
                (acc, n) = (self.acc, self.n);
            }
        }
        (self.acc, self.n) = (acc, n);
    }

    /// Pads to a byte boundary and moves every pending byte to `buf`.
    fn align(&mut self) {
        let pad = (8 - self.n % 8) % 8;
        self.put(pad, 0);
        while self.n >= 8 {
            self.n -= 8;
            self.buf.push((self.acc >> self.n) as u8);
        }
    }
}

#[inline]
fn fold(r: i32) -> u32 {
    ((r << 1) ^ (r >> 31)) as u32
}

/// Streams 2-channel 16-bit audio to a FLAC file.
pub struct FlacWriter {
    path: PathBuf,
    out: BufWriter<File>,
    pending: [Vec<i32>; CHANNELS],
    frame_number: u32,
    total_samples: u64,
    min_frame: u32,
    max_frame: u32,
    md5: Md5,
    md5_bytes: Vec<u8>,
    bits: BitWriter,
    residual: Vec<i32>,
}

impl FlacWriter {
    /// Creates (truncates) `path` and writes the stream header with `tags` as Vorbis comments.
    pub fn create(path: &Path, tags: &[(&str, String)]) -> Result<FlacWriter, RecorderError> {
        let file = File::create(path).map_err(|e| RecorderError::io("create FLAC", path, e))?;
        let mut w = FlacWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(64 * 1024, file),
            pending: [
                Vec::with_capacity(BLOCK_SIZE),
                Vec::with_capacity(BLOCK_SIZE),
            ],
            frame_number: 0,
            total_samples: 0,
            min_frame: 0,
            max_frame: 0,
            md5: Md5::new(),
            md5_bytes: Vec::with_capacity(BLOCK_SIZE * 4),
            bits: BitWriter::default(),
            residual: Vec::with_capacity(BLOCK_SIZE),
        };
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(b"fLaC");
        head.extend_from_slice(&[0x00, 0x00, 0x00, 34]); // STREAMINFO, not last
        head.extend_from_slice(&w.streaminfo(true));
        let vc = vorbis_comment(tags);
        let len = vc.len().min(0xFF_FFFF) as u32;
        head.push(0x80 | 4); // VORBIS_COMMENT, last metadata block
        head.extend_from_slice(&len.to_be_bytes()[1..]);
        head.extend_from_slice(&vc[..len as usize]);
        w.write_out(&head)?;
        Ok(w)
    }

    /// Appends samples (both slices the same length).
    pub fn write(&mut self, left: &[i16], right: &[i16]) -> Result<(), RecorderError> {
        let n = left.len().min(right.len());
        self.md5_bytes.clear();
        self.md5_bytes.resize(n * 4, 0);
        for ((o, l), r) in self.md5_bytes.chunks_exact_mut(4).zip(left).zip(right) {
            let (lb, rb) = (l.to_le_bytes(), r.to_le_bytes());
            o.copy_from_slice(&[lb[0], lb[1], rb[0], rb[1]]);
        }
        self.md5.update(&self.md5_bytes);
        let mut i = 0;
        while i < n {
            let take = (BLOCK_SIZE - self.pending[0].len()).min(n - i);
            self.pending[0].extend(left[i..i + take].iter().map(|&s| i32::from(s)));
            self.pending[1].extend(right[i..i + take].iter().map(|&s| i32::from(s)));
            i += take;
            if self.pending[0].len() == BLOCK_SIZE {
                self.encode_pending()?;
            }
        }
        Ok(())
    }

    /// Writes the last (short) frame, rewrites STREAMINFO and syncs the file. Returns its size.
    pub fn finish(mut self) -> Result<u64, RecorderError> {
        if !self.pending[0].is_empty() {
            self.encode_pending()?;
        }
        let info = self.streaminfo(false);
        let path = self.path.clone();
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| RecorderError::io("write FLAC", &path, e.into_error()))?;
        file.seek(SeekFrom::Start(STREAMINFO_OFFSET))
            .and_then(|_| file.write_all(&info))
            .and_then(|_| file.sync_all())
            .map_err(|e| RecorderError::io("finalise FLAC", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| RecorderError::io("stat FLAC", &path, e))?
            .len();
        Ok(len)
    }

    fn write_out(&mut self, bytes: &[u8]) -> Result<(), RecorderError> {
        self.out
            .write_all(bytes)
            .map_err(|e| RecorderError::io("write FLAC", &self.path, e))
    }

    fn streaminfo(&mut self, placeholder: bool) -> [u8; 34] {
        let (min_bs, max_bs) = if self.total_samples >= BLOCK_SIZE as u64 || placeholder {
            (BLOCK_SIZE as u64, BLOCK_SIZE as u64)
        } else {
            let n = self.total_samples.max(16);
            (n, n)
        };
        let mut b = BitWriter::default();
        b.put(16, min_bs);
        b.put(16, max_bs);
        b.put(24, u64::from(self.min_frame));
        b.put(24, u64::from(self.max_frame));
        b.put(20, u64::from(SAMPLE_RATE));
        b.put(3, (CHANNELS - 1) as u64);
        b.put(5, u64::from(BITS_PER_SAMPLE - 1));
        let total = if placeholder {
            0
        } else {
            self.total_samples.min((1 << 36) - 1)
        };
        b.put(4, total >> 32);
        b.put(32, total & 0xFFFF_FFFF);
        b.align();
        let digest: [u8; 16] = if placeholder {
            [0; 16]
        } else {
            std::mem::take(&mut self.md5).finalize().into()
        };
        let mut out = [0u8; 34];
        out[..18].copy_from_slice(&b.buf);
        out[18..].copy_from_slice(&digest);
        out
    }

    fn encode_pending(&mut self) -> Result<(), RecorderError> {
        let n = self.pending[0].len();
        let mut bits = std::mem::take(&mut self.bits);
        bits.clear();
        // Frame header.
        bits.put(16, 0xFFF8); // sync, reserved, fixed block size
        let (bs_code, bs_extra) = match n {
            BLOCK_SIZE => (12, None),
            1..=256 => (6, Some((8, n - 1))),
            _ => (7, Some((16, n - 1))),
        };
        bits.put(4, bs_code);
        bits.put(4, 0b1010); // 48 kHz
        bits.put(4, 0b0001); // 2 independent channels
        bits.put(3, 0b100); // 16 bit
        bits.put(1, 0);
        for byte in utf8_number(self.frame_number) {
            bits.put(8, u64::from(byte));
        }
        if let Some((w, v)) = bs_extra {
            bits.put(w, v as u64);
        }
        bits.align();
        let crc8 = CRC8.checksum(&bits.buf);
        bits.put(8, u64::from(crc8));
        for ch in 0..CHANNELS {
            let samples = std::mem::take(&mut self.pending[ch]);
            encode_subframe(&mut bits, &samples, &mut self.residual);
            self.pending[ch] = samples;
            self.pending[ch].clear();
        }
        bits.align();
        let crc16 = CRC16.checksum(&bits.buf);
        bits.put(16, u64::from(crc16));
        bits.align();
        let frame_len = bits.buf.len() as u32;
        self.min_frame = if self.min_frame == 0 {
            frame_len
        } else {
            self.min_frame.min(frame_len)
        };
        self.max_frame = self.max_frame.max(frame_len);
        let res = self.out.write_all(&bits.buf);
        self.bits = bits;
        res.map_err(|e| RecorderError::io("write FLAC", &self.path, e))?;
        self.total_samples += n as u64;
        self.frame_number = self.frame_number.wrapping_add(1) & 0x7FFF_FFFF;
        Ok(())
    }
}

/// FLAC's UTF-8-like coding of the frame number.
fn utf8_number(v: u32) -> Vec<u8> {
    if v < 0x80 {
        return vec![v as u8];
    }
    let (len, first_mask) = match v {
        0..0x800 => (2, 0xC0u8),
        0x800..0x1_0000 => (3, 0xE0),
        0x1_0000..0x20_0000 => (4, 0xF0),
        0x20_0000..0x400_0000 => (5, 0xF8),
        _ => (6, 0xFC),
    };
    let mut out = vec![0u8; len];
    let mut x = v;
    for i in (1..len).rev() {
        out[i] = 0x80 | (x & 0x3F) as u8;
        x >>= 6;
    }
    out[0] = first_mask | x as u8;
    out
}

fn vorbis_comment(tags: &[(&str, String)]) -> Vec<u8> {
    let vendor = b"commhub recorder";
    let mut v = Vec::new();
    v.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    v.extend_from_slice(vendor);
    v.extend_from_slice(&(tags.len() as u32).to_le_bytes());
    for (k, val) in tags {
        let entry = format!("{k}={val}");
        v.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        v.extend_from_slice(entry.as_bytes());
    }
    v
}

fn encode_subframe(bits: &mut BitWriter, x: &[i32], residual: &mut Vec<i32>) {
    let n = x.len();
    let first = x[0];
    if x.iter().all(|&s| s == first) {
        bits.put(8, 0x00); // CONSTANT
        bits.put_signed(BITS_PER_SAMPLE, first);
        return;
    }
    let verbatim_bits = 8 + u64::from(BITS_PER_SAMPLE) * n as u64;
    if n < 16 {
        return write_verbatim(bits, x);
    }
    let order = best_fixed_order(x);
    residual.clear();
    fixed_residual(x, order, residual);
    let (part_order, cost, params) = best_partition_order(residual, n, order);
    let fixed_bits = 8 + u64::from(BITS_PER_SAMPLE) * order as u64 + 6 + cost;
    if fixed_bits >= verbatim_bits {
        return write_verbatim(bits, x);
    }
    bits.put(8, 0x10 | ((order as u64) << 1));
    for &s in &x[..order] {
        bits.put_signed(BITS_PER_SAMPLE, s);
    }
    bits.put(2, 0); // partitioned Rice, 4-bit parameters
    bits.put(4, u64::from(part_order));
    let parts = 1usize << part_order;
    let per = n >> part_order;
    let mut start = 0usize;
    for (p, &k) in params.iter().enumerate().take(parts) {
        let count = if p == 0 { per - order } else { per };
        let chunk = &residual[start..start + count];
        bits.put(4, u64::from(k));
        bits.put_rice_run(k, chunk);
        start += count;
    }
}

fn write_verbatim(bits: &mut BitWriter, x: &[i32]) {
    bits.put(8, 0x02);
    for &s in x {
        bits.put_signed(BITS_PER_SAMPLE, s);
    }
}

/// The fixed predictor order (0-4) with the smallest sum of absolute residuals.
fn best_fixed_order(x: &[i32]) -> usize {
    let mut sums = [0u64; 5];
    // Errors of orders 0-3 at sample 3, then carried forward by differences.
    let (mut p0, mut p1, mut p2, mut p3) = (
        x[3],
        x[3] - x[2],
        x[3] - 2 * x[2] + x[1],
        x[3] - 3 * x[2] + 3 * x[1] - x[0],
    );
    for &s in &x[4..] {
        let e0 = s;
        let e1 = e0 - p0;
        let e2 = e1 - p1;
        let e3 = e2 - p2;
        let e4 = e3 - p3;
        sums[0] += u64::from(e0.unsigned_abs());
        sums[1] += u64::from(e1.unsigned_abs());
        sums[2] += u64::from(e2.unsigned_abs());
        sums[3] += u64::from(e3.unsigned_abs());
        sums[4] += u64::from(e4.unsigned_abs());
        (p0, p1, p2, p3) = (e0, e1, e2, e3);
    }
    let mut best = 0;
    for o in 1..5 {
        if sums[o] < sums[best] {
            best = o;
        }
    }
    best
}

fn fixed_residual(x: &[i32], order: usize, out: &mut Vec<i32>) {
    let n = x.len();
    match order {
        0 => out.extend_from_slice(x),
        1 => out.extend((1..n).map(|i| x[i] - x[i - 1])),
        2 => out.extend((2..n).map(|i| x[i] - 2 * x[i - 1] + x[i - 2])),
        3 => out.extend((3..n).map(|i| x[i] - 3 * x[i - 1] + 3 * x[i - 2] - x[i - 3])),
        _ => {
            out.extend((4..n).map(|i| x[i] - 4 * x[i - 1] + 6 * x[i - 2] - 4 * x[i - 3] + x[i - 4]))
        }
    }
}

/// Estimated best Rice parameter and the estimated bits for `count` values summing to `sum`.
fn best_rice_param(sum: u64, count: u64) -> (u32, u64) {
    if count == 0 {
        return (0, 0);
    }
    let mean = sum / count;
    let guess = if mean == 0 {
        0
    } else {
        63 - mean.leading_zeros()
    };
    let lo = guess.saturating_sub(1);
    let hi = (guess + 1).min(MAX_RICE_PARAM);
    let mut best = (lo.min(MAX_RICE_PARAM), u64::MAX);
    for k in lo.min(MAX_RICE_PARAM)..=hi {
        let cost = count * u64::from(k + 1) + (sum >> k);
        if cost < best.1 {
            best = (k, cost);
        }
    }
    best
}

/// The partition order with the smallest estimated size, that size in bits (including the
/// 4-bit parameters), and the Rice parameter of each of its partitions.
fn best_partition_order(residual: &[i32], n: usize, order: usize) -> (u32, u64, Vec<u32>) {
    let mut max_p = 0;
    while max_p < MAX_PARTITION_ORDER
        && n.is_multiple_of(1 << (max_p + 1))
        && (n >> (max_p + 1)) > order
    {
        max_p += 1;
    }
    // Sums and counts at the finest order, then merged pairwise.
    let parts = 1usize << max_p;
    let per = n >> max_p;
    let mut sums = Vec::with_capacity(parts);
    let mut counts = Vec::with_capacity(parts);
    let mut start = 0usize;
    for p in 0..parts {
        let count = if p == 0 { per - order } else { per };
        sums.push(
            residual[start..start + count]
                .iter()
                .map(|&r| u64::from(fold(r)))
                .sum::<u64>(),
        );
        counts.push(count as u64);
        start += count;
    }
    let mut best = (0u32, u64::MAX, Vec::new());
    let mut p = max_p;
    loop {
        let mut cost = 0u64;
        let mut params = Vec::with_capacity(sums.len());
        for (&s, &c) in sums.iter().zip(&counts) {
            let (k, bits) = best_rice_param(s, c);
            cost += 4 + bits;
            params.push(k);
        }
        if cost <= best.1 {
            best = (p, cost, params);
        }
        if p == 0 {
            break;
        }
        sums = sums.chunks(2).map(|c| c.iter().sum()).collect();
        counts = counts.chunks(2).map(|c| c.iter().sum()).collect();
        p -= 1;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_frame_numbers() {
        assert_eq!(utf8_number(0), vec![0]);
        assert_eq!(utf8_number(0x7F), vec![0x7F]);
        assert_eq!(utf8_number(0x80), vec![0xC2, 0x80]);
        assert_eq!(utf8_number(0x800), vec![0xE0, 0xA0, 0x80]);
    }

    #[test]
    fn rice_round_numbers() {
        let mut b = BitWriter::default();
        b.put_rice(2, 9); // q=2 -> 001, r=01
        b.align();
        assert_eq!(b.buf, vec![0b0010_1000]);
        assert_eq!(fold(0), 0);
        assert_eq!(fold(-1), 1);
        assert_eq!(fold(1), 2);
        assert_eq!(fold(-2), 3);
    }

    #[test]
    fn fixed_order_of_a_ramp_is_two() {
        let x: Vec<i32> = (0..64).map(|i| i * 3 - 50).collect();
        let o = best_fixed_order(&x);
        assert!(o >= 2, "order {o}");
    }
}
