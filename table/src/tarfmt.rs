//! The tar encoder: ustar headers with PAX extended records where ustar
//! cannot say it (long names, big sizes and ids, sub-second or negative
//! mtimes). Written by hand so that the bytes are a pure function of the
//! entry's metadata: no user-name lookups, no clock, no defaults that drift
//! between library versions.

/// Tar's block size: every header and every content area is a multiple of it.
pub const BLOCK: usize = 512;

/// The kinds of entry an archive holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A second name for a regular file stored earlier in the same archive.
    HardLink,
}

/// What the header of one entry says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// Relative path with `/` separators, without a trailing slash.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Content length (0 for everything but regular files).
    pub size: u64,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub uid: u64,
    pub gid: u64,
    /// Symlink target or hard-link target path.
    pub link: Option<Vec<u8>>,
}

const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// Largest value an 11-digit octal field holds.
const OCTAL11_MAX: u64 = 0o77777777777;
/// Largest value a 7-digit octal field holds.
const OCTAL7_MAX: u64 = 0o7777777;

/// Bytes of zero padding that follow `size` bytes of content.
pub fn padding(size: u64) -> usize {
    let rem = (size % BLOCK as u64) as usize;
    if rem == 0 {
        0
    } else {
        BLOCK - rem
    }
}

/// Length of the headers [`write_header`] produces for `meta`, counted
/// without writing them (every entry of every backup is counted).
pub fn header_len(meta: &EntryMeta) -> usize {
    let dir = meta.kind == Kind::Dir;
    let name_len = meta.path.len() + usize::from(dir);
    let mut pax = 0;
    if name_len > NAME_LEN {
        let mut name = meta.path.clone();
        if dir {
            name.push(b'/');
        }
        if split_ustar(&name).is_none() {
            pax += pax_record_len("path", name_len);
        }
    }
    if let Some(link) = &meta.link {
        if link.len() > NAME_LEN {
            pax += pax_record_len("linkpath", link.len());
        }
    }
    for (key, value, max) in
        [("size", meta.size, OCTAL11_MAX), ("uid", meta.uid, OCTAL7_MAX), ("gid", meta.gid, OCTAL7_MAX)]
    {
        if value > max {
            pax += pax_record_len(key, digits(value));
        }
    }
    if meta.mtime_nsec != 0 || meta.mtime < 0 || meta.mtime as u64 > OCTAL11_MAX {
        pax += pax_record_len("mtime", mtime_len(meta.mtime, meta.mtime_nsec));
    }
    if pax == 0 {
        BLOCK
    } else {
        2 * BLOCK + pax + padding(pax as u64)
    }
}

/// Length of what [`format_mtime`] writes.
fn mtime_len(secs: i64, nsec: u32) -> usize {
    if nsec == 0 {
        return usize::from(secs < 0) + digits(secs.unsigned_abs());
    }
    let s = if secs >= 0 { secs } else { secs + 1 };
    usize::from(secs < 0) + digits(s.unsigned_abs()) + 10
}

/// Appends the header block(s) of `meta` (a PAX header first when needed).
pub fn write_header(meta: &EntryMeta, out: &mut Vec<u8>) {
    let mut name = meta.path.clone();
    if meta.kind == Kind::Dir {
        name.push(b'/');
    }
    let mut pax = Vec::new();
    let split = split_ustar(&name);
    if split.is_none() {
        pax_record(&mut pax, "path", &name);
    }
    if let Some(link) = &meta.link {
        if link.len() > NAME_LEN {
            pax_record(&mut pax, "linkpath", link);
        }
    }
    if meta.size > OCTAL11_MAX {
        pax_record(&mut pax, "size", meta.size.to_string().as_bytes());
    }
    if meta.uid > OCTAL7_MAX {
        pax_record(&mut pax, "uid", meta.uid.to_string().as_bytes());
    }
    if meta.gid > OCTAL7_MAX {
        pax_record(&mut pax, "gid", meta.gid.to_string().as_bytes());
    }
    if meta.mtime_nsec != 0 || meta.mtime < 0 || meta.mtime as u64 > OCTAL11_MAX {
        let mut value = Vec::with_capacity(32);
        format_mtime(meta.mtime, meta.mtime_nsec, &mut value);
        pax_record(&mut pax, "mtime", &value);
    }
    let header_mtime = meta.mtime.clamp(0, OCTAL11_MAX as i64) as u64;
    if !pax.is_empty() {
        // A fixed name keeps the stream a function of the entry and compresses
        // to almost nothing; readers take the real name from the records.
        let mut h = [0u8; BLOCK];
        put_bytes(&mut h[0..100], b"././@PaxHeader");
        put_octal(&mut h[100..108], 0o644);
        put_octal(&mut h[108..116], 0);
        put_octal(&mut h[116..124], 0);
        put_numeric(&mut h[124..136], pax.len() as u64);
        put_numeric(&mut h[136..148], header_mtime);
        h[156] = b'x';
        finish_header(&mut h);
        out.extend_from_slice(&h);
        let padded = pax.len() + padding(pax.len() as u64);
        out.extend_from_slice(&pax);
        out.resize(out.len() + (padded - pax.len()), 0);
    }
    let mut h = [0u8; BLOCK];
    match split {
        Some((prefix, rest)) => {
            put_bytes(&mut h[345..500], prefix);
            put_bytes(&mut h[0..100], rest);
        }
        None => put_bytes(&mut h[0..100], &name[..name.len().min(NAME_LEN)]),
    }
    put_octal(&mut h[100..108], u64::from(meta.mode & 0o7777));
    put_numeric(&mut h[108..116], meta.uid);
    put_numeric(&mut h[116..124], meta.gid);
    let size = if meta.kind == Kind::File { meta.size } else { 0 };
    put_numeric(&mut h[124..136], size);
    put_numeric(&mut h[136..148], header_mtime);
    h[156] = match meta.kind {
        Kind::File => b'0',
        Kind::HardLink => b'1',
        Kind::Symlink => b'2',
        Kind::Dir => b'5',
    };
    if let Some(link) = &meta.link {
        put_bytes(&mut h[157..257], &link[..link.len().min(NAME_LEN)]);
    }
    finish_header(&mut h);
    out.extend_from_slice(&h);
}

/// Splits a name into ustar's (prefix, name) fields, if it fits.
fn split_ustar(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= NAME_LEN {
        return Some((&[], name));
    }
    // The last byte may be the directory slash: never split there.
    let search_end = name.len().saturating_sub(1).min(PREFIX_LEN + 1);
    (0..search_end)
        .find(|&i| name[i] == b'/' && name.len() - i - 1 <= NAME_LEN && i <= PREFIX_LEN)
        .map(|i| (&name[..i], &name[i + 1..]))
        .filter(|(p, n)| !p.is_empty() && !n.is_empty() && *n != b"/")
}

fn format_mtime(secs: i64, nsec: u32, out: &mut Vec<u8>) {
    if nsec == 0 {
        if secs < 0 {
            out.push(b'-');
        }
        push_decimal(out, secs.unsigned_abs());
        return;
    }
    let (s, n) = if secs >= 0 {
        (secs, nsec)
    } else {
        // PAX times are a decimal number: -1.25 means 1.25 s before the epoch.
        out.push(b'-');
        (secs + 1, 1_000_000_000 - nsec)
    };
    push_decimal(out, s.unsigned_abs());
    out.push(b'.');
    let mut frac = [b'0'; 9];
    let mut n = n;
    for d in frac.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&frac);
}

/// `v` in decimal, without the allocation `to_string` makes: the encoder
/// runs once per entry of every backup.
fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// One PAX record, `"LEN key=value\n"`, where LEN counts its own digits.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    push_decimal(out, pax_record_len(key, value.len()) as u64);
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Length of a PAX record of `key` and a value of `value_len` bytes.
fn pax_record_len(key: &str, value_len: usize) -> usize {
    let base = key.len() + value_len + 3;
    let mut len = base + 1;
    while base + digits(len as u64) != len {
        len = base + digits(len as u64);
    }
    len
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Zero-padded octal with a NUL terminator.
fn put_octal(field: &mut [u8], mut value: u64) {
    let width = field.len() - 1;
    for d in field[..width].iter_mut().rev() {
        *d = b'0' + (value & 7) as u8;
        value >>= 3;
    }
    field[width] = 0;
}

/// Octal when it fits, else GNU's base-256 (high bit set, big-endian);
/// a PAX record carries the value too, for readers that prefer it.
fn put_numeric(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    if value < 8u64.pow(width as u32) {
        put_octal(field, value);
    } else {
        field.fill(0);
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
        field[0] |= 0x80;
    }
}

fn finish_header(h: &mut [u8; BLOCK]) {
    put_bytes(&mut h[257..263], b"ustar\0");
    put_bytes(&mut h[263..265], b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put_octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(path: &str, kind: Kind) -> EntryMeta {
        EntryMeta {
            path: path.as_bytes().to_vec(),
            kind,
            size: 0,
            mode: 0o644,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            uid: 1000,
            gid: 1000,
            link: None,
        }
    }

    fn read_back(bytes: &[u8]) -> Vec<(String, u8, u64)> {
        let mut ar = tar::Archive::new(bytes);
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
                let mtime = e.header().mtime().unwrap();
                (path, e.header().entry_type().as_byte(), mtime)
            })
            .collect()
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for vlen in [0usize, 1, 5, 6, 7, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 995, 996, 997, 1000] {
            let mut out = Vec::new();
            pax_record(&mut out, "path", &vec![b'a'; vlen]);
            let text = String::from_utf8(out.clone()).unwrap();
            let declared: usize = text.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(declared, out.len(), "value length {vlen}");
        }
    }

    #[test]
    fn short_names_need_no_pax() {
        let mut out = Vec::new();
        write_header(&meta("a/b.txt", Kind::File), &mut out);
        assert_eq!(out.len(), BLOCK);
        let mut d = Vec::new();
        write_header(&meta("a/dir", Kind::Dir), &mut d);
        assert_eq!(&d[..6], b"a/dir/");
    }

    #[test]
    fn long_names_split_into_prefix_or_go_to_pax() {
        let splittable = format!("{}/{}", "p".repeat(120), "n".repeat(90));
        let mut out = Vec::new();
        write_header(&meta(&splittable, Kind::File), &mut out);
        assert_eq!(out.len(), BLOCK, "prefix + name fits ustar");
        let long = format!("{}/{}", "p".repeat(20), "n".repeat(300));
        let mut out = Vec::new();
        write_header(&meta(&long, Kind::File), &mut out);
        assert!(out.len() > BLOCK);
        let entries = read_back(&[out, vec![0u8; 1024]].concat());
        assert_eq!(entries[0].0, long);
    }

    #[test]
    fn subsecond_mtime_goes_to_pax() {
        let mut m = meta("f", Kind::File);
        m.mtime_nsec = 5;
        let mut out = Vec::new();
        write_header(&m, &mut out);
        let text = String::from_utf8_lossy(&out[BLOCK..2 * BLOCK]);
        assert!(text.contains("mtime=1700000000.000000005"), "{text}");
        assert_eq!(mtime_text(-2, 250_000_000), "-1.750000000");
        assert_eq!(mtime_text(-1, 500_000_000), "-0.500000000");
    }

    /// The length counted is the length written, for every kind of entry.
    #[test]
    fn header_len_is_the_length_written() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let r = next();
            let kind = [Kind::File, Kind::Dir, Kind::Symlink, Kind::HardLink][(r % 4) as usize];
            let comps = 1 + (next() % 8) as usize;
            let path: Vec<u8> = (0..comps)
                .map(|_| "abcdefghij".repeat(9)[..1 + (next() % 60) as usize].to_string())
                .collect::<Vec<_>>()
                .join("/")
                .into_bytes();
            let big = |r: u64, small: u64| if r.is_multiple_of(5) { r } else { r % small };
            let m = EntryMeta {
                path,
                kind,
                size: if kind == Kind::File { big(next(), 1 << 20) } else { 0 },
                mode: (next() % 0o10000) as u32,
                mtime: if next() % 7 == 0 { -((next() % 100_000) as i64) } else { big(next(), 2_000_000_000) as i64 },
                mtime_nsec: if next() % 3 == 0 { 0 } else { (next() % 1_000_000_000) as u32 },
                uid: big(next(), 70_000),
                gid: big(next(), 70_000),
                link: matches!(kind, Kind::Symlink | Kind::HardLink)
                    .then(|| "t/".repeat(1 + (next() % 120) as usize).into_bytes()),
            };
            let mut out = Vec::new();
            write_header(&m, &mut out);
            assert_eq!(header_len(&m), out.len(), "{m:?}");
        }
    }

    fn mtime_text(secs: i64, nsec: u32) -> String {
        let mut out = Vec::new();
        format_mtime(secs, nsec, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The hand-written number formatting says what `format!` says: the
    /// archive's bytes must not change with the encoder's speed.
    #[test]
    fn numbers_are_written_as_format_writes_them() {
        let reference_mtime = |secs: i64, nsec: u32| -> String {
            if nsec == 0 {
                return secs.to_string();
            }
            if secs >= 0 {
                format!("{secs}.{nsec:09}")
            } else {
                let (s, n) = (secs + 1, 1_000_000_000 - nsec);
                let sign = if s == 0 { "-" } else { "" };
                format!("{sign}{s}.{n:09}")
            }
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut values: Vec<u64> = vec![0, 1, 7, 8, 9, 10, 99, 100, 0o7777777, 0o10000000, u64::MAX];
        for shift in 0..64 {
            values.push(next() >> shift);
        }
        for &v in &values {
            let mut field = [0xffu8; 12];
            put_octal(&mut field, v);
            let s = format!("{v:011o}");
            assert_eq!(&field[..11], &s.as_bytes()[s.len() - 11..], "{v}");
            assert_eq!(field[11], 0);
            let mut out = Vec::new();
            push_decimal(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
            assert_eq!(digits(v), v.to_string().len());
            for secs in [v as i64, -(v as i64 >> 1), (v >> 30) as i64, -((v >> 34) as i64)] {
                for nsec in [0, 1, 5, 999_999_999, (v % 1_000_000_000) as u32] {
                    assert_eq!(mtime_text(secs, nsec), reference_mtime(secs, nsec), "{secs} {nsec}");
                    assert_eq!(mtime_len(secs, nsec), mtime_text(secs, nsec).len(), "{secs} {nsec}");
                }
            }
        }
    }

    #[test]
    fn checksum_is_accepted_by_the_tar_crate() {
        let mut m = meta("x", Kind::Symlink);
        m.link = Some(b"target".to_vec());
        let mut out = Vec::new();
        write_header(&m, &mut out);
        out.extend_from_slice(&[0u8; 1024]);
        let e = read_back(&out);
        assert_eq!(e, vec![("x".to_string(), b'2', 1_700_000_000)]);
    }

    #[test]
    fn huge_values_use_base256() {
        let mut m = meta("big", Kind::File);
        m.size = 10 * 1024 * 1024 * 1024 * 1024; // 10 TiB
        m.uid = 5_000_000;
        let mut out = Vec::new();
        write_header(&m, &mut out);
        let h = &out[out.len() - BLOCK..];
        assert_eq!(h[124] & 0x80, 0x80);
        let hdr = tar::Header::from_byte_slice(h);
        assert_eq!(hdr.size().unwrap(), m.size);
        assert_eq!(hdr.uid().unwrap(), m.uid);
    }
}
