//! An operator key file under a passphrase: the key's 32-byte seed sealed
//! with XChaCha20-Poly1305 under a key that scrypt derives from the
//! passphrase and a random salt (RustCrypto; nothing hand-made). A wrong
//! passphrase, or a file changed by one byte, does not open.
//!
//! ```text
//! backmesh operator secret key v1
//! public: bmop-…
//! kdf: scrypt 15 8 1 SALT-HEX
//! sealed: NONCE-HEX CIPHERTEXT-HEX
//! ```

use backmesh_api::order::OperatorKey;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// scrypt's cost: 2^15 rounds of 8 × 128 bytes (32 MiB, about a tenth of
/// a second), as its authors recommend for interactive use.
const LOG_N: u8 = 15;
const R: u32 = 8;
const P: u32 = 1;

/// The passphrase from `BACKMESH_OPERATOR_PASSPHRASE`, if set.
pub(crate) const PASSPHRASE_ENV: &str = "BACKMESH_OPERATOR_PASSPHRASE";

fn derive(passphrase: &str, salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<[u8; 32], String> {
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(|e| format!("bad scrypt parameters: {e}"))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(passphrase.as_bytes(), salt, &params, &mut key).map_err(|e| format!("scrypt: {e}"))?;
    Ok(key)
}

/// The lines of a key file that hold `key` sealed under `passphrase`
/// (the public half in clear, bound to the seal as associated data).
pub(crate) fn seal(key: &OperatorKey, passphrase: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut salt).and_then(|()| getrandom::fill(&mut nonce)).map_err(|e| format!("no randomness: {e}"))?;
    let k = derive(passphrase, &salt, LOG_N, R, P)?;
    let aead = XChaCha20Poly1305::new((&k).into());
    let public = key.public();
    let sealed = aead
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &key.seed(), aad: public.as_bytes() })
        .map_err(|_| "cannot seal the key".to_string())?;
    Ok(format!(
        "public: {public}\nkdf: scrypt {LOG_N} {R} {P} {}\nsealed: {} {}\n",
        hex::encode(salt),
        hex::encode(nonce),
        hex::encode(sealed)
    ))
}

/// Whether a key file's text is sealed under a passphrase.
pub(crate) fn is_sealed(text: &str) -> bool {
    text.lines().any(|l| l.trim_start().starts_with("sealed:"))
}

/// The key a sealed key file's text holds, opened with `passphrase`.
pub(crate) fn open(text: &str, passphrase: &str) -> Result<OperatorKey, String> {
    let field = |name: &str| -> Result<Vec<&str>, String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.split_whitespace().collect())
            .ok_or_else(|| format!("the key file has no `{name}` line"))
    };
    let bad = |what: &str| format!("the key file's {what} does not read");
    let public = field("public:")?.first().copied().ok_or_else(|| bad("public key"))?.to_string();
    let (log_n, r, p, salt) = match field("kdf:")?.as_slice() {
        ["scrypt", n, r, p, salt] => (
            n.parse::<u8>().map_err(|_| bad("kdf"))?,
            r.parse::<u32>().map_err(|_| bad("kdf"))?,
            p.parse::<u32>().map_err(|_| bad("kdf"))?,
            hex::decode(salt).map_err(|_| bad("salt"))?,
        ),
        _ => return Err(bad("kdf (scrypt N R P SALT)")),
    };
    // A file may not make this client spend more than 1 GiB on scrypt.
    if log_n > 20 || r > 16 || p > 4 {
        return Err(bad("kdf, whose cost is past any this client makes,"));
    }
    let (nonce, sealed) = match field("sealed:")?.as_slice() {
        [n, c] => (hex::decode(n).map_err(|_| bad("nonce"))?, hex::decode(c).map_err(|_| bad("seal"))?),
        _ => return Err(bad("seal")),
    };
    if nonce.len() != 24 {
        return Err(bad("nonce"));
    }
    let k = derive(passphrase, &salt, log_n, r, p)?;
    let seed = XChaCha20Poly1305::new((&k).into())
        .decrypt(XNonce::from_slice(&nonce), Payload { msg: &sealed, aad: public.as_bytes() })
        .map_err(|_| "wrong passphrase for the operator key (or the key file was changed)".to_string())?;
    let seed: [u8; 32] = seed.try_into().map_err(|_| bad("seal"))?;
    let key = OperatorKey::from_seed(seed);
    if key.public() != public {
        return Err("the key file's public key is not its secret's".into());
    }
    Ok(key)
}

/// A passphrase: `BACKMESH_OPERATOR_PASSPHRASE`, else asked on the
/// terminal without echo (`twice` to make a new one).
pub(crate) fn passphrase(prompt: &str, twice: bool) -> Result<String, String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p);
    }
    let first = ask(prompt)?;
    if twice && ask("again: ")? != first {
        return Err("the two passphrases differ".into());
    }
    if first.is_empty() {
        return Err("an empty passphrase seals nothing".into());
    }
    Ok(first)
}

/// One line read from /dev/tty with echo off.
fn ask(prompt: &str) -> Result<String, String> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let no_tty = |e: std::io::Error| {
        format!(
            "the operator key is under a passphrase and there is no terminal to ask it on ({e}): set {PASSPHRASE_ENV}"
        )
    };
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").map_err(no_tty)?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on an open file descriptor with a zeroed,
    // then kernel-filled struct; the old settings are put back below.
    let old = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(no_tty(std::io::Error::last_os_error()));
        }
        let old = t;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        old
    };
    let mut out = &tty;
    let _ = write!(out, "{prompt}").and_then(|()| out.flush());
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: as above, restoring the settings read before.
    unsafe {
        libc::tcsetattr(fd, libc::TCSANOW, &old);
    }
    read.map_err(no_tty)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_with_its_passphrase_only_and_unaltered() {
        let key = OperatorKey::generate().unwrap();
        let text = format!("backmesh operator secret key v1\n{}", seal(&key, "correct horse").unwrap());
        assert!(is_sealed(&text) && !text.contains(&hex::encode(key.seed())));
        assert_eq!(open(&text, "correct horse").unwrap().public(), key.public());
        assert!(open(&text, "wrong horse").unwrap_err().contains("wrong passphrase"));
        // Another public key in clear: the seal does not open.
        let other = OperatorKey::generate().unwrap().public();
        let swapped = text.replace(&key.public(), &other);
        assert!(open(&swapped, "correct horse").is_err());
        // A cost past any this client makes is refused before it is paid.
        let costly = text.replace("scrypt 15 8 1", "scrypt 40 8 1");
        assert!(open(&costly, "correct horse").unwrap_err().contains("cost"));
    }
}
