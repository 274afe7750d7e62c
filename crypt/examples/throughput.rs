//! How fast objects seal and open on this machine, one core: MiB/s over
//! 64 KiB objects (the size of a group member).
//!
//!     cargo run --release -p backmesh-crypt --example throughput

use backmesh_crypt::{open_object, seal_object, DataKey, Kind};

fn main() {
    let key = DataKey::from_secret([9; 32]);
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let rounds = 4096u32; // 256 MiB
    let t = std::time::Instant::now();
    let mut last = Vec::new();
    for i in 0..rounds {
        let mut d = data.clone();
        d[0] = i as u8;
        last = seal_object(&key, Kind::Member, b"", &d);
    }
    let seal = t.elapsed();
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(open_object(&key, b"", &last).unwrap());
    }
    let open = t.elapsed();
    // The anchor, in the same run: the SHA-256 pass every member already gets.
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(<sha2::Sha256 as sha2::Digest>::digest(&data));
    }
    let sha = t.elapsed();
    let mib = rounds as f64 * data.len() as f64 / (1 << 20) as f64;
    println!(
        "seal {:.0} MiB/s, open {:.0} MiB/s, SHA-256 {:.0} MiB/s: sealing costs {:.2}x a SHA-256 pass (64 KiB objects, one core)",
        mib / seal.as_secs_f64(),
        mib / open.as_secs_f64(),
        mib / sha.as_secs_f64(),
        seal.as_secs_f64() / sha.as_secs_f64()
    );
}
