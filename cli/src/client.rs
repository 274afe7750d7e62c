//! The HTTP client of one node: requests with the token, answers read as
//! the API's types, failures sorted by exit code.

use std::time::Duration;

use backmesh_api::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::args::Cli;

/// Why a call failed, and so which exit code.
pub(crate) enum Failure {
    /// Exit 3.
    Unreachable(String),
    /// Exit 1.
    Refused(String),
    /// Exit 1, the message already printed (a failed run).
    Failed,
}

pub(crate) struct Client {
    pub(crate) agent: ureq::Agent,
    pub(crate) base: String,
    pub(crate) token: Option<String>,
    pub(crate) tls: ureq::tls::TlsConfig,
    /// The operator key file commands are signed with, if there is one.
    pub(crate) operator_key: Option<std::path::PathBuf>,
    /// The order the next requests carry (`X-Backmesh-Order`): set by [`Client::sign`].
    order: std::cell::RefCell<Option<String>>,
    /// The operator key, once read (a passphrase is asked once a command).
    key: std::cell::OnceCell<backmesh_api::order::OperatorKey>,
}

impl Client {
    pub(crate) fn new(cli: &Cli) -> Result<Self, Failure> {
        let mut config =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(30)));
        let mut tls = ureq::tls::TlsConfig::default();
        if let Some(ca) = &cli.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| Failure::Refused(format!("cannot read the CA file {}: {e}", ca.display())))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(Failure::Refused(format!("the CA file {} holds no certificate", ca.display())));
            }
            tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&certs)).build();
            config = config.tls_config(tls.clone());
        }
        let base = cli.node.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Refused(format!("--node must be an http:// or https:// URL, not `{}`", cli.node)));
        }
        let token = match &cli.token_file {
            None => cli.token.clone(),
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| Failure::Refused(format!("cannot read the token file {}: {e}", f.display())))?;
                let t = text.lines().next().unwrap_or("").trim().to_string();
                if t.is_empty() {
                    return Err(Failure::Refused(format!("the token file {} holds no token", f.display())));
                }
                Some(t)
            }
        };
        Ok(Client {
            agent: config.build().into(),
            base,
            token,
            tls,
            operator_key: crate::operator::key_file(cli.operator_key.as_deref()),
            order: Default::default(),
            key: Default::default(),
        })
    }

    /// Signs `act` with the operator key, if this client has one, for the
    /// requests that follow to carry. Without a key nothing is signed: the
    /// node answers what its own token may do, and says so when it is not
    /// enough.
    pub(crate) fn sign(&self, act: backmesh_api::order::Act) -> Result<(), Failure> {
        if let Some(key) = self.operator()? {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            *self.order.borrow_mut() = Some(key.sign(act, now).map_err(Failure::Refused)?.0);
        }
        Ok(())
    }

    /// The operator key, read from its file once (`None`: no key file).
    pub(crate) fn operator(&self) -> Result<Option<&backmesh_api::order::OperatorKey>, Failure> {
        let Some(file) = &self.operator_key else { return Ok(None) };
        if let Some(k) = self.key.get() {
            return Ok(Some(k));
        }
        let key = crate::operator::load(file).map_err(Failure::Refused)?;
        Ok(Some(self.key.get_or_init(|| key)))
    }

    /// [`Client::sign`] for a command only an operator gives (`what`):
    /// without an operator key it is refused here, saying how to get one.
    pub(crate) fn sign_required(&self, act: backmesh_api::order::Act, what: &str) -> Result<(), Failure> {
        if self.operator_key.is_none() {
            return Err(Failure::Refused(format!(
                "{what} is the operator's: give --operator-key FILE (`backmesh operator init` makes one)"
            )));
        }
        self.sign(act)
    }

    /// The order the next request carries, if any.
    pub(crate) fn order(&self) -> Option<String> {
        self.order.borrow().clone()
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.call("GET", path, None)
    }

    pub(crate) fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Failure> {
        self.call("POST", path, Some(serde_json::to_value(body).unwrap_or(serde_json::Value::Null)))
    }

    pub(crate) fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, Failure> {
        let text = self.call_text(method, path, body)?;
        self.parse(&text)
    }

    /// A 2xx answer read as a `T`.
    pub(crate) fn parse<T: DeserializeOwned>(&self, text: &str) -> Result<T, Failure> {
        serde_json::from_str(text).map_err(|e| {
            Failure::Refused(format!("the node at {} sent an answer this client does not understand: {e}", self.base))
        })
    }

    /// The body of a 2xx answer, as the node sent it.
    pub(crate) fn get_text(&self, path: &str) -> Result<String, Failure> {
        self.call_text("GET", path, None)
    }

    pub(crate) fn call_text(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, Failure> {
        let url = format!("{}{}{path}", self.base, backmesh_api::PREFIX);
        let mut headers = Vec::new();
        if let Some(t) = &self.token {
            headers.push(("Authorization", format!("Bearer {t}")));
        }
        if let Some(o) = self.order() {
            headers.push((backmesh_api::order::ORDER_HEADER, o));
        }
        let sent = match (method, body) {
            ("POST", body) => {
                let mut req = self.agent.post(&url);
                for (k, v) in &headers {
                    req = req.header(*k, v);
                }
                req.send_json(body.unwrap_or(serde_json::Value::Null))
            }
            ("DELETE", _) => {
                // JSON like every change: the node refuses other content types.
                let mut req = self.agent.delete(&url).header("Content-Type", "application/json");
                for (k, v) in &headers {
                    req = req.header(*k, v);
                }
                req.call()
            }
            _ => {
                let mut req = self.agent.get(&url);
                for (k, v) in &headers {
                    req = req.header(*k, v);
                }
                req.call()
            }
        };
        let mut resp = sent.map_err(|e| {
            let hint = if e.to_string().contains("certificate") {
                " (to trust the node's certificate authority, pass --ca FILE or set BACKMESH_CA)"
            } else {
                ""
            };
            Failure::Unreachable(format!("cannot reach the node at {}: {e}{hint}", self.base))
        })?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().map_err(|e| Failure::Unreachable(format!("{}: {e}", self.base)))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let msg = serde_json::from_str::<ErrorBody>(&body).map(|b| b.error).unwrap_or(body);
        Err(Failure::Refused(format!("the node refused ({status}): {msg}")))
    }
}

impl Client {
    /// A GET whose body is read as it comes (a download: no overall time
    /// limit), accepting `accept`; a refusal is read as the API's error.
    pub(crate) fn stream(&self, path: &str, accept: &str) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let url = format!("{}{}{path}", self.base, backmesh_api::PREFIX);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .tls_config(self.tls.clone())
            .build()
            .into();
        let mut req = agent.get(&url).header("Accept", accept);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(o) = self.order() {
            req = req.header(backmesh_api::order::ORDER_HEADER, o);
        }
        let mut resp =
            req.call().map_err(|e| Failure::Unreachable(format!("cannot reach the node at {}: {e}", self.base)))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            let msg = serde_json::from_str::<ErrorBody>(&body).map(|b| b.error).unwrap_or(body);
            return Err(Failure::Refused(format!("the node refused ({status}): {msg}")));
        }
        Ok(resp)
    }

    /// Signs the operator's order to read (node, path[, archive]) through
    /// the node asked, when there is an operator key (another node's
    /// series needs one; the node's own token reads its own).
    pub(crate) fn sign_read(&self, node: &str, path: &str, archive: Option<&str>) -> Result<(), Failure> {
        if self.operator_key.is_none() {
            return Ok(());
        }
        // The order names the node that reads the archive: the one asked.
        let by = self.get::<backmesh_api::Health>("/health")?.name;
        let (node, path, archive) = (node.to_string(), path.to_string(), archive.map(String::from));
        self.sign(backmesh_api::order::Act::Fetch { node, path, archive, by })
    }
}

/// Percent-encodes a query value.
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
