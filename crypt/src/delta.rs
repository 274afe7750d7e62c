//! A member's raw bytes as a delta against an earlier member's, so that a
//! changed group costs the wire about what changed in it.
//!
//! The sender indexes the old raw bytes by 512-byte blocks (tar's unit:
//! the unchanged entries of a group sit on block boundaries) and scans the
//! new bytes with a rolling checksum at every offset, as rsync does, so
//! that content shifted by an edit is still found. The result is a list of
//! operations, *copy n blocks from old block i* or *take n literal bytes*,
//! and the literal bytes, deflated with the old bytes no copy used (the
//! changed entries' earlier versions, most likely) as deflate's preset
//! dictionary.
//!
//! The receiver rebuilds the raw bytes ([`apply`]), compresses them as the
//! origin did and keeps the member only if its SHA-256 is the one asked
//! for: a delta can save bytes, never change what is stored.

use std::collections::HashMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// tar's block: the unit copies are made of.
const BLOCK: usize = 512;

/// Why a delta cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("malformed delta: {0}")]
    Malformed(&'static str),
    #[error("the delta's literals do not inflate: {0}")]
    Literals(String),
}

/// The operations and the deflated literals that turn `old` into `new`.
pub fn make(old: &[u8], new: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut index: HashMap<u32, Vec<u32>> = HashMap::new();
    for (i, block) in old.chunks_exact(BLOCK).enumerate() {
        index.entry(weak(block)).or_default().push(i as u32);
    }
    let mut ops = Vec::new();
    let mut literals = Vec::new();
    let mut used = vec![false; old.len() / BLOCK];
    let mut lit_start = 0usize;
    let mut pos = 0usize;
    let mut roll = (new.len() >= BLOCK).then(|| Rolling::new(&new[..BLOCK]));
    while let Some(r) = roll.as_mut() {
        let window = &new[pos..pos + BLOCK];
        let found = index.get(&r.value()).and_then(|c| c.iter().copied().find(|&b| block_of(old, b) == window));
        if let Some(first) = found {
            if lit_start < pos {
                push_op(&mut ops, (pos - lit_start) as u64, None);
                literals.extend_from_slice(&new[lit_start..pos]);
            }
            // Extend the copy over the following blocks while they match too.
            let mut n = 1usize;
            while pos + (n + 1) * BLOCK <= new.len()
                && (first as usize + n + 1) * BLOCK <= old.len()
                && new[pos + n * BLOCK..pos + (n + 1) * BLOCK] == *block_of(old, first + n as u32)
            {
                n += 1;
            }
            push_op(&mut ops, n as u64, Some(first));
            used[first as usize..first as usize + n].iter_mut().for_each(|u| *u = true);
            pos += n * BLOCK;
            lit_start = pos;
            roll = (pos + BLOCK <= new.len()).then(|| Rolling::new(&new[pos..pos + BLOCK]));
        } else if pos + BLOCK < new.len() {
            r.roll(new[pos], new[pos + BLOCK]);
            pos += 1;
        } else {
            roll = None;
        }
    }
    if lit_start < new.len() {
        push_op(&mut ops, (new.len() - lit_start) as u64, None);
        literals.extend_from_slice(&new[lit_start..]);
    }
    let dict = dictionary(old, &used);
    (ops, deflate_with(&literals, &dict))
}

/// Rebuilds the new raw bytes from `old`, the operations and the
/// literals, refusing anything that does not come to exactly `raw_len`
/// bytes (at most `limit`).
pub fn apply(old: &[u8], ops: &[u8], literals: &[u8], raw_len: u64, limit: u64) -> Result<Vec<u8>, DeltaError> {
    if raw_len > limit {
        return Err(DeltaError::Malformed("longer than allowed"));
    }
    let raw_len = raw_len as usize;
    // First pass: the operations, checked, and which old blocks they copy.
    let mut parsed = Vec::new();
    let mut used = vec![false; old.len() / BLOCK];
    let (mut at, mut out_len, mut lit_len) = (0usize, 0usize, 0usize);
    while at < ops.len() {
        let head = varint(ops, &mut at)?;
        let n = usize::try_from(head >> 1).map_err(|_| DeltaError::Malformed("length overflows"))?;
        if n == 0 {
            return Err(DeltaError::Malformed("an empty operation"));
        }
        if head & 1 == 1 {
            let first = usize::try_from(varint(ops, &mut at)?).map_err(|_| DeltaError::Malformed("block overflows"))?;
            let end = first
                .checked_add(n)
                .filter(|&e| e <= used.len())
                .ok_or(DeltaError::Malformed("copy past the old bytes"))?;
            used[first..end].iter_mut().for_each(|u| *u = true);
            out_len =
                n.checked_mul(BLOCK).and_then(|b| out_len.checked_add(b)).ok_or(DeltaError::Malformed("too long"))?;
            parsed.push((Some(first), n));
        } else {
            out_len = out_len.checked_add(n).ok_or(DeltaError::Malformed("too long"))?;
            lit_len += n;
            parsed.push((None, n));
        }
        if out_len > raw_len {
            return Err(DeltaError::Malformed("longer than said"));
        }
    }
    if out_len != raw_len {
        return Err(DeltaError::Malformed("shorter than said"));
    }
    let lits = inflate_with(literals, &dictionary(old, &used), lit_len)?;
    let mut out = Vec::with_capacity(raw_len);
    let mut l = 0usize;
    for (copy, n) in parsed {
        match copy {
            Some(first) => out.extend_from_slice(&old[first * BLOCK..(first + n) * BLOCK]),
            None => {
                out.extend_from_slice(&lits[l..l + n]);
                l += n;
            }
        }
    }
    Ok(out)
}

fn block_of(old: &[u8], i: u32) -> &[u8] {
    &old[i as usize * BLOCK..(i as usize + 1) * BLOCK]
}

/// The old bytes no copy used, the last 32 KiB of them (deflate's window).
fn dictionary(old: &[u8], used: &[bool]) -> Vec<u8> {
    let mut dict = Vec::new();
    for (i, block) in old.chunks(BLOCK).enumerate() {
        if !used.get(i).copied().unwrap_or(false) {
            dict.extend_from_slice(block);
        }
    }
    let keep = dict.len().saturating_sub(32 * 1024);
    dict.drain(..keep);
    dict
}

fn push_op(ops: &mut Vec<u8>, n: u64, copy: Option<u32>) {
    put_varint(ops, (n << 1) | u64::from(copy.is_some()));
    if let Some(first) = copy {
        put_varint(ops, u64::from(first));
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(data: &[u8], at: &mut usize) -> Result<u64, DeltaError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at).ok_or(DeltaError::Malformed("cut short"))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DeltaError::Malformed("a number too long"))
}

fn deflate_with(data: &[u8], dict: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(6), false);
    if !dict.is_empty() {
        // Cannot fail on a fresh raw deflate stream.
        let _ = c.set_dictionary(dict);
    }
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let consumed = c.total_in() as usize;
        out.reserve(data.len() / 2 + 1024);
        match c.compress_vec(&data[consumed..], &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return out,
            Ok(_) => continue,
            // A raw stream of a slice in memory: no error is possible.
            Err(_) => return out,
        }
    }
}

fn inflate_with(data: &[u8], dict: &[u8], len: usize) -> Result<Vec<u8>, DeltaError> {
    let mut d = Decompress::new(false);
    if !dict.is_empty() {
        d.set_dictionary(dict).map_err(|e| DeltaError::Literals(e.to_string()))?;
    }
    let mut out = Vec::with_capacity(len);
    loop {
        let consumed = d.total_in() as usize;
        let before = (d.total_in(), d.total_out());
        // Never more room than the operations said: no inflation bomb.
        let status = d
            .decompress_vec(&data[consumed..], &mut out, FlushDecompress::Finish)
            .map_err(|e| DeltaError::Literals(e.to_string()))?;
        match status {
            Status::StreamEnd => break,
            _ if out.len() == len => {
                // Full: the stream must end here.
                let mut probe = Vec::with_capacity(1);
                match d.decompress_vec(&data[d.total_in() as usize..], &mut probe, FlushDecompress::Finish) {
                    Ok(Status::StreamEnd) if probe.is_empty() => break,
                    _ => return Err(DeltaError::Malformed("more literals than the operations take")),
                }
            }
            _ if (d.total_in(), d.total_out()) == before => {
                return Err(DeltaError::Literals("the stream ends early".into()))
            }
            _ => {}
        }
    }
    if out.len() != len {
        return Err(DeltaError::Malformed("fewer literals than the operations take"));
    }
    Ok(out)
}

/// rsync's weak checksum over a 512-byte window, rolled one byte at a time.
struct Rolling {
    a: u32,
    b: u32,
}

impl Rolling {
    fn new(window: &[u8]) -> Self {
        let (mut a, mut b) = (0u32, 0u32);
        for (i, &x) in window.iter().enumerate() {
            a = a.wrapping_add(u32::from(x));
            b = b.wrapping_add((window.len() - i) as u32 * u32::from(x));
        }
        Rolling { a, b }
    }
    fn value(&self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }
    fn roll(&mut self, out: u8, inp: u8) {
        self.a = self.a.wrapping_sub(u32::from(out)).wrapping_add(u32::from(inp));
        self.b = self.b.wrapping_sub(BLOCK as u32 * u32::from(out)).wrapping_add(self.a);
    }
}

fn weak(block: &[u8]) -> u32 {
    Rolling::new(block).value()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, mut s: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    fn round_trip(old: &[u8], new: &[u8]) -> usize {
        let (ops, lits) = make(old, new);
        let back = apply(old, &ops, &lits, new.len() as u64, 1 << 30).unwrap();
        assert!(back == new, "rebuilt bytes differ");
        ops.len() + lits.len()
    }

    #[test]
    fn edits_cost_about_what_changed() {
        let old = noise(200 * 1024, 1);
        // Unchanged.
        assert!(round_trip(&old, &old) < 64);
        // A 512-byte entry replaced in the middle, block aligned.
        let mut new = old.clone();
        new[100 * 1024..100 * 1024 + 512].copy_from_slice(&noise(512, 2));
        assert!(round_trip(&old, &new) < 1200);
        // 37 bytes inserted: everything after shifts, and is still found.
        let mut new = old.clone();
        new.splice(50_000..50_000, noise(37, 3));
        assert!(round_trip(&old, &new) < 2000, "{}", round_trip(&old, &new));
        // Unrelated content: literals, correct all the same.
        let other = noise(100 * 1024 + 77, 4);
        round_trip(&old, &other);
        // Empty either side, and a tail shorter than a block.
        round_trip(&[], &old[..1000]);
        round_trip(&old, &[]);
        round_trip(&old[..300], &old[..700]);
    }

    #[test]
    fn a_changed_text_is_deflated_against_its_old_version() {
        let text: Vec<u8> =
            (0..400).flat_map(|i| format!("msgid \"line {i}\"\nmsgstr \"ligne {i}\"\n").into_bytes()).collect();
        let mut new = text.clone();
        let at = text.len() / 3;
        new.splice(at..at, b"# a new comment\n".iter().copied());
        let cost = round_trip(&text, &new);
        assert!(cost < 600, "{cost} bytes for a 16-byte insertion in {} bytes", text.len());
    }

    #[test]
    fn bad_deltas_are_refused_not_panicked_on() {
        let old = noise(4096, 5);
        let new = noise(3000, 6);
        let (ops, lits) = make(&old, &new);
        assert_eq!(apply(&old, &ops, &lits, 2999, 1 << 20), Err(DeltaError::Malformed("longer than said")));
        assert_eq!(apply(&old, &ops, &lits, 3001, 1 << 20), Err(DeltaError::Malformed("shorter than said")));
        assert!(apply(&old, &ops, &lits, 3000, 100).is_err(), "over the limit");
        assert!(apply(&old, &ops, &lits[..lits.len() / 2], 3000, 1 << 20).is_err());
        let mut copy_past = Vec::new();
        push_op(&mut copy_past, 2, Some(7));
        assert_eq!(apply(&old, &copy_past, &[], 1024, 1 << 20), Err(DeltaError::Malformed("copy past the old bytes")));
        assert!(apply(&old, &[0xff; 11], &[], 10, 1 << 20).is_err());
        assert!(apply(&old, &[0], &[], 0, 1 << 20).is_err(), "empty operation");
        // Literals that inflate to more than the operations take.
        let mut one = Vec::new();
        push_op(&mut one, 1, None);
        let big = deflate_with(&[7u8; 1000], &[]);
        assert!(apply(&old, &one, &big, 1, 1 << 20).is_err());
    }
}
