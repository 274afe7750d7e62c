//! Federation: what other meshes' dashboards say, asked every few seconds
//! (`--federate`), shown as further sites.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backmesh_api::dashboard::Overview;

/// What was last heard from each federated mesh.
pub type Federation = Arc<Mutex<HashMap<String, Result<Overview, String>>>>;

/// Asks every federated mesh for its overview every few seconds.
pub fn start_federation(federate: Vec<crate::config::Federated>, into: Federation) {
    if federate.is_empty() {
        return;
    }
    actix::spawn(async move {
        loop {
            for f in &federate {
                let f2 = f.clone();
                let got =
                    tokio::task::spawn_blocking(move || ask_remote(&f2)).await.unwrap_or_else(|e| Err(e.to_string()));
                if let Ok(mut map) = into.lock() {
                    map.insert(f.name.clone(), got);
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

fn ask_remote(f: &crate::config::Federated) -> Result<Overview, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(4)))
        .build()
        .into();
    let url = format!("{}{}/dashboard?local=true", f.url.trim_end_matches('/'), backmesh_api::PREFIX);
    let mut req = agent.get(&url);
    if let Some(t) = &f.token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    match req.call() {
        Ok(mut resp) if resp.status().is_success() => {
            resp.body_mut().read_json::<Overview>().map_err(|e| format!("unexpected answer: {e}"))
        }
        Ok(resp) => Err(format!("it refused ({})", resp.status())),
        Err(e) => Err(format!("unreachable: {e}")),
    }
}
