//! Encrypted archives on the operator's machine: the data key of another
//! node's archive, unwrapped with the operator's recovery key (derived
//! from the operator key) and wrapped to the node that is to restore it,
//! for that restore alone (docs/encryption.md).

use backmesh_api::order::Act;
use backmesh_crypt::wrap::{unwrap, Identity};

use crate::client::{enc, Client, Failure};

/// For an encrypted archive: its data key, unwrapped here with the
/// operator's recovery key and wrapped to node `on` alone, for the
/// restore order to carry; `None` for a plain archive.
pub(crate) fn restore_key(
    client: &Client,
    node: &str,
    path: &str,
    archive: Option<&str>,
    on: &str,
) -> Result<Option<String>, Failure> {
    use backmesh_crypt::wrap::{wrap, Bundle};
    let by = client.get::<backmesh_api::Health>("/health")?.name;
    if on == node && by != on {
        // The series' own node opens its archives with its own key (asked
        // of it, the key is given too: a rebuilt server may not hold it).
        return Ok(None);
    }
    let (n, p, a) = (node.to_string(), path.to_string(), archive.map(String::from));
    client.sign(Act::Fetch { node: n, path: p, archive: a, by: by.clone() })?;
    let mut url = format!("/keys?node={}&path={}", enc(node), enc(path));
    if let Some(a) = archive {
        url.push_str(&format!("&archive={}", enc(a)));
    }
    // Not found (yet): the restore itself says why, or waits for a holder
    // as it does; an encrypted archive then fails there, saying so.
    let Ok(keys) = client.get::<backmesh_api::ArchiveKeys>(&url) else { return Ok(None) };
    if !keys.encrypted {
        return Ok(None);
    }
    let Some(operator) = client.operator()? else { return Ok(None) };
    let recovery = Identity::of_operator(&operator.seed());
    let bundle =
        keys.keys.iter().filter_map(|k| hex::decode(k).ok()).find_map(|k| unwrap(&k, &recovery).ok()).ok_or_else(
            || {
                Failure::Refused(format!(
                    "archive {} of {path} on {node} is encrypted, and this operator key's recovery recipient ({}) is \
                 not one its data key was wrapped to (was operator-recovery set on {node} when it was made?)",
                    keys.archive,
                    recovery.recipient()
                ))
            },
        )?;
    // The key is wrapped to the restoring node's recipient as that node
    // itself says it: a node that only relayed the command could name its
    // own recipient for another's and read the key out of the order.
    let status: backmesh_api::Status = client.get("/status")?;
    if !status.nodes.iter().any(|n| n.name == on && n.up) {
        // A node unknown or down: the restore itself says so.
        return Ok(None);
    }
    if by != on {
        return Err(Failure::Refused(format!(
            "archive {} of {path} on {node} is encrypted: ask node {on} itself to restore it (`backmesh --node \
             URL-OF-{on} restore …`), so that the data key is wrapped to the key {on} says is its own, not to one \
             node {by} says it has",
            keys.archive
        )));
    }
    // A node that announces no recipient (an older version): the restore
    // itself says what is wrong.
    let Some(target) = status.nodes.iter().find(|n| n.this_node).and_then(|n| n.recipient.clone()) else {
        return Ok(None);
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64);
    let given = Bundle { created_ms: now.unwrap_or(0), ..bundle };
    let wrapped = wrap(&given, &[target]).map_err(|e| Failure::Refused(e.to_string()))?;
    Ok(Some(hex::encode(wrapped)))
}

/// The content type of a fetched encrypted archive: sealed objects, which
/// the CLI opens ([`sealed_to_tgz`]).
pub(crate) use backmesh_api::archives::SEALED_TYPE;

/// What opens a sealed stream.
#[derive(Clone, serde::Deserialize)]
pub(crate) struct StreamHeader {
    pub(crate) archive: String,
    node: String,
    path: String,
    kid: String,
    keys: Vec<String>,
    pub(crate) members: Vec<Listed>,
    head: Listed,
    /// The file table's groups (absent from streams of older nodes).
    #[serde(default)]
    index: Vec<Listed>,
    #[serde(default)]
    pub(crate) created_ms: i64,
    /// `false`: the lists and the head are not in this stream (asked with
    /// `lists=false`, for an archive opened by an earlier stream).
    #[serde(default = "listed_here")]
    lists: bool,
}

fn listed_here() -> bool {
    true
}

#[derive(Clone, serde::Deserialize)]
pub(crate) struct Listed {
    c: String,
    n: u64,
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    kn: Option<u64>,
}

impl Listed {
    /// The object's name (hex of the SHA-256 of its sealed bytes).
    pub(crate) fn name(&self) -> String {
        self.c.clone()
    }

    /// The bytes reading it takes: its own and its keyframe's.
    pub(crate) fn stored(&self) -> u64 {
        self.n + self.kn.unwrap_or(0)
    }
}

/// What the CLI reads of a sealed head.
#[derive(serde::Deserialize)]
struct HeadView {
    members: serde_bytes::ByteBuf,
    /// Each member's tar bytes (absent from older heads).
    #[serde(default)]
    lens: Vec<u64>,
    /// The digest of the file table's group list (absent from older heads).
    #[serde(default)]
    table: serde_bytes::ByteBuf,
    /// Where each group of the table starts (absent from older heads).
    #[serde(default)]
    groups: Vec<GroupAt>,
}

/// Where one group of a file table starts: its first path, the index of
/// its first record, where that record's entry starts in the tar stream.
#[derive(Clone, serde::Deserialize)]
pub(crate) struct GroupAt {
    pub(crate) first: serde_bytes::ByteBuf,
    pub(crate) offset: u64,
}

/// The longest member (and a member's raw bytes) the CLI takes, as the node.
const MAX_MEMBER: u64 = 256 << 20;

fn digest32(hex_text: &str) -> Result<[u8; 32], Failure> {
    hex::decode(hex_text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Failure::Refused(format!("the node sent `{hex_text}` where an object's name belongs")))
}

/// The CBOR value a sealed head or table group holds, deflated (at most 64 MiB).
fn inflated<T: serde::de::DeserializeOwned>(plain: &[u8], what: &str) -> Result<T, Failure> {
    let mut cbor = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(flate2::read::DeflateDecoder::new(plain), 64 << 20), &mut cbor)
        .map_err(|e| bad(format!("{what}: {e}")))?;
    ciborium::from_reader(&cbor[..]).map_err(|e| bad(format!("{what}: {e}")))
}

fn bad(what: String) -> Failure {
    Failure::Refused(format!("the download is damaged: {what}"))
}

fn broke(e: std::io::Error) -> Failure {
    Failure::Refused(format!("the download broke off: {e}"))
}

fn listed(list: &[Listed]) -> Result<Vec<backmesh_crypt::member::Listed>, Failure> {
    list.iter()
        .map(|m| {
            let k = match (&m.k, m.kn) {
                (Some(k), Some(kn)) => Some((digest32(k)?, kn)),
                _ => None,
            };
            Ok((digest32(&m.c)?, m.n, k))
        })
        .collect()
}

/// A sealed stream (`BMSF`, docs/api.md) being read: its header, the data
/// key unwrapped with the operator's recovery key, its head opened and the
/// lists it binds checked (the member list, and the file table's when it
/// came). Each object that follows is checked against its name as it is
/// read, and opened here: no node sees the plaintext.
pub(crate) struct SealedStream<'a> {
    input: &'a mut dyn std::io::Read,
    /// Shared with later streams of the archive (its lists can be large).
    pub(crate) h: std::sync::Arc<StreamHeader>,
    key: backmesh_crypt::DataKey,
    /// Each member's tar bytes, when the head says them.
    pub(crate) lens: Vec<u64>,
    /// The head binds the file table (heads made before it did not).
    bound: bool,
    /// Where each group of the table starts, when the head says it.
    pub(crate) groups: Vec<GroupAt>,
}

/// File records a table may hold at most, here.
const MAX_RECORDS: usize = 50_000_000;

/// What the first stream of an archive proved, for the next streams of
/// the same archive (`lists=false`): its checked lists, its key, its head.
#[derive(Clone)]
pub(crate) struct Opened {
    h: std::sync::Arc<StreamHeader>,
    key: backmesh_crypt::DataKey,
    lens: Vec<u64>,
    bound: bool,
    groups: Vec<GroupAt>,
}

fn read_header(input: &mut dyn std::io::Read) -> Result<StreamHeader, Failure> {
    let mut head = [0u8; 8];
    input.read_exact(&mut head).map_err(broke)?;
    if &head[..4] != b"BMSF" {
        return Err(bad("not a sealed archive stream".into()));
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if len > 64 << 20 {
        return Err(bad(format!("a header of {len} bytes")));
    }
    let mut text = vec![0u8; len];
    input.read_exact(&mut text).map_err(broke)?;
    serde_json::from_slice(&text).map_err(|e| bad(format!("its header: {e}")))
}

impl<'a> SealedStream<'a> {
    /// What this stream proved, for later streams of its archive.
    pub(crate) fn opened(&self) -> Opened {
        Opened {
            h: self.h.clone(),
            key: self.key.clone(),
            lens: self.lens.clone(),
            bound: self.bound,
            groups: self.groups.clone(),
        }
    }

    /// A later stream of an archive `known` opened, asked with
    /// `lists=false`: its objects are checked against the lists the first
    /// stream proved (a node that sent them again anyway sent the head
    /// too, which is checked by its name and passed over).
    pub(crate) fn resume(known: &Opened, input: &'a mut dyn std::io::Read) -> Result<SealedStream<'a>, Failure> {
        let h = read_header(input)?;
        if h.archive != known.h.archive || h.head.c != known.h.head.c || h.kid != known.h.kid {
            return Err(bad(format!("the node sent archive {} where {} was asked for", h.archive, known.h.archive)));
        }
        let mut s = SealedStream {
            input,
            h: known.h.clone(),
            key: known.key.clone(),
            lens: known.lens.clone(),
            bound: known.bound,
            groups: known.groups.clone(),
        };
        if h.lists {
            s.next(&known.h.head)?;
        }
        Ok(s)
    }

    pub(crate) fn open(client: &Client, input: &'a mut dyn std::io::Read) -> Result<SealedStream<'a>, Failure> {
        let h = read_header(input)?;
        if !h.lists {
            return Err(bad("its header lists nothing, and nothing this client read before does".into()));
        }
        let Some(operator) = client.operator()? else {
            return Err(Failure::Refused(format!(
                "archive {} of {} on {} is encrypted: give the operator key (--operator-key FILE), whose recovery \
                 key opens it here",
                h.archive, h.path, h.node
            )));
        };
        let recovery = Identity::of_operator(&operator.seed());
        let key = h
            .keys
            .iter()
            .filter_map(|k| hex::decode(k).ok())
            .find_map(|k| unwrap(&k, &recovery).ok())
            .map(|b| b.key)
            .filter(|k| k.id() == h.kid)
            .ok_or_else(|| {
                Failure::Refused(format!(
                    "archive {} of {} on {} is encrypted, and this operator key's recovery recipient ({}) is not \
                     one its data key was wrapped to",
                    h.archive,
                    h.path,
                    h.node,
                    recovery.recipient()
                ))
            })?;
        // The objects are this archive's: its id ends with their digest
        // (a node cannot pass another archive's objects off as the one
        // asked for). Streams of older nodes do not list the table.
        if !h.index.is_empty() || h.members.is_empty() {
            let digest = backmesh_crypt::member::objects_digest(
                listed(&h.members)?.into_iter(),
                listed(&h.index)?.into_iter(),
                (digest32(&h.head.c)?, h.head.n),
            );
            if !h.archive.ends_with(&format!("-{}", &hex::encode(digest)[..8])) {
                return Err(bad(format!("its objects are not those of archive {}", h.archive)));
            }
        }
        let mut s =
            SealedStream { input, h: std::sync::Arc::new(h), key, lens: Vec::new(), bound: false, groups: Vec::new() };
        // The member list is the one the series' node made: its sealed head says.
        let head = s.h.head.clone();
        let sealed_head = s.next_open(&head, backmesh_crypt::Kind::Head, b"")?;
        let view: HeadView = inflated(&sealed_head, "its head")?;
        let digest = |list: &[Listed]| listed(list).map(|l| backmesh_crypt::member::members_digest(l.into_iter()));
        if digest(&s.h.members)? != view.members.as_slice() {
            return Err(bad("its member list is not the one its node sealed".into()));
        }
        if !view.table.is_empty() && digest(&s.h.index)? != view.table.as_slice() {
            return Err(bad("its file table is not the one its node sealed".into()));
        }
        s.bound = !view.table.is_empty();
        if view.lens.len() == s.h.members.len() {
            s.lens = view.lens;
        }
        if view.groups.len() == s.h.index.len() {
            s.groups = view.groups;
        }
        Ok(s)
    }

    /// The next object of the stream, checked against the name it must have.
    fn next(&mut self, want: &Listed) -> Result<Vec<u8>, Failure> {
        use sha2::Digest as _;
        let mut frame = [0u8; 40];
        self.input.read_exact(&mut frame).map_err(broke)?;
        let n = u64::from_le_bytes(frame[32..].try_into().unwrap_or_default());
        let cid = digest32(&want.c)?;
        if frame[..32] != cid || n != want.n || n > MAX_MEMBER + 64 {
            return Err(bad(format!("object {} came out of order, or with another length", want.c)));
        }
        let mut data = vec![0u8; n as usize];
        self.input.read_exact(&mut data).map_err(broke)?;
        if <[u8; 32]>::from(sha2::Sha256::digest(&data)) != cid {
            return Err(bad(format!("object {} does not hash to its name", want.c)));
        }
        Ok(data)
    }

    /// The next object, checked and opened as `kind` with `context`.
    fn next_open(&mut self, want: &Listed, kind: backmesh_crypt::Kind, context: &[u8]) -> Result<Vec<u8>, Failure> {
        let data = self.next(want)?;
        match backmesh_crypt::open_object(&self.key, context, &data) {
            Ok((k, plain)) if k == kind => Ok(plain),
            Ok(_) => Err(bad("an object of another kind than its place says".into())),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// Group `g` of the file table, the one object that follows the head (`groups=g`).
    pub(crate) fn group(&mut self, g: usize) -> Result<Vec<backmesh_table::FileRecord>, Failure> {
        let Some(listed) = self.h.index.get(g).cloned() else {
            return Err(bad(format!("the archive has no table group {g}")));
        };
        if !self.bound {
            return Err(bad("its head does not vouch for its file table".into()));
        }
        let plain = self.next_open(&listed, backmesh_crypt::Kind::Index, b"")?;
        inflated(&plain, "its file table")
    }

    /// The file table, from the groups that follow the head (`part=table`).
    pub(crate) fn table(&mut self) -> Result<Vec<backmesh_table::FileRecord>, Failure> {
        if self.h.index.is_empty() && !self.h.members.is_empty() {
            return Err(bad("the node sent no file table (an older node: upgrade it)".into()));
        }
        if !self.bound {
            return Err(Failure::Refused(format!(
                "archive {} was made by an older version, whose head does not vouch for its file table: fetch it \
                 whole (`backmesh fetch`) and look inside with tar",
                self.h.archive
            )));
        }
        let mut files = Vec::new();
        for g in self.h.index.clone() {
            let plain = self.next_open(&g, backmesh_crypt::Kind::Index, b"")?;
            let group: Vec<backmesh_table::FileRecord> = inflated(&plain, "its file table")?;
            files.extend(group);
            if files.len() > MAX_RECORDS {
                return Err(bad(format!("a file table of more than {MAX_RECORDS} entries")));
            }
        }
        Ok(files)
    }

    /// A delta's member: its keyframe and the delta read from the stream,
    /// the delta applied; with the level its gzip form is made at.
    fn delta(&mut self, m: &Listed, k: &str, kn: u64) -> Result<(Vec<u8>, u32), Failure> {
        use backmesh_crypt::{member, Kind};
        let keyframe = Listed { c: k.to_string(), n: kn, k: None, kn: None };
        let gz = self.next_open(&keyframe, Kind::Member, b"")?;
        let old = member::inflate(&gz, MAX_MEMBER).map_err(|e| bad(e.to_string()))?;
        let body = self.next_open(m, Kind::Delta, &digest32(k)?)?;
        let d = member::decode_delta(&body).ok_or_else(|| bad("a delta too short for its header".into()))?;
        let raw = backmesh_crypt::delta::apply(&old, d.ops, d.literals, d.raw_len, MAX_MEMBER)
            .map_err(|e| bad(e.to_string()))?;
        if member::crc32(&raw) != d.crc {
            return Err(bad("a delta does not rebuild what was sealed".into()));
        }
        Ok((raw, d.level))
    }

    /// The next member as the gzip member a full run makes of it.
    pub(crate) fn member_gz(&mut self, m: &Listed) -> Result<Vec<u8>, Failure> {
        match (&m.k, m.kn) {
            (Some(k), Some(kn)) => {
                let (raw, level) = self.delta(m, k, kn)?;
                Ok(backmesh_crypt::gzip::gzip_member(&raw, level))
            }
            _ => self.next_open(m, backmesh_crypt::Kind::Member, b""),
        }
    }

    /// The next member's raw (tar) bytes.
    pub(crate) fn member_raw(&mut self, m: &Listed) -> Result<Vec<u8>, Failure> {
        match (&m.k, m.kn) {
            (Some(k), Some(kn)) => Ok(self.delta(m, k, kn)?.0),
            _ => {
                let gz = self.next_open(m, backmesh_crypt::Kind::Member, b"")?;
                backmesh_crypt::member::inflate(&gz, MAX_MEMBER).map_err(|e| bad(e.to_string()))
            }
        }
    }
}

/// Reads a sealed fetch stream from `input` and hands the `.tgz` it holds
/// to `out`, member by member, each opened (a delta applied to its
/// keyframe and compressed as the origin did). Answers the archive's id.
pub(crate) fn sealed_to_tgz(
    client: &Client,
    input: &mut dyn std::io::Read,
    out: &mut dyn FnMut(&[u8]) -> Result<(), Failure>,
) -> Result<String, Failure> {
    let mut s = SealedStream::open(client, input)?;
    for m in s.h.members.clone() {
        // A whole member is written as it was sealed; a delta's member as
        // the origin compresses it.
        out(&s.member_gz(&m)?)?;
    }
    Ok(s.h.archive.clone())
}
