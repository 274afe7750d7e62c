//! The private-network key (`--swarm-key FILE`): libp2p's pre-shared key
//! file format (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits), the
//! same as go-libp2p and IPFS use. A node without the same key cannot
//! complete a connection handshake.
//!
//! The key can be rotated on a live mesh ([`SwarmKeys`]): the node reads
//! its key file again every tick, and when the key in it changes, the old
//! one stays accepted for an overlap (`--swarm-key-overlap`), so nodes
//! that have the new key and nodes that do not yet still talk. The wire
//! is libp2p's pnet (a 24-byte nonce each way, then XSalsa20 under the
//! key), unchanged: what rotation adds is on each side of it.
//! - Accepting: the first bytes a dialer sends under pnet are always the
//!   multistream header (`\x13/multistream/1.0.0\n`), so the listener
//!   reads those 20 bytes and takes the key they decrypt under (the
//!   current one, or the previous one during the overlap); none, and the
//!   connection is closed.
//! - Dialing: with the current key; when a peer's first answer does not
//!   decrypt to that header (it does not have the key yet), the next dial
//!   to that address uses the previous key, and the current one is tried
//!   again after a few minutes.
//! - Ending: once the overlap is over, connections still under the
//!   previous key are closed and it is refused from then on.
//!
//! The node keeps its own record of the rotation (`DATA_DIR/swarm-keys`,
//! 0600), so a restart during the overlap, or a key file changed while
//! the node was stopped, keeps the previous key accepted.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
pub use libp2p::pnet::PreSharedKey;
use libp2p::Multiaddr;
use salsa20::cipher::{KeyIvInit, StreamCipher};
use salsa20::XSalsa20;

#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyError {
    #[error("cannot read the swarm key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the swarm key {path} is malformed ({reason}); make one with `backmesh-node keygen`")]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot write the swarm key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn load(path: &Path) -> Result<PreSharedKey, SwarmKeyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| SwarmKeyError::Read { path: path.to_path_buf(), source: e })?;
    text.parse::<PreSharedKey>()
        .map_err(|e| SwarmKeyError::Malformed { path: path.to_path_buf(), reason: format!("{e:?}") })
}

/// A new random key, in the file format.
pub fn generate() -> Result<PreSharedKey, std::io::Error> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(PreSharedKey::new(bytes))
}

/// Writes a new key to `path` (mode 0600), refusing to replace one.
pub fn create(path: &Path) -> Result<PreSharedKey, SwarmKeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let w = |e| SwarmKeyError::Write { path: path.to_path_buf(), source: e };
    let key = generate().map_err(w)?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(w)?;
    f.write_all(key.to_string().as_bytes()).map_err(w)?;
    f.sync_all().map_err(w)?;
    Ok(key)
}

impl crate::error::Transient for SwarmKeyError {
    fn retry(&self) -> crate::error::Retry {
        // A key file that cannot be read or is malformed stays so until the
        // operator mends it.
        crate::error::Retry::Never
    }
}

type Key = [u8; 32];

/// The raw bytes of a key (the file format's last line).
fn bytes_of(key: &PreSharedKey) -> Key {
    let text = key.to_string();
    let hex_digits = text.lines().last().unwrap_or_default();
    let mut out = [0u8; 32];
    // A PreSharedKey prints its 32 bytes as 64 hex digits, always.
    hex::decode_to_slice(hex_digits, &mut out).expect("a parsed key prints as 64 hex digits");
    out
}

/// A key's fingerprint, as go-libp2p prints it (never the key itself).
pub fn fingerprint(key: &Key) -> String {
    PreSharedKey::new(*key).fingerprint().to_string()
}

/// What the first 20 bytes a pnet peer sends decrypt to: the multistream
/// header (varint length 19, `/multistream/1.0.0\n`).
const HEADER: &[u8; 20] = b"\x13/multistream/1.0.0\n";
const NONCE: usize = 24;
/// How long a dial that found the current key refused goes to that
/// address under the previous key before the current one is tried again.
const RETRY_CURRENT: Duration = Duration::from_secs(180);

#[derive(Clone, Debug, PartialEq, Eq)]
struct KeySet {
    current: Key,
    /// The key in use before the last change, and until when (ms since
    /// the epoch) it is accepted.
    previous: Option<(Key, i64)>,
}

impl KeySet {
    fn accepts(&self, key: &Key) -> bool {
        *key == self.current || self.previous.is_some_and(|(p, _)| p == *key)
    }
    fn accepted(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current).chain(self.previous.iter().map(|(k, _)| k))
    }
}

/// A rotation under way, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub previous: String,
    pub until_ms: i64,
}

/// The swarm keys a node accepts: its key file, read again every tick,
/// and the key it replaced during the overlap.
pub struct SwarmKeys {
    file: PathBuf,
    record: Option<PathBuf>,
    overlap_ms: i64,
    set: RwLock<KeySet>,
    /// Bumped at every change of the set, so that connections look again
    /// at whether their key is still accepted.
    generation: AtomicU64,
    /// Addresses that refused the current key, and when.
    refused_current: Mutex<HashMap<Multiaddr, Instant>>,
    /// The last reload error reported, so it is logged once.
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for SwarmKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmKeys").field("file", &self.file).field("current", &self.current()).finish()
    }
}

impl SwarmKeys {
    /// Loads the key file and this node's record of its rotation
    /// (`record`, kept in the data directory), noticing a key that changed
    /// while the node was stopped.
    pub fn open(
        file: &Path,
        record: Option<PathBuf>,
        overlap: Duration,
        now_ms: i64,
    ) -> Result<Arc<SwarmKeys>, SwarmKeyError> {
        let current = bytes_of(&load(file)?);
        let overlap_ms = overlap.as_millis().min(i64::MAX as u128) as i64;
        let kept = record.as_deref().and_then(|p| match read_record(p) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!("{e}; starting a new one");
                None
            }
        });
        let previous = match kept {
            Some(k) if k.current != current => {
                let until = now_ms.saturating_add(overlap_ms);
                tracing::warn!(
                    "the swarm key changed while this node was stopped (fingerprint {} → {}): the previous key \
                     stays accepted until {}",
                    fingerprint(&k.current),
                    fingerprint(&current),
                    crate::clock::rfc3339(until)
                );
                Some((k.current, until))
            }
            Some(k) => k.previous.filter(|(p, until)| *p != current && *until > now_ms),
            None => None,
        };
        let keys = SwarmKeys {
            file: file.to_path_buf(),
            record,
            overlap_ms,
            set: RwLock::new(KeySet { current, previous }),
            generation: AtomicU64::new(0),
            refused_current: Mutex::new(HashMap::new()),
            last_error: Mutex::new(None),
        };
        keys.persist()
            .map_err(|e| SwarmKeyError::Write { path: keys.record.clone().unwrap_or_default(), source: e })?;
        Ok(Arc::new(keys))
    }

    fn snapshot(&self) -> KeySet {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The fingerprint of the key this node dials with.
    pub fn current(&self) -> String {
        fingerprint(&self.snapshot().current)
    }

    /// The rotation under way, if any.
    pub fn rotation(&self) -> Option<Rotation> {
        self.snapshot().previous.map(|(k, until_ms)| Rotation { previous: fingerprint(&k), until_ms })
    }

    /// Reads the key file again and ends an overlap that is over. Returns
    /// what changed, in words, for the log; a file that cannot be read
    /// keeps the keys as they are (warned about once).
    pub fn reload(&self, now_ms: i64) -> Option<String> {
        let fresh = match load(&self.file) {
            Ok(k) => {
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                bytes_of(&k)
            }
            Err(e) => {
                let words = format!("{e}; keeping the keys in use");
                let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
                if last.as_deref() != Some(words.as_str()) {
                    tracing::warn!("{words}");
                    *last = Some(words);
                }
                return None;
            }
        };
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        let said = if fresh != set.current {
            let until = now_ms.saturating_add(self.overlap_ms);
            let words = format!(
                "the swarm key changed (fingerprint {} → {}): this node dials with the new key, and accepts the \
                 previous one until {}",
                fingerprint(&set.current),
                fingerprint(&fresh),
                crate::clock::rfc3339(until)
            );
            set.previous = Some((set.current, until));
            set.current = fresh;
            self.refused_current.lock().unwrap_or_else(|e| e.into_inner()).clear();
            words
        } else if set.previous.is_some_and(|(_, until)| until <= now_ms) {
            let (old, _) = set.previous.take().expect("checked above");
            format!(
                "the overlap of the swarm key rotation is over: the previous key (fingerprint {}) is refused from now \
                 on",
                fingerprint(&old)
            )
        } else {
            return None;
        };
        drop(set);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.persist() {
            tracing::warn!("cannot record the swarm key rotation: {e}");
        }
        Some(said)
    }

    fn persist(&self) -> std::io::Result<()> {
        let Some(path) = &self.record else { return Ok(()) };
        let set = self.snapshot();
        let mut text = String::from("# backmesh: this node's record of its swarm key rotation (secret, 0600)\n");
        text += &format!("current {}\n", hex::encode(set.current));
        if let Some((k, until)) = set.previous {
            text += &format!("previous {} {until}\n", hex::encode(k));
        }
        crate::disk::write_atomic(path, text.as_bytes())
    }

    /// The key to dial `addr` with.
    fn dial_key(&self, addr: &Multiaddr) -> Key {
        let set = self.snapshot();
        if let Some((previous, _)) = set.previous {
            let refused = self.refused_current.lock().unwrap_or_else(|e| e.into_inner());
            if refused.get(addr).is_some_and(|at| at.elapsed() < RETRY_CURRENT) {
                return previous;
            }
        }
        set.current
    }

    /// `addr` did not answer under `key`: the next dial tries the other one.
    fn refused(&self, addr: &Multiaddr, key: &Key) {
        let set = self.snapshot();
        let mut refused = self.refused_current.lock().unwrap_or_else(|e| e.into_inner());
        if *key == set.current && set.previous.is_some() {
            refused.insert(addr.clone(), Instant::now());
        } else {
            refused.remove(addr);
        }
    }

    /// The private-network handshake, as libp2p's pnet does it, with the
    /// key chosen as the module says. `dialed` is the address dialed, or
    /// `None` on an accepted connection.
    pub async fn handshake<S>(self: Arc<Self>, mut socket: S, dialed: Option<Multiaddr>) -> std::io::Result<Keyed<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut mine = [0u8; NONCE];
        random(&mut mine)?;
        socket.write_all(&mine).await?;
        socket.flush().await?;
        let mut theirs = [0u8; NONCE];
        socket.read_exact(&mut theirs).await?;
        let generation = self.generation.load(Ordering::SeqCst);
        match dialed {
            Some(addr) => {
                let key = self.dial_key(&addr);
                Ok(Keyed::new(socket, self, key, generation, &mine, &theirs, Vec::new(), Some((0, addr))))
            }
            None => {
                let mut first = [0u8; HEADER.len()];
                socket.read_exact(&mut first).await?;
                let set = self.snapshot();
                for key in set.accepted() {
                    let mut read = XSalsa20::new(&(*key).into(), &theirs.into());
                    let mut plain = first;
                    read.apply_keystream(&mut plain);
                    if &plain == HEADER {
                        let key = *key;
                        let mut keyed = Keyed::new(socket, self, key, generation, &mine, &theirs, plain.to_vec(), None);
                        keyed.read = read;
                        return Ok(keyed);
                    }
                }
                Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "its swarm key is not this node's (does it use the same --swarm-key?)",
                ))
            }
        }
    }
}

fn random(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

struct Record {
    current: Key,
    previous: Option<(Key, i64)>,
}

fn read_record(path: &Path) -> Result<Option<Record>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let bad = || format!("{} is malformed", path.display());
    let key = |hex_digits: &str| {
        let mut k = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut k).map(|_| k).map_err(|_| bad())
    };
    let (mut current, mut previous) = (None, None);
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["current", k] => current = Some(key(k)?),
            ["previous", k, until] => previous = Some((key(k)?, until.parse().map_err(|_| bad())?)),
            _ => return Err(bad()),
        }
    }
    Ok(Some(Record { current: current.ok_or_else(bad)?, previous }))
}

/// A connection under the private-network key: XSalsa20 each way, as
/// libp2p's pnet. It fails once its key is no longer accepted.
pub struct Keyed<S> {
    inner: S,
    keys: Arc<SwarmKeys>,
    key: Key,
    generation: u64,
    read: XSalsa20,
    write: XSalsa20,
    /// Ciphertext waiting to be written.
    out: Vec<u8>,
    /// Plaintext read during the handshake, handed out first.
    early: Vec<u8>,
    /// On a dialed connection: how many bytes of the peer's header were
    /// checked so far, and the address to remember a refusal for.
    check: Option<(usize, Multiaddr)>,
}

impl<S> Keyed<S> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        inner: S,
        keys: Arc<SwarmKeys>,
        key: Key,
        generation: u64,
        mine: &[u8; NONCE],
        theirs: &[u8; NONCE],
        early: Vec<u8>,
        check: Option<(usize, Multiaddr)>,
    ) -> Self {
        Keyed {
            inner,
            keys,
            key,
            generation,
            read: XSalsa20::new(&key.into(), &(*theirs).into()),
            write: XSalsa20::new(&key.into(), &(*mine).into()),
            out: Vec::with_capacity(4096),
            early,
            check,
        }
    }

    /// Errs once the key of this connection is no longer accepted.
    fn still_accepted(&mut self) -> std::io::Result<()> {
        let now = self.keys.generation.load(Ordering::SeqCst);
        if now != self.generation {
            if !self.keys.snapshot().accepts(&self.key) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the swarm key of this connection is no longer accepted (rotated)",
                ));
            }
            self.generation = now;
        }
        Ok(())
    }

    /// Checks what a dialed peer sent first; a peer without our key sends
    /// garbage or closes.
    fn check_header(&mut self, plain: &[u8]) -> std::io::Result<()> {
        let Some((seen, addr)) = &mut self.check else { return Ok(()) };
        let want = &HEADER[*seen..];
        let n = plain.len().min(want.len());
        if plain.is_empty() || plain[..n] != want[..n] {
            self.keys.refused(addr, &self.key);
            self.check = None;
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the peer does not accept this node's swarm key (does it use the same --swarm-key?)",
            ));
        }
        *seen += n;
        if *seen == HEADER.len() {
            self.check = None;
        }
        Ok(())
    }
}

impl<S> Drop for Keyed<S> {
    fn drop(&mut self) {
        // Dropped before the peer's answer came (an older node may wait
        // on the garbage it got until the handshake times out): the key
        // did not get through to that address.
        if let Some((_, addr)) = self.check.take() {
            self.keys.refused(&addr, &self.key);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Keyed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.still_accepted()?;
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.len());
            buf[..n].copy_from_slice(&this.early[..n]);
            this.early.drain(..n);
            return Poll::Ready(Ok(n));
        }
        let n = futures::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read.apply_keystream(&mut buf[..n]);
        this.check_header(&buf[..n])?;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> Keyed<S> {
    /// Writes out what is waiting; `Ready(Ok)` once nothing is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            match futures::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out)) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Keyed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.still_accepted()?;
        futures::ready!(this.poll_drain(cx))?;
        let n = buf.len().min(16 * 1024);
        this.out.extend_from_slice(&buf[..n]);
        this.write.apply_keystream(&mut this.out[..n]);
        // Start writing now; what does not go yet goes at the next call.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_and_refuse_garbage() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("swarm.key");
        let k = create(&p).unwrap();
        assert_eq!(load(&p).unwrap().fingerprint().to_string(), k.fingerprint().to_string());
        assert!(create(&p).is_err(), "never overwrites a key");
        std::fs::write(&p, "/key/swarm/psk/1.0.0/\n/base16/\nnot-hex\n").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("malformed"));
        assert!(load(&t.path().join("missing")).unwrap_err().to_string().contains("cannot read"));
    }

    fn rewrite(path: &Path) -> PreSharedKey {
        let key = generate().unwrap();
        std::fs::write(path, key.to_string()).unwrap();
        key
    }

    #[test]
    fn a_changed_key_file_keeps_the_previous_key_for_the_overlap_across_restarts() {
        let t = tempfile::tempdir().unwrap();
        let (file, record) = (t.path().join("swarm.key"), t.path().join("swarm-keys"));
        let old = create(&file).unwrap();
        let overlap = Duration::from_secs(60);
        let keys = SwarmKeys::open(&file, Some(record.clone()), overlap, 1_000).unwrap();
        assert_eq!(keys.reload(2_000), None, "nothing changed");
        let new = rewrite(&file);
        let said = keys.reload(3_000).unwrap();
        assert!(said.contains(&old.fingerprint().to_string()) && said.contains(&new.fingerprint().to_string()));
        assert_eq!(keys.current(), new.fingerprint().to_string());
        assert_eq!(keys.rotation().unwrap(), Rotation { previous: old.fingerprint().to_string(), until_ms: 63_000 });
        // A restart during the overlap keeps accepting the previous key.
        let again = SwarmKeys::open(&file, Some(record.clone()), overlap, 10_000).unwrap();
        assert_eq!(again.rotation(), keys.rotation());
        // The overlap ends: the previous key is refused from then on.
        assert!(again.reload(63_000).unwrap().contains("over"));
        assert_eq!(again.rotation(), None);
        assert!(!again.snapshot().accepts(&bytes_of(&old)));
        // A key changed while the node was stopped is noticed at start.
        let newer = rewrite(&file);
        let started = SwarmKeys::open(&file, Some(record), overlap, 100_000).unwrap();
        assert_eq!(started.current(), newer.fingerprint().to_string());
        assert_eq!(started.rotation().unwrap().previous, new.fingerprint().to_string());
        // A file being rewritten (malformed for a moment) changes nothing.
        std::fs::write(&file, "/key/swarm/psk/1.0.0/\n").unwrap();
        assert_eq!(started.reload(101_000), None);
        assert_eq!(started.current(), newer.fingerprint().to_string());
    }

    /// Runs both handshakes over an in-memory pipe and says whether the
    /// dialer's first plaintext arrived intact.
    fn connect(dialer: Arc<SwarmKeys>, listener: Arc<SwarmKeys>) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (a, b) = pair().await;
            let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
            let dial = async {
                let mut s = dialer.handshake(a, Some(addr)).await.map_err(|e| e.to_string())?;
                s.write_all(HEADER).await.map_err(|e| e.to_string())?;
                s.write_all(b"hello").await.map_err(|e| e.to_string())?;
                s.flush().await.map_err(|e| e.to_string())?;
                let mut back = [0u8; 20];
                s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(back)
            };
            let accept = async {
                let mut s = listener.handshake(b, None).await.map_err(|e| e.to_string())?;
                let mut got = [0u8; 25];
                s.read_exact(&mut got).await.map_err(|e| e.to_string())?;
                s.write_all(HEADER).await.map_err(|e| e.to_string())?;
                s.flush().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(got)
            };
            let (d, l) = tokio::join!(dial, accept);
            let got = l?;
            assert_eq!(&got[..20], HEADER);
            assert_eq!(&got[20..], b"hello");
            assert_eq!(&d?, HEADER);
            Ok(())
        })
    }

    /// Two ends of a real loopback TCP connection.
    async fn pair() -> (Compat, Compat) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (Compat(a.unwrap()), Compat(b.unwrap().0))
    }

    struct Compat(tokio::net::TcpStream);
    impl AsyncRead for Compat {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
            let mut rb = tokio::io::ReadBuf::new(buf);
            futures::ready!(tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut rb))?;
            Poll::Ready(Ok(rb.filled().len()))
        }
    }
    impl AsyncWrite for Compat {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
        }
    }

    #[test]
    fn the_listener_takes_either_key_during_the_overlap_and_the_dialer_falls_back() {
        let t = tempfile::tempdir().unwrap();
        let node = |name: &str, key: &PreSharedKey| {
            let file = t.path().join(name);
            std::fs::write(&file, key.to_string()).unwrap();
            SwarmKeys::open(&file, None, Duration::from_secs(3600), 0).unwrap()
        };
        let (old, new) = (generate().unwrap(), generate().unwrap());
        let rotated = node("a", &old);
        std::fs::write(t.path().join("a"), new.to_string()).unwrap();
        rotated.reload(1).unwrap();
        let behind = node("b", &old);
        let ahead = node("c", &new);
        let stranger = node("d", &generate().unwrap());
        // Accepting: both keys during the overlap, no other.
        connect(behind.clone(), rotated.clone()).unwrap();
        connect(ahead.clone(), rotated.clone()).unwrap();
        assert!(connect(stranger.clone(), rotated.clone()).is_err());
        // Dialing a node that has only the old key: refused once, then
        // the previous key is used for that address.
        assert!(connect(rotated.clone(), behind.clone()).is_err());
        connect(rotated.clone(), behind.clone()).unwrap();
        connect(rotated.clone(), ahead.clone()).unwrap_err(); // same address: still on the previous key
                                                              // … which the other node refuses, so the current key is next.
        connect(rotated.clone(), ahead.clone()).unwrap();
    }

    #[test]
    fn libp2p_pnet_on_the_other_side_interoperates() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("swarm.key");
        let key = create(&file).unwrap();
        let keys = SwarmKeys::open(&file, None, Duration::from_secs(60), 0).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for we_dial in [true, false] {
            let keys = keys.clone();
            rt.block_on(async move {
                let (a, b) = pair().await;
                let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
                let ours = async {
                    let mut s = keys.handshake(a, we_dial.then_some(addr)).await.unwrap();
                    let mut got = [0u8; 20];
                    if we_dial {
                        s.write_all(HEADER).await.unwrap();
                        s.flush().await.unwrap();
                        s.read_exact(&mut got).await.unwrap();
                    } else {
                        s.read_exact(&mut got).await.unwrap();
                        s.write_all(HEADER).await.unwrap();
                        s.flush().await.unwrap();
                    }
                    got
                };
                let theirs = async {
                    let mut s = libp2p::pnet::PnetConfig::new(key).handshake(b).await.unwrap();
                    let mut got = [0u8; 20];
                    if we_dial {
                        s.read_exact(&mut got).await.unwrap();
                        s.write_all(HEADER).await.unwrap();
                        s.flush().await.unwrap();
                    } else {
                        s.write_all(HEADER).await.unwrap();
                        s.flush().await.unwrap();
                        s.read_exact(&mut got).await.unwrap();
                    }
                    got
                };
                let (x, y) = tokio::join!(ours, theirs);
                assert_eq!((&x, &y), (HEADER, HEADER));
            });
        }
    }
}
