//! One gzip member, made the same way on every node: a fixed header (no
//! name, mtime 0, OS unknown), deflate at a given level, or *stored*
//! blocks for data that will not compress. Shared by the node and the
//! light client (which recompresses a sealed delta's member as the
//! origin made it).

use std::io::Write;

use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

/// Compresses `raw` into one gzip member with a fixed header (no name,
/// mtime 0, OS unknown), so equal input gives equal bytes on every node.
///
/// Data that does not compress (media, archives, encrypted files) is stored
/// in deflate's *stored* blocks instead: deflating it would spend CPU to
/// produce output no smaller. The choice is a function of the bytes, so it
/// is the same on every node.
pub fn gzip_member(raw: &[u8], level: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 3 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut out = if looks_incompressible(raw) {
        stored_blocks(raw, out)
    } else {
        let mut enc = DeflateEncoder::new(out, Compression::new(level.clamp(1, 9)));
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(raw);
        enc.finish().unwrap_or_default()
    };
    let mut crc = Crc::new();
    crc.update(raw);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out
}

/// Samples spread over the data, each compressed fast: if none shrinks by
/// 3%, deflate at any level would not either.
pub fn looks_incompressible(raw: &[u8]) -> bool {
    const SAMPLE: usize = 4096;
    const SAMPLES: usize = 4;
    if raw.len() < SAMPLE * SAMPLES * 2 {
        return false;
    }
    let step = raw.len() / SAMPLES;
    (0..SAMPLES).all(|i| {
        let s = &raw[i * step..i * step + SAMPLE];
        let mut enc = DeflateEncoder::new(Vec::with_capacity(SAMPLE + 64), Compression::fast());
        let _ = enc.write_all(s);
        let n = enc.finish().map(|v| v.len()).unwrap_or(0);
        n * 100 >= SAMPLE * 97
    })
}

/// Raw deflate of `raw` as stored blocks (RFC 1951 §3.2.4), appended to `out`.
pub fn stored_blocks(raw: &[u8], mut out: Vec<u8>) -> Vec<u8> {
    out.reserve(raw.len() + raw.len() / 65_535 * 5 + 5);
    let mut chunks = raw.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out
}
