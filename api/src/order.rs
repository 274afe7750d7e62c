//! Operator orders: what an operator's key signs to make a node act on
//! another node's jobs or archives (docs/security.md).
//!
//! An operator key is an Ed25519 key pair made on the operator's machine
//! (`backmesh operator init`), never on a node; each node is told the
//! public halves it trusts (`operator-key` in node.toml). The CLI signs
//! one [`Order`] per command: the act, the node that is to carry it out,
//! the time and a random nonce. The node that carries it out checks the
//! signature, the act against the request it serves, the time (at most
//! [`ORDER_MAX_AGE_MS`] either way) and that the nonce is new. A node's
//! own API token, without an order, acts on that node alone.
//!
//! On the wire an order is one string, [`SignedOrder`]: `v1.` then the
//! hex of the order's JSON, `.`, the hex of the signature over exactly
//! those bytes (so nothing has to be encoded twice the same way). It
//! travels in the `X-Backmesh-Order` header and, unchanged, in the mesh
//! request to the node that acts.

use serde::{Deserialize, Serialize};

use crate::archives::{Restore, Verify};
use crate::jobs::{JobKey, Register};

/// The HTTP header that carries a [`SignedOrder`].
pub const ORDER_HEADER: &str = "X-Backmesh-Order";

/// How far an order's time may be from the acting node's clock, either way.
pub const ORDER_MAX_AGE_MS: i64 = 5 * 60 * 1000;

/// The longest signed order a node reads (a registration with long hooks).
pub const MAX_ORDER_LEN: usize = 32 * 1024;

/// What a public operator key looks like: `bmop-` then 64 hex digits.
pub const PUBLIC_PREFIX: &str = "bmop-";

/// What the operator orders, exactly as the request that carries it says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "act", rename_all = "snake_case")]
pub enum Act {
    /// Register (or change) a job of `node`.
    Register(Register),
    /// Stop backing up a job of `node`.
    Unregister(JobKey),
    Pause {
        node: String,
    },
    Resume {
        node: String,
    },
    /// Back up a job of `node` now.
    Run(JobKey),
    /// Restore an archive on `on` (always given: the CLI fills it in).
    Restore(Restore),
    /// Download an archive through node `by` (the node the CLI talks to).
    Fetch {
        node: String,
        path: String,
        archive: Option<String>,
        by: String,
    },
    /// Re-hash kept copies, on every node that keeps them.
    Verify(Verify),
    /// Refuse the identity `peer` (node `node`'s key) mesh-wide, for good:
    /// a trust change, spread from node to node and kept (no age, no
    /// nonce: carried out again, it changes nothing).
    Revoke {
        node: String,
        peer: String,
    },
    /// Retire node `node` (identity `peer`): revoked, and its series
    /// collected by their holders once the grace period has passed.
    Retire {
        node: String,
        peer: String,
    },
    /// Bind node name `node` to identity `peer` (a rebuilt server's new
    /// key) in place of `former` (its old one, revoked): archives `former`
    /// sealed before this order stay that node's; a trust change like
    /// `Revoke`, and of two rebinds of one name the later signed wins.
    Rebind {
        node: String,
        peer: String,
        former: String,
    },
    /// Trust operator key `operator` (`bmop-…`) too, on every node: a
    /// trust change like `Revoke`; of two changes of one key, the later
    /// signed wins.
    Trust {
        operator: String,
    },
    /// Trust operator key `operator` no longer, on every node.
    Distrust {
        operator: String,
    },
    /// Wrap every node's data key to age recipient `recipient` (`age1…`)
    /// too, from now on: an operator recovery key, with which a restore
    /// works after the node is gone. A trust change like `Trust`.
    AddRecipient {
        recipient: String,
    },
    /// Wrap data keys to `recipient` no longer (bundles made already keep
    /// it: rotate the data keys if it was stolen).
    RemoveRecipient {
        recipient: String,
    },
}

impl Act {
    /// The node that must carry this act out; `None`: any node asked
    /// (a verify runs on every holder).
    pub fn actor(&self) -> Option<&str> {
        match self {
            Act::Register(r) => Some(&r.node),
            Act::Unregister(k) | Act::Run(k) => Some(&k.node),
            Act::Pause { node } | Act::Resume { node } => Some(node),
            Act::Restore(r) => Some(r.on.as_deref().unwrap_or(&r.node)),
            Act::Fetch { by, .. } => Some(by),
            Act::Verify(_)
            | Act::Revoke { .. }
            | Act::Retire { .. }
            | Act::Rebind { .. }
            | Act::Trust { .. }
            | Act::Distrust { .. }
            | Act::AddRecipient { .. }
            | Act::RemoveRecipient { .. } => None,
        }
    }

    /// The act's name for people: `register`, `run`, ….
    pub fn name(&self) -> &'static str {
        match self {
            Act::Register(_) => "register",
            Act::Unregister(_) => "unregister",
            Act::Pause { .. } => "pause",
            Act::Resume { .. } => "resume",
            Act::Run(_) => "run",
            Act::Restore(_) => "restore",
            Act::Fetch { .. } => "fetch",
            Act::Verify(_) => "verify",
            Act::Revoke { .. } => "revoke",
            Act::Retire { .. } => "retire",
            Act::Rebind { .. } => "rebind",
            Act::Trust { .. } => "trust",
            Act::Distrust { .. } => "distrust",
            Act::AddRecipient { .. } => "add recovery recipient",
            Act::RemoveRecipient { .. } => "remove recovery recipient",
        }
    }
}

/// One signed command of an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The signing key's public half (`bmop-…`).
    pub operator: String,
    /// When it was signed (Unix milliseconds, the operator's clock).
    pub at_ms: i64,
    /// 16 random bytes in hex: an order is carried out once.
    pub nonce: String,
    pub act: Act,
}

/// Why an order is not carried out. Permanent: sign a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderError {
    /// Not `v1.HEX.HEX`, or its JSON does not read.
    Unreadable(String),
    /// The key is not one this node trusts.
    Untrusted { operator: String },
    /// The signature does not hold for these bytes and that key.
    BadSignature,
    /// Signed too long ago, or too far ahead (the operator's clock or this node's is off).
    Stale { age_s: i64 },
    /// This nonce was seen already: a replay.
    Replayed,
    /// The order is for another act than the request carries.
    OtherAct { ordered: String, asked: String },
    /// The order is for another node to carry out.
    OtherNode { ordered: String, me: String },
    /// This node trusts no operator key at all.
    NoOperator { me: String },
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::Unreadable(why) => write!(f, "the operator's order does not read: {why}"),
            OrderError::Untrusted { operator } => {
                write!(f, "the order is signed by {operator}, an operator key this node does not trust")
            }
            OrderError::BadSignature => write!(f, "the order's signature does not hold: it was altered or forged"),
            OrderError::Stale { age_s } => write!(
                f,
                "the order was signed {}s {} (at most {}s either way; check the clocks)",
                age_s.abs(),
                if *age_s >= 0 { "ago" } else { "ahead of this node's clock" },
                ORDER_MAX_AGE_MS / 1000
            ),
            OrderError::Replayed => write!(f, "this order was carried out already (an order is good once)"),
            OrderError::OtherAct { ordered, asked } => {
                write!(f, "the order is for another command ({ordered}) than the one asked ({asked})")
            }
            OrderError::OtherNode { ordered, me } => {
                write!(f, "the order is for node {ordered} to carry out, not {me}")
            }
            OrderError::NoOperator { me } => write!(
                f,
                "node {me} trusts no operator key, so it takes no order from another node: add the operator's \
                 public key to its config (operator-key in node.toml, or --operator-key)"
            ),
        }
    }
}

impl std::error::Error for OrderError {}

/// An order with its signature, as it travels: `v1.HEX(json).HEX(sig)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SignedOrder(pub String);

impl SignedOrder {
    /// The order's JSON bytes and signature, or why they do not read.
    fn parts(&self) -> Result<(Vec<u8>, [u8; 64]), OrderError> {
        let bad = |why: &str| OrderError::Unreadable(why.to_string());
        if self.0.len() > MAX_ORDER_LEN {
            return Err(bad("longer than any order"));
        }
        let mut it = self.0.split('.');
        let (Some("v1"), Some(body), Some(sig), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(bad("not `v1.ORDER.SIGNATURE`"));
        };
        let body = hex::decode(body).map_err(|_| bad("the order is not hex"))?;
        let sig: [u8; 64] = hex::decode(sig)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("the signature is not 64 bytes of hex"))?;
        Ok((body, sig))
    }

    /// The order, if its signature holds for the key it names (whether
    /// that key is trusted is the caller's question).
    pub fn open(&self) -> Result<Order, OrderError> {
        let (body, sig) = self.parts()?;
        let order: Order = serde_json::from_slice(&body).map_err(|e| OrderError::Unreadable(e.to_string()))?;
        let key = public_key(&order.operator).map_err(OrderError::Unreadable)?;
        key.verify_strict(&body, &ed25519_dalek::Signature::from_bytes(&sig)).map_err(|_| OrderError::BadSignature)?;
        Ok(order)
    }
}

/// The public key named by `bmop-HEX`.
pub fn public_key(s: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    let hex_part = s
        .trim()
        .strip_prefix(PUBLIC_PREFIX)
        .ok_or_else(|| format!("`{s}` is not an operator public key (bmop-… from `backmesh operator init`)"))?;
    let bytes: [u8; 32] = hex::decode(hex_part)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("`{s}` is not an operator public key: not 32 bytes of hex after bmop-"))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| format!("`{s}` is not a valid Ed25519 public key"))
}

/// The name of a public key: `bmop-` and its hex.
pub fn public_name(key: &ed25519_dalek::VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", hex::encode(key.as_bytes()))
}

/// An operator's secret key, as read from its file.
pub struct OperatorKey {
    key: ed25519_dalek::SigningKey,
}

/// Shows the public half only: a secret never lands in a log or a panic.
impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OperatorKey({})", self.public())
    }
}

/// The first line of an operator key file.
const KEY_FILE_HEADER: &str = "backmesh operator secret key v1";

impl OperatorKey {
    /// A new key from the system's random source.
    pub fn generate() -> Result<OperatorKey, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness from the system: {e}"))?;
        Ok(OperatorKey { key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    /// The key of this 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> OperatorKey {
        OperatorKey { key: ed25519_dalek::SigningKey::from_bytes(&seed) }
    }

    /// Its 32-byte secret seed (to seal it under a passphrase).
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key written in a key file's text.
    pub fn from_file_text(text: &str) -> Result<OperatorKey, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(format!("not a backmesh operator key file (its first line must be `{KEY_FILE_HEADER}`)"));
        }
        let secret = lines.find_map(|l| l.strip_prefix("secret:")).ok_or("the key file has no `secret:` line")?.trim();
        let seed: [u8; 32] = hex::decode(secret)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the key file's secret is not 32 bytes of hex")?;
        Ok(OperatorKey { key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    /// The text of its key file (secret: write it 0600).
    pub fn file_text(&self) -> String {
        format!(
            "{KEY_FILE_HEADER}\n# Keep this file on the operator's machine only, never on a node.\n\
             # Give nodes the public half: operator-key = \"{}\"\npublic: {}\nsecret: {}\n",
            self.public(),
            self.public(),
            hex::encode(self.key.to_bytes())
        )
    }

    /// Its public half, as nodes are told it: `bmop-…`.
    pub fn public(&self) -> String {
        public_name(&self.key.verifying_key())
    }

    /// `act`, signed now.
    pub fn sign(&self, act: Act, at_ms: i64) -> Result<SignedOrder, String> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness from the system: {e}"))?;
        self.sign_order(&Order { operator: self.public(), at_ms, nonce: hex::encode(nonce), act })
    }

    /// `order`, signed as it is (its `operator` should be this key's).
    pub fn sign_order(&self, order: &Order) -> Result<SignedOrder, String> {
        use ed25519_dalek::Signer;
        let body = serde_json::to_vec(order).map_err(|e| e.to_string())?;
        let sig = self.key.sign(&body);
        Ok(SignedOrder(format!("v1.{}.{}", hex::encode(&body), hex::encode(sig.to_bytes()))))
    }
}

/// Whether `order` (opened) is for `act`, carried out by `me`, now.
/// The trust of its key and the nonce are the acting node's to check.
pub fn fits(order: &Order, act: &Act, me: &str, now_ms: i64) -> Result<(), OrderError> {
    if order.act != *act {
        return Err(OrderError::OtherAct { ordered: describe(&order.act), asked: describe(act) });
    }
    if let Some(actor) = order.act.actor() {
        if actor != me {
            return Err(OrderError::OtherNode { ordered: actor.to_string(), me: me.to_string() });
        }
    }
    let age = now_ms - order.at_ms;
    if age.abs() > ORDER_MAX_AGE_MS {
        return Err(OrderError::Stale { age_s: age / 1000 });
    }
    Ok(())
}

/// An act in a few words: `run /srv/app on n1`.
fn describe(act: &Act) -> String {
    match act {
        Act::Register(r) => format!("register {} on {}", r.path, r.node),
        Act::Unregister(k) | Act::Run(k) => format!("{} {} on {}", act.name(), k.path, k.node),
        Act::Pause { node } | Act::Resume { node } => format!("{} {node}", act.name()),
        Act::Restore(r) => format!("restore {} of {} on {}", r.path, r.node, r.on.as_deref().unwrap_or(&r.node)),
        Act::Fetch { node, path, by, .. } => format!("fetch {path} of {node} through {by}"),
        Act::Verify(v) => format!("verify {} {}", v.node.as_deref().unwrap_or("*"), v.path.as_deref().unwrap_or("*")),
        Act::Revoke { node, peer } | Act::Retire { node, peer } => format!("{} {node} ({peer})", act.name()),
        Act::Rebind { node, peer, former } => format!("rebind {node} to {peer} (was {former})"),
        Act::Trust { operator } | Act::Distrust { operator } => format!("{} {operator}", act.name()),
        Act::AddRecipient { recipient } | Act::RemoveRecipient { recipient } => {
            format!("{} {recipient}", act.name())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(node: &str, path: &str) -> Act {
        Act::Run(JobKey { node: node.into(), path: path.into() })
    }

    #[test]
    fn an_order_opens_only_as_signed_and_fits_only_its_act_node_and_time() {
        let key = OperatorKey::generate().unwrap();
        let back = OperatorKey::from_file_text(&key.file_text()).unwrap();
        assert_eq!(back.public(), key.public());
        assert!(public_key(&key.public()).is_ok());
        let signed = key.sign(run("n1", "/srv/app"), 1_000_000).unwrap();
        let order = signed.open().unwrap();
        assert_eq!(order.operator, key.public());
        assert_eq!(fits(&order, &run("n1", "/srv/app"), "n1", 1_000_000 + 60_000), Ok(()));
        assert!(matches!(fits(&order, &run("n1", "/etc"), "n1", 1_000_000), Err(OrderError::OtherAct { .. })));
        assert!(matches!(fits(&order, &run("n1", "/srv/app"), "n2", 1_000_000), Err(OrderError::OtherNode { .. })));
        let late = fits(&order, &run("n1", "/srv/app"), "n1", 1_000_000 + ORDER_MAX_AGE_MS + 1).unwrap_err();
        assert!(late.to_string().contains("ago"), "{late}");
        // One changed byte of the order, or of the signature: refused.
        let (body, sig) = signed.parts().unwrap();
        let mut forged = body.clone();
        let at = forged.windows(4).position(|w| w == b"/srv").unwrap();
        forged[at + 1] = b'e';
        let forged = SignedOrder(format!("v1.{}.{}", hex::encode(&forged), hex::encode(sig)));
        assert_eq!(forged.open(), Err(OrderError::BadSignature));
        // Another key's signature over the same bytes, naming the first key: refused.
        let other = OperatorKey::generate().unwrap();
        let resigned = other.sign(run("n1", "/srv/app"), 1_000_000).unwrap();
        let (_, other_sig) = resigned.parts().unwrap();
        let swapped = SignedOrder(format!("v1.{}.{}", hex::encode(&body), hex::encode(other_sig)));
        assert_eq!(swapped.open(), Err(OrderError::BadSignature));
        assert!(matches!(SignedOrder("v2.00.00".into()).open(), Err(OrderError::Unreadable(_))));
        assert!(public_key("bmop-00").is_err() && public_key("ssh-ed25519 AAAA").is_err());
        assert!(OperatorKey::from_file_text("secret: 00").is_err());
    }

    #[test]
    fn every_order_has_a_fresh_nonce() {
        let key = OperatorKey::generate().unwrap();
        let a = key.sign(run("n1", "/a"), 1).unwrap().open().unwrap();
        let b = key.sign(run("n1", "/a"), 1).unwrap().open().unwrap();
        assert_ne!(a.nonce, b.nonce);
    }
}
