//! The operator's credential on what makes a node act for another: an
//! HMAC-SHA256 keyed by a hash of the API token, over the name of the
//! node that is to act and the request. The node that acts recomputes it
//! with its own token: only a node whose operator holds the same token can
//! make one, the token itself never travels, and a grant for one node and
//! request is worth nothing for another.
//!
//! - [`operator_mac`]: the MAC itself (also what a job's programs carry).
//! - [`Granted`]: a request that carries a grant; [`sign`] and [`check`].

use serde::Serialize;

use crate::codec::encode;

/// The bytes of a grant on the wire.
pub type Grant = serde_bytes::ByteBuf;

/// The operator's MAC of `message`: HMAC-SHA256 keyed by a hash of the
/// API token (any length of token makes one key). What grants are made of.
pub fn operator_mac(token: &str, message: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    use sha2::Digest as _;
    let key = sha2::Sha256::digest(token.as_bytes());
    #[allow(clippy::expect_used)]
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(message);
    mac
}

/// A request that may carry the operator's grant.
pub trait Granted: Serialize + Clone {
    /// Where the grant goes, for requests that need one (`None`: this
    /// request needs no grant, a read, say).
    fn grant_mut(&mut self) -> Option<&mut Option<Grant>>;
}

/// The MAC of `request` (its grant left out) for node `on`, keyed by `token`.
fn mac<T: Granted>(request: &T, token: &str, on: &str) -> hmac::Hmac<sha2::Sha256> {
    let mut bare = request.clone();
    if let Some(g) = bare.grant_mut() {
        *g = None;
    }
    operator_mac(token, &encode(&(on, &bare)))
}

/// `request` signed for node `on` with the operator's `token` (a node
/// without a token sends it unsigned).
pub fn sign<T: Granted>(mut request: T, token: Option<&str>, on: &str) -> T {
    use hmac::Mac;
    if let Some(t) = token {
        let tag = mac(&request, t, on).finalize().into_bytes().to_vec();
        if let Some(g) = request.grant_mut() {
            *g = Some(Grant::from(tag));
        }
    }
    request
}

/// Whether node `me`, whose operator set `token`, may act on `request`. A
/// node without a token trusts every node of the mesh; one with a token
/// acts only on a grant made with the same token, for it.
pub fn check<T: Granted>(request: &T, token: Option<&str>, me: &str) -> Result<(), GrantError> {
    use hmac::Mac;
    let mut probe = request.clone();
    let Some(grant) = probe.grant_mut().map(|g| g.take()) else { return Ok(()) };
    let Some(t) = token else { return Ok(()) };
    let Some(grant) = grant else {
        return Err(GrantError::Missing { me: me.into() });
    };
    mac(request, t, me).verify_slice(&grant).map_err(|_| GrantError::Wrong { me: me.into() })
}

/// A request read off the wire (at most `max` bytes) whose grant holds for
/// node `me` under `token`; or, in words for the asking node, why it is
/// refused (it does not read; it does not carry the operator's grant, then
/// also said in this node's log, naming the asking `peer`).
pub fn granted_request<T: Granted + serde::de::DeserializeOwned>(
    body: &[u8],
    max: usize,
    token: Option<&str>,
    me: &str,
    peer: &str,
) -> Result<T, String> {
    let request: T = crate::codec::decode(body, max).map_err(|e| format!("an unreadable request: {e}"))?;
    check(&request, token, me).map_err(|e| {
        tracing::warn!("refused a request from the mesh ({peer}): {e}");
        e.to_string()
    })?;
    Ok(request)
}

/// Why a node does not act on another node's request: its operator's
/// credential is not on it. Permanent until the operators set the same
/// `--token` on both nodes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error(
        "node {me} acts for other nodes only with its operator's credential, and the asking node has no \
         API token (give every node the same --token)"
    )]
    Missing { me: String },
    #[error(
        "node {me} refused: the request does not carry its operator's credential (the asking node's \
         --token differs from {me}'s)"
    )]
    Wrong { me: String },
}

impl crate::error::Transient for GrantError {
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Never
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    enum Req {
        Act { to: String, grant: Option<Grant> },
        Read,
    }

    impl Granted for Req {
        fn grant_mut(&mut self) -> Option<&mut Option<Grant>> {
            match self {
                Req::Act { grant, .. } => Some(grant),
                Req::Read => None,
            }
        }
    }

    #[test]
    fn a_grant_acts_only_for_the_same_token_the_same_node_and_the_same_request() {
        let act = |to: &str| Req::Act { to: to.into(), grant: None };
        let signed = sign(act("/srv/app"), Some("s3cret"), "web-2");
        let back: Req = crate::codec::decode(&encode(&signed), 1024).unwrap();
        assert_eq!(check(&back, Some("s3cret"), "web-2"), Ok(()));
        assert!(check(&back, None, "web-2").is_ok(), "a node without a token trusts the mesh");
        let other_token = check(&back, Some("other"), "web-2").unwrap_err();
        assert_eq!(other_token, GrantError::Wrong { me: "web-2".into() });
        assert!(other_token.to_string().contains("--token"), "{other_token}");
        assert!(check(&back, Some("s3cret"), "web-3").is_err(), "a grant for web-2 does nothing on web-3");
        let Req::Act { grant, .. } = &signed else { unreachable!() };
        let tampered = Req::Act { to: "/etc".into(), grant: grant.clone() };
        assert!(check(&tampered, Some("s3cret"), "web-2").is_err(), "another target, the same grant: refused");
        let unsigned = sign(act("/srv/app"), None, "web-2");
        let err = check(&unsigned, Some("s3cret"), "web-2").unwrap_err();
        assert!(err.to_string().contains("no API token"), "{err}");
        assert!(check(&Req::Read, Some("s3cret"), "web-2").is_ok(), "reading needs no grant");
    }
}
