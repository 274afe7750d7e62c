//! Wrapped data keys: a node's data key sealed to X25519 recipients in
//! the age format (<https://age-encryption.org/v1>), so that it survives
//! the loss of the node.
//!
//! A bundle is an age file whose stanzas are the node's own recipient
//! and every operator recovery recipient the node knows; its payload is
//! a short text naming the node, its identity and the key:
//!
//! ```text
//! backmesh data key bundle v1
//! node: NAME
//! peer: PEER ID
//! created: UNIX MILLISECONDS
//! id: 16 HEX DIGITS
//! secret: 64 HEX DIGITS
//! ```
//!
//! Identities are never stored apart: a node's is derived from its
//! libp2p identity's Ed25519 seed, the operator's recovery identity from
//! the operator key's seed, each with HKDF-SHA256 under its own label
//! (one key, one purpose: the signing scalar itself is never used for
//! Diffie-Hellman). So `identity.key` and `operator.key` remain the only
//! secrets to keep; an operator who wants the recovery key apart (offline,
//! on paper) gives nodes any other age recipient instead.
//!
//! The recipients' files open with the age tool too: `age -d -i FILE`,
//! FILE holding the `AGE-SECRET-KEY-1…` that `backmesh operator show
//! --recovery --secret` prints.

use std::io::{Read, Write};
use std::str::FromStr;

use bech32::ToBase32;
use sha2::Sha256;

use crate::DataKey;

/// The first line of a bundle's payload.
const PAYLOAD_FIRST_LINE: &str = "backmesh data key bundle v1";

/// The longest bundle read (16 recipients take about 2 KiB).
pub const MAX_BUNDLE_LEN: usize = 4096;

/// Recipients a bundle is sealed to at most (the node's own among them).
pub const MAX_RECIPIENTS: usize = 16;

/// Why a bundle cannot be made or opened.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    #[error("`{0}` is not an age X25519 recipient (age1…)")]
    BadRecipient(String),
    #[error("a data key is wrapped to at most {MAX_RECIPIENTS} recipients, not {0}")]
    TooManyRecipients(usize),
    #[error("the wrapped key is longer than any bundle ({0} bytes)")]
    TooLong(usize),
    #[error("this key does not open the wrapped data key (it was wrapped to other recipients)")]
    NotForThisKey,
    #[error("the wrapped data key does not read: {0}")]
    Malformed(String),
}

/// An X25519 identity that opens bundles: a node's, or the operator's
/// recovery identity.
#[derive(Clone)]
pub struct Identity(age::x25519::Identity);

/// Never the secret.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.recipient())
    }
}

/// HKDF-SHA256 of an Ed25519 seed, for one purpose.
fn x25519_secret(seed: &[u8; 32], info: &str) -> [u8; 32] {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"backmesh x25519 identity v1"), seed);
    let mut out = [0u8; 32];
    hk.expand(info.as_bytes(), &mut out).expect("HKDF-SHA256 gives 32 bytes");
    out
}

impl Identity {
    /// The identity of these 32 secret bytes (an X25519 scalar, clamped
    /// where it is used, as age does).
    fn from_secret(secret: [u8; 32]) -> Identity {
        let text = bech32::encode("age-secret-key-", secret.to_base32(), bech32::Variant::Bech32)
            .expect("age's prefix is a valid bech32 prefix")
            .to_uppercase();
        Identity(age::x25519::Identity::from_str(&text).expect("32 bytes make an age identity"))
    }

    /// Node's identity, derived from the Ed25519 seed of its libp2p key.
    pub fn of_node(ed25519_seed: &[u8; 32]) -> Identity {
        Identity::from_secret(x25519_secret(ed25519_seed, "node"))
    }

    /// The operator's recovery identity, derived from the operator key's seed.
    pub fn of_operator(operator_seed: &[u8; 32]) -> Identity {
        Identity::from_secret(x25519_secret(operator_seed, "operator recovery"))
    }

    /// An identity as age writes it (`AGE-SECRET-KEY-1…`).
    pub fn parse(text: &str) -> Result<Identity, WrapError> {
        age::x25519::Identity::from_str(text.trim())
            .map(Identity)
            .map_err(|_| WrapError::Malformed("not an age identity (AGE-SECRET-KEY-1…)".into()))
    }

    /// Its public half, to wrap to: `age1…`.
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }

    /// The secret as age writes it (`AGE-SECRET-KEY-1…`): for `age -d -i`.
    pub fn secret_text(&self) -> String {
        use age::secrecy::ExposeSecret;
        self.0.to_string().expose_secret().to_string()
    }
}

/// The recipient `text` (`age1…`), checked: what config and orders carry.
pub fn parse_recipient(text: &str) -> Result<String, WrapError> {
    age::x25519::Recipient::from_str(text.trim())
        .map(|r| r.to_string())
        .map_err(|_| WrapError::BadRecipient(text.trim().chars().take(80).collect()))
}

/// A data key with what it belongs to, as a bundle carries it.
#[derive(Debug)]
pub struct Bundle {
    /// The node whose series the key seals.
    pub node: String,
    /// That node's identity (peer id) when it wrapped the key.
    pub peer: String,
    /// When the bundle was made (Unix milliseconds).
    pub created_ms: i64,
    pub key: DataKey,
}

/// Wraps `bundle`'s key to `recipients` (`age1…`; at least one, at most
/// [`MAX_RECIPIENTS`], duplicates dropped).
pub fn wrap(bundle: &Bundle, recipients: &[String]) -> Result<Vec<u8>, WrapError> {
    let mut parsed: Vec<age::x25519::Recipient> = Vec::new();
    for r in recipients {
        let r = age::x25519::Recipient::from_str(r.trim()).map_err(|_| WrapError::BadRecipient(r.clone()))?;
        if !parsed.iter().any(|p| p.to_string() == r.to_string()) {
            parsed.push(r);
        }
    }
    if parsed.is_empty() || parsed.len() > MAX_RECIPIENTS {
        return Err(WrapError::TooManyRecipients(parsed.len()));
    }
    for field in [&bundle.node, &bundle.peer] {
        if field.is_empty() || field.contains(['\n', '\r']) {
            return Err(WrapError::Malformed("a node name or peer id with a line break, or empty".into()));
        }
    }
    let payload = format!(
        "{PAYLOAD_FIRST_LINE}\nnode: {}\npeer: {}\ncreated: {}\nid: {}\nsecret: {}\n",
        bundle.node,
        bundle.peer,
        bundle.created_ms,
        bundle.key.id(),
        hex::encode(bundle.key.secret())
    );
    let encryptor = age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| WrapError::Malformed(e.to_string()))?;
    let mut out = Vec::with_capacity(256 + 96 * parsed.len());
    let io = |e: std::io::Error| WrapError::Malformed(e.to_string());
    let mut w = encryptor.wrap_output(&mut out).map_err(io)?;
    w.write_all(payload.as_bytes()).map_err(io)?;
    w.finish().map_err(io)?;
    if out.len() > MAX_BUNDLE_LEN {
        return Err(WrapError::TooLong(out.len()));
    }
    Ok(out)
}

/// Opens a bundle with `identity`: the key, checked against the id the
/// bundle names.
pub fn unwrap(wrapped: &[u8], identity: &Identity) -> Result<Bundle, WrapError> {
    if wrapped.len() > MAX_BUNDLE_LEN {
        return Err(WrapError::TooLong(wrapped.len()));
    }
    let decryptor = age::Decryptor::new(wrapped).map_err(|e| WrapError::Malformed(e.to_string()))?;
    let mut reader = match decryptor.decrypt(std::iter::once(&identity.0 as &dyn age::Identity)) {
        Ok(r) => r,
        Err(age::DecryptError::NoMatchingKeys) => return Err(WrapError::NotForThisKey),
        Err(e) => return Err(WrapError::Malformed(e.to_string())),
    };
    let mut payload = String::new();
    reader
        .by_ref()
        .take(MAX_BUNDLE_LEN as u64)
        .read_to_string(&mut payload)
        .map_err(|e| WrapError::Malformed(e.to_string()))?;
    parse_payload(&payload)
}

fn parse_payload(payload: &str) -> Result<Bundle, WrapError> {
    let bad = |why: &str| WrapError::Malformed(why.to_string());
    let mut lines = payload.lines();
    if lines.next() != Some(PAYLOAD_FIRST_LINE) {
        return Err(bad("not a backmesh data key bundle"));
    }
    let mut field = |name: &str| {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(": "))
            .map(str::to_string)
            .ok_or_else(|| bad(&format!("no `{name}:` line where it belongs")))
    };
    let node = field("node")?;
    let peer = field("peer")?;
    let created_ms = field("created")?.parse().map_err(|_| bad("`created:` is not a time"))?;
    let id = field("id")?;
    let secret: [u8; 32] = hex::decode(field("secret")?)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("`secret:` is not 32 bytes of hex"))?;
    let key = DataKey::from_secret(secret);
    if key.id() != id {
        return Err(bad("the key is not the one its id names"));
    }
    Ok(Bundle { node, peer, created_ms, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(key: DataKey) -> Bundle {
        Bundle { node: "n1".into(), peer: "12D3KooWn1".into(), created_ms: 1_700_000_000_000, key }
    }

    #[test]
    fn a_bundle_opens_with_the_node_and_the_recovery_identity_and_nothing_else() {
        let node = Identity::of_node(&[1; 32]);
        let recovery = Identity::of_operator(&[2; 32]);
        let key = DataKey::from_secret([9; 32]);
        let wrapped = wrap(&bundle(key.clone()), &[node.recipient(), recovery.recipient()]).unwrap();
        // About 600 bytes; age adds a random "grease" stanza now and then.
        assert!(wrapped.len() < 1024, "{} bytes", wrapped.len());
        for who in [&node, &recovery] {
            let b = unwrap(&wrapped, who).unwrap();
            assert_eq!((b.node.as_str(), b.peer.as_str(), b.created_ms), ("n1", "12D3KooWn1", 1_700_000_000_000));
            assert_eq!(b.key.id(), key.id());
            let sealed = crate::seal_object(&key, crate::Kind::Member, b"", b"x");
            assert!(crate::open_object(&b.key, b"", &sealed).is_ok(), "the very key");
        }
        // The same seed's other purpose, another seed, a stranger: no.
        for other in [Identity::of_operator(&[1; 32]), Identity::of_node(&[2; 32]), Identity::of_node(&[3; 32])] {
            assert_eq!(unwrap(&wrapped, &other).unwrap_err(), WrapError::NotForThisKey);
        }
        // Derivation is stable: the same seed, the same recipient.
        assert_eq!(Identity::of_operator(&[2; 32]).recipient(), recovery.recipient());
        assert!(recovery.recipient().starts_with("age1"));
        assert_eq!(Identity::parse(&recovery.secret_text()).unwrap().recipient(), recovery.recipient());
    }

    #[test]
    fn a_changed_byte_or_bad_recipients_are_refused() {
        let node = Identity::of_node(&[1; 32]);
        let wrapped = wrap(&bundle(DataKey::from_secret([9; 32])), &[node.recipient()]).unwrap();
        // Any byte of the header or the payload: the header's MAC or the
        // payload's tag refuses it (or the header no longer parses).
        for i in (0..wrapped.len()).step_by(7) {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x04;
            assert!(unwrap(&bad, &node).is_err(), "byte {i} flipped");
        }
        assert!(matches!(wrap(&bundle(DataKey::from_secret([9; 32])), &[]), Err(WrapError::TooManyRecipients(0))));
        let many: Vec<String> = (0..17u8).map(|i| Identity::of_node(&[i; 32]).recipient()).collect();
        assert!(matches!(wrap(&bundle(DataKey::from_secret([9; 32])), &many), Err(WrapError::TooManyRecipients(17))));
        assert!(matches!(parse_recipient("age1nope"), Err(WrapError::BadRecipient(_))));
        assert_eq!(parse_recipient(&format!(" {} ", node.recipient())).unwrap(), node.recipient());
        let mut b = bundle(DataKey::from_secret([9; 32]));
        b.node = "n1\nsecret: 00".into();
        assert!(matches!(wrap(&b, &[node.recipient()]), Err(WrapError::Malformed(_))));
        assert!(matches!(unwrap(&vec![b'a'; MAX_BUNDLE_LEN + 1], &node), Err(WrapError::TooLong(_))));
    }

    #[test]
    fn a_payload_whose_key_is_not_its_id_is_refused() {
        let key = DataKey::from_secret([9; 32]);
        let good = format!(
            "{PAYLOAD_FIRST_LINE}\nnode: n1\npeer: p\ncreated: 5\nid: {}\nsecret: {}\n",
            key.id(),
            hex::encode([9u8; 32])
        );
        assert!(parse_payload(&good).is_ok());
        let swapped = good.replace(&hex::encode([9u8; 32]), &hex::encode([8u8; 32]));
        assert!(parse_payload(&swapped).is_err());
        assert!(parse_payload(&good.replace("created: 5", "created: soon")).is_err());
    }
}
