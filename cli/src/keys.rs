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

/// What opens a sealed fetch stream.
#[derive(serde::Deserialize)]
struct StreamHeader {
    archive: String,
    node: String,
    path: String,
    kid: String,
    keys: Vec<String>,
    members: Vec<Listed>,
    head: Listed,
}

#[derive(serde::Deserialize)]
struct Listed {
    c: String,
    n: u64,
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    kn: Option<u64>,
}

/// What the CLI reads of a sealed head.
#[derive(serde::Deserialize)]
struct HeadView {
    members: serde_bytes::ByteBuf,
}

/// The longest member (and a member's raw bytes) the CLI takes, as the node.
const MAX_MEMBER: u64 = 256 << 20;

fn digest32(hex_text: &str) -> Result<[u8; 32], Failure> {
    hex::decode(hex_text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Failure::Refused(format!("the node sent `{hex_text}` where an object's name belongs")))
}

/// Reads a sealed fetch stream (`BMSF`, docs/api.md) from `input` and hands
/// the `.tgz` it holds to `out`, member by member: the data key unwrapped
/// with the operator's recovery key, every object checked against its
/// name, the member list against the archive's sealed head, each member
/// opened (a delta applied to its keyframe and compressed as the origin
/// did). No node sees the plaintext. Answers the archive's id.
pub(crate) fn sealed_to_tgz(
    client: &Client,
    input: &mut dyn std::io::Read,
    out: &mut dyn FnMut(&[u8]) -> Result<(), Failure>,
) -> Result<String, Failure> {
    use backmesh_crypt::{member, open_object, Kind};
    use sha2::Digest as _;
    let broke = |e: std::io::Error| Failure::Refused(format!("the download broke off: {e}"));
    let bad = |what: String| Failure::Refused(format!("the download is damaged: {what}"));
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
    let h: StreamHeader = serde_json::from_slice(&text).map_err(|e| bad(format!("its header: {e}")))?;
    let Some(operator) = client.operator()? else {
        return Err(Failure::Refused(format!(
            "archive {} of {} on {} is encrypted: give the operator key (--operator-key FILE), whose recovery key \
             opens it here",
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
                "archive {} of {} on {} is encrypted, and this operator key's recovery recipient ({}) is not one \
                 its data key was wrapped to",
                h.archive,
                h.path,
                h.node,
                recovery.recipient()
            ))
        })?;
    // One object from the stream, checked against the name it must have.
    let mut next = |want: &Listed| -> Result<Vec<u8>, Failure> {
        let mut frame = [0u8; 40];
        input.read_exact(&mut frame).map_err(broke)?;
        let n = u64::from_le_bytes(frame[32..].try_into().unwrap_or_default());
        let cid = digest32(&want.c)?;
        if frame[..32] != cid || n != want.n || n > MAX_MEMBER + 64 {
            return Err(bad(format!("object {} came out of order, or with another length", want.c)));
        }
        let mut data = vec![0u8; n as usize];
        input.read_exact(&mut data).map_err(broke)?;
        if <[u8; 32]>::from(sha2::Sha256::digest(&data)) != cid {
            return Err(bad(format!("object {} does not hash to its name", want.c)));
        }
        Ok(data)
    };
    let open = |data: &[u8], kind: Kind, context: &[u8]| -> Result<Vec<u8>, Failure> {
        match open_object(&key, context, data) {
            Ok((k, plain)) if k == kind => Ok(plain),
            Ok(_) => Err(bad("an object of another kind than its place says".into())),
            Err(e) => Err(bad(e.to_string())),
        }
    };
    // The member list is the one the series' node made: its sealed head says.
    let sealed_head = open(&next(&h.head)?, Kind::Head, b"")?;
    let mut cbor = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(flate2::read::DeflateDecoder::new(&sealed_head[..]), 64 << 20),
        &mut cbor,
    )
    .map_err(|e| bad(format!("its head: {e}")))?;
    let view: HeadView = ciborium::from_reader(&cbor[..]).map_err(|e| bad(format!("its head: {e}")))?;
    let listed: Vec<member::Listed> = h
        .members
        .iter()
        .map(|m| {
            let k = match (&m.k, m.kn) {
                (Some(k), Some(kn)) => Some((digest32(k)?, kn)),
                _ => None,
            };
            Ok((digest32(&m.c)?, m.n, k))
        })
        .collect::<Result<_, Failure>>()?;
    if member::members_digest(listed.iter().copied()) != view.members.as_slice() {
        return Err(bad("its member list is not the one its node sealed".into()));
    }
    for m in &h.members {
        let data = match (&m.k, m.kn) {
            (Some(k), Some(kn)) => {
                let keyframe = Listed { c: k.clone(), n: kn, k: None, kn: None };
                let gz = open(&next(&keyframe)?, Kind::Member, b"")?;
                let old = member::inflate(&gz, MAX_MEMBER).map_err(|e| bad(e.to_string()))?;
                let body = open(&next(m)?, Kind::Delta, &digest32(k)?)?;
                let d = member::decode_delta(&body).ok_or_else(|| bad("a delta too short for its header".into()))?;
                let raw = backmesh_crypt::delta::apply(&old, d.ops, d.literals, d.raw_len, MAX_MEMBER)
                    .map_err(|e| bad(e.to_string()))?;
                if member::crc32(&raw) != d.crc {
                    return Err(bad("a delta does not rebuild what was sealed".into()));
                }
                backmesh_crypt::gzip::gzip_member(&raw, d.level)
            }
            _ => open(&next(m)?, Kind::Member, b"")?,
        };
        out(&data)?;
    }
    Ok(h.archive)
}
