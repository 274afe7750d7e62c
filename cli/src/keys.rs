//! Encrypted archives on the operator's machine: the data key of another
//! node's archive, unwrapped with the operator's recovery key (derived
//! from the operator key) and wrapped to the node that is to restore it,
//! for that restore alone (docs/encryption.md).

use backmesh_api::order::Act;

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
    use backmesh_crypt::wrap::{unwrap, wrap, Bundle, Identity};
    let by = client.get::<backmesh_api::Health>("/health")?.name;
    let (n, p, a) = (node.to_string(), path.to_string(), archive.map(String::from));
    client.sign(Act::Fetch { node: n, path: p, archive: a, by })?;
    let mut url = format!("/keys?node={}&path={}", enc(node), enc(path));
    if let Some(a) = archive {
        url.push_str(&format!("&archive={}", enc(a)));
    }
    let keys: backmesh_api::ArchiveKeys = client.get(&url)?;
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
    let status: backmesh_api::Status = client.get("/status")?;
    let target = status.nodes.iter().find(|n| n.name == on).and_then(|n| n.recipient.clone()).ok_or_else(|| {
        Failure::Refused(format!("node {on} announces no key to wrap the data key to: is it up, and upgraded?"))
    })?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64);
    let given = Bundle { created_ms: now.unwrap_or(0), ..bundle };
    let wrapped = wrap(&given, &[target]).map_err(|e| Failure::Refused(e.to_string()))?;
    Ok(Some(hex::encode(wrapped)))
}
