//! One S3-compatible bucket, as backmesh uses it: put, get, head, list and
//! delete whole objects under a prefix.
//!
//! Requests are signed (AWS SigV4, as presigned URLs) by `rusty-s3`, which
//! does no I/O of its own; `ureq` carries them. Every request is retried on
//! what may pass (a connection that fails, 5xx, `SlowDown`), at most
//! [`ATTEMPTS`] times with a doubling wait; what will not pass (credentials
//! refused, no such bucket) is said at once, in words an operator can act on.
//! Uploads go through a [`Throttle`] when `--offsite-rate` is set.

use crate::error::BadSetting;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusty_s3::actions::S3Action as _;
use rusty_s3::{Credentials, UrlStyle};

/// Tries of one request before it is given up.
pub const ATTEMPTS: u32 = 4;
/// How long a presigned request stays valid (it is sent at once).
pub(super) const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);
/// The largest object read back (the largest manifest or member).
pub(super) const MAX_OBJECT: u64 = 1 << 30;

/// Where offsite copies go, as the operator gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsiteTarget {
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
    /// `https://s3.REGION.amazonaws.com` unless `--offsite-endpoint` says.
    pub endpoint: Option<String>,
    pub region: String,
}

impl OffsiteTarget {
    /// Parses `s3://BUCKET[/PREFIX]`, or says what is wrong with it.
    pub fn parse(url: &str, endpoint: Option<&str>, region: Option<&str>) -> Result<Self, BadSetting> {
        Self::parse_words(url, endpoint, region).map_err(BadSetting)
    }

    fn parse_words(url: &str, endpoint: Option<&str>, region: Option<&str>) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("--offsite `{url}`: give it as s3://BUCKET or s3://BUCKET/PREFIX"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
        if !bucket_ok {
            return Err(format!(
                "--offsite `{url}`: `{bucket}` is not a bucket name (3 to 63 lower-case letters, digits, `-` or `.`)"
            ));
        }
        let prefix = prefix.trim_matches('/');
        let plain = prefix.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/'));
        if !plain || prefix.split('/').any(|p| p == "." || p == ".." || (p.is_empty() && !prefix.is_empty())) {
            return Err(format!(
                "--offsite `{url}`: the prefix may hold letters, digits, `-`, `_`, `.` and `/` between names (not `.` or `..`)"
            ));
        }
        if let Some(e) = endpoint {
            let u = url_of(e).map_err(|why| format!("--offsite-endpoint `{e}`: {why}"))?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(format!("--offsite-endpoint `{e}`: give an http:// or https:// URL"));
            }
        }
        Ok(OffsiteTarget {
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            region: region.unwrap_or("us-east-1").to_string(),
        })
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn shown(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }
}

fn url_of(text: &str) -> Result<url::Url, String> {
    url::Url::parse(text).map_err(|e| e.to_string())
}

/// The access key and secret, from the environment or a credentials file.
#[derive(Clone)]
pub struct Secret {
    pub key: String,
    pub secret: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret {{ key: {}, secret: (hidden) }}", self.key)
    }
}

impl Secret {
    /// The `[PROFILE]` (`AWS_PROFILE`, or `default`) of `file` when one is
    /// given; else `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
    /// `AWS_SESSION_TOKEN`) if set; else the profile of
    /// `AWS_SHARED_CREDENTIALS_FILE`, or of `~/.aws/credentials`.
    pub fn find(file: Option<&std::path::Path>) -> Result<Self, BadSetting> {
        Self::find_words(file).map_err(BadSetting)
    }

    fn find_words(file: Option<&std::path::Path>) -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if file.is_none() {
            if let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                return Ok(Secret { key, secret, token: var("AWS_SESSION_TOKEN") });
            }
        }
        let path = match file {
            Some(f) => f.to_path_buf(),
            None => match (var("AWS_SHARED_CREDENTIALS_FILE"), var("HOME")) {
                (Some(f), _) => f.into(),
                (None, Some(home)) => std::path::Path::new(&home).join(".aws/credentials"),
                (None, None) => {
                    return Err("no offsite credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give --offsite-credentials FILE".into())
                }
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!("no offsite credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, and {} cannot be read ({e})", path.display())
        })?;
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        Self::from_ini(&text, &profile).ok_or_else(|| {
            format!("{}: no [{profile}] section with aws_access_key_id and aws_secret_access_key", path.display())
        })
    }

    fn from_ini(text: &str, profile: &str) -> Option<Self> {
        let (mut key, mut secret, mut token, mut inside) = (None, None, None, false);
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                inside = name.trim() == profile || name.trim() == format!("profile {profile}");
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { continue };
            if !inside {
                continue;
            }
            let v = Some(v.trim().to_string());
            match k.trim() {
                "aws_access_key_id" => key = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
        Some(Secret { key: key?, secret: secret?, token })
    }
}

/// Why a bucket request failed.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("{bucket}: the storage refused these credentials ({code}); check the access key and secret")]
    Denied { bucket: String, code: String },
    #[error("{bucket}: no such bucket at {endpoint}; create it first")]
    NoBucket { bucket: String, endpoint: String },
    #[error("{bucket}: the storage refused a request signed by this node's clock ({code}); set the clock right (NTP)")]
    Clock { bucket: String, code: String },
    #[error("{bucket}: these credentials may not {op} {key} (AccessDenied); the key needs list, get, put and delete on the bucket")]
    NotAllowed { bucket: String, op: &'static str, key: String },
    #[error("{bucket}: cannot reach {endpoint} ({reason})")]
    Unreachable { bucket: String, endpoint: String, reason: String },
    #[error("{bucket}: {endpoint} answers, but not well ({reason}, {ATTEMPTS} tries at most)")]
    Unwell { bucket: String, endpoint: String, reason: String },
    #[error("{bucket}: {key} is larger than the {limit} bytes expected of it; it is not read")]
    TooLarge { bucket: String, key: String, limit: u64 },
    #[error("{bucket}: {op} {key} was answered {status} {code}")]
    Failed { bucket: String, op: &'static str, key: String, status: u16, code: String },
    #[error("{bucket}: {what}")]
    Bad { bucket: String, what: String },
}

impl BucketError {
    /// Whether the same request may pass later (the storage or the way
    /// to it is down), rather than never as it stands (credentials).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BucketError::Unreachable { .. } | BucketError::Unwell { .. } | BucketError::Failed { status: 500.., .. }
        )
    }
}

/// An object as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// Its key below the prefix.
    pub key: String,
    pub size: u64,
    /// When the storage wrote it, by the storage's clock (ms).
    pub modified_ms: i64,
}

/// Uploads no faster than a rate, on average over a second.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    /// (bytes that may go without waiting, as of when)
    state: Mutex<(f64, Instant)>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Self {
        Throttle { bytes_per_sec: bytes_per_sec.max(1), state: Mutex::new((0.0, Instant::now())) }
    }

    /// Waits until `n` more bytes may go.
    pub fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let rate = self.bytes_per_sec as f64;
            let now = Instant::now();
            let allowance = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(rate);
            let left = allowance - n as f64;
            *s = (left, now);
            if left < 0.0 {
                Duration::from_secs_f64(-left / rate)
            } else {
                Duration::ZERO
            }
        };
        std::thread::sleep(wait);
    }
}

/// A bucket and the way to it.
pub struct Bucket {
    target: OffsiteTarget,
    pub(super) bucket: rusty_s3::Bucket,
    pub(super) creds: Credentials,
    agent: ureq::Agent,
    throttle: Option<Throttle>,
    endpoint: String,
    /// How long each object written is locked for (S3 Object Lock,
    /// COMPLIANCE) when the bucket has Object Lock on: the node's grace
    /// period ([`super::locked`]).
    pub(super) grace: Option<Duration>,
    /// Whether the bucket has Object Lock on, once it said.
    pub(super) lock_on: std::sync::OnceLock<bool>,
}

/// What came back from one request.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
    date_ms: Option<i64>,
    modified_ms: Option<i64>,
    len: Option<u64>,
}

/// Time of an HTTP `Date` or `Last-Modified` header.
fn http_date_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc2822(text.trim()).ok().map(|t| t.timestamp_millis())
}

/// The `Code` of an S3 error document, if the body is one.
pub(super) fn error_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let code = text.split_once("<Code>").and_then(|(_, r)| r.split_once("</Code>")).map(|(c, _)| c.to_string());
    code.unwrap_or_default()
}

impl Bucket {
    /// The client of `target` with `secret`, uploads held to `rate` bytes a second.
    pub fn new(target: OffsiteTarget, secret: &Secret, rate: Option<u64>) -> Result<Self, BadSetting> {
        Self::new_words(target, secret, rate).map_err(BadSetting)
    }

    fn new_words(target: OffsiteTarget, secret: &Secret, rate: Option<u64>) -> Result<Self, String> {
        let (endpoint, style) = match &target.endpoint {
            Some(e) => (e.clone(), UrlStyle::Path),
            None => (format!("https://s3.{}.amazonaws.com", target.region), UrlStyle::VirtualHost),
        };
        let url = url_of(&endpoint)?;
        let bucket = rusty_s3::Bucket::new(url, style, target.bucket.clone(), target.region.clone())
            .map_err(|e| format!("{}: {e}", target.shown()))?;
        let creds = match &secret.token {
            Some(t) => Credentials::new_with_token(secret.key.clone(), secret.secret.clone(), t.clone()),
            None => Credentials::new(secret.key.clone(), secret.secret.clone()),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Ok(Bucket {
            target,
            bucket,
            creds,
            agent,
            throttle: rate.map(Throttle::new),
            endpoint,
            grace: None,
            lock_on: Default::default(),
        })
    }

    pub fn target(&self) -> &OffsiteTarget {
        &self.target
    }

    pub(super) fn full(&self, key: &str) -> String {
        format!("{}{key}", self.target.prefix)
    }

    pub(super) fn fail(&self, op: &'static str, key: &str, a: &Answer) -> BucketError {
        let bucket = self.target.shown();
        let code = error_code(&a.body);
        match (a.status, code.as_str()) {
            (_, "RequestTimeTooSkewed" | "RequestExpired") => BucketError::Clock { bucket, code },
            (_, "AccessDenied") => BucketError::NotAllowed { bucket, op, key: key.to_string() },
            (403, _) | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                BucketError::Denied { bucket, code: if code.is_empty() { "403".into() } else { code } }
            }
            (_, "NoSuchBucket") => BucketError::NoBucket { bucket, endpoint: self.endpoint.clone() },
            _ => BucketError::Failed { bucket, op, key: key.to_string(), status: a.status, code },
        }
    }

    /// Sends one request, again while it fails in a way that may pass.
    fn send(&self, method: &'static str, url: &url::Url, body: Option<&[u8]>) -> Result<Answer, BucketError> {
        self.send_tries(method, url, body, ATTEMPTS, MAX_OBJECT)
    }

    /// Sends one request at most `tries` times, reading at most `limit`
    /// bytes of its answer. A single try is a person waiting: 10 s at most.
    fn send_tries(
        &self,
        method: &'static str,
        url: &url::Url,
        body: Option<&[u8]>,
        tries: u32,
        limit: u64,
    ) -> Result<Answer, BucketError> {
        self.send_with(method, url, body, &[], tries, limit)
    }

    /// [`Bucket::send_tries`] with `headers`, which must be those the
    /// request was signed with.
    pub(super) fn send_with(
        &self,
        method: &'static str,
        url: &url::Url,
        body: Option<&[u8]>,
        headers: &[(&str, String)],
        tries: u32,
        limit: u64,
    ) -> Result<Answer, BucketError> {
        let mut last = String::new();
        let mut answered = false;
        for attempt in 0..tries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 << attempt));
            }
            let timeout = Some(if tries == 1 { Duration::from_secs(10) } else { Duration::from_secs(300) });
            let sent = match (method, body) {
                ("PUT", Some(b)) => {
                    let mut r = self.agent.put(url.as_str()).config().timeout_global(timeout).build();
                    for (name, value) in headers {
                        r = r.header(*name, value.as_str());
                    }
                    r.send(b)
                }
                ("DELETE", _) => self.agent.delete(url.as_str()).config().timeout_global(timeout).build().call(),
                ("HEAD", _) => self.agent.head(url.as_str()).config().timeout_global(timeout).build().call(),
                _ => self.agent.get(url.as_str()).config().timeout_global(timeout).build().call(),
            };
            let mut r = match sent {
                Ok(r) => r,
                Err(e) => {
                    (last, answered) = (e.to_string(), false);
                    continue;
                }
            };
            let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let (date_ms, modified_ms) = (header("date").and_then(|d| http_date_ms(&d)), header("last-modified"));
            let len = header("content-length").and_then(|l| l.parse().ok());
            let status = r.status().as_u16();
            let mut out = Vec::new();
            if method != "HEAD" {
                if status == 200 && len.is_some_and(|l: u64| l > limit) {
                    let key = url.path().to_string();
                    return Err(BucketError::TooLarge { bucket: self.target.shown(), key, limit });
                }
                // An error document is read whole, whatever the object's
                // limit (a missing small member answers more than its size).
                let limit = if status == 200 { limit } else { limit.max(64 << 10) };
                // One byte past the limit tells a too large answer from one that fits.
                let read = r.body_mut().with_config().limit(limit.saturating_add(1)).reader().read_to_end(&mut out);
                if let Err(e) = read {
                    (last, answered) = (format!("the answer for {} broke off ({status}): {e}", url.path()), true);
                    continue;
                }
                if out.len() as u64 > limit {
                    let key = url.path().to_string();
                    return Err(BucketError::TooLarge { bucket: self.target.shown(), key, limit });
                }
            }
            let a = Answer { status, body: out, date_ms, modified_ms: modified_ms.and_then(|m| http_date_ms(&m)), len };
            // 501 Not Implemented will not pass: the caller hears it.
            if (status >= 500 && status != 501) || status == 429 {
                (last, answered) = (format!("answered {status} {}", error_code(&a.body)), true);
                continue;
            }
            return Ok(a);
        }
        let (bucket, endpoint) = (self.target.shown(), self.endpoint.clone());
        Err(if answered {
            BucketError::Unwell { bucket, endpoint, reason: last }
        } else {
            BucketError::Unreachable { bucket, endpoint, reason: last }
        })
    }

    /// Writes object `key` (below the prefix), whole.
    pub fn put(&self, key: &str, data: &[u8]) -> Result<(), BucketError> {
        if let Some(t) = &self.throttle {
            t.take(data.len() as u64);
        }
        let full = self.full(key);
        let mut action = rusty_s3::actions::PutObject::new(&self.bucket, Some(&self.creds), &full);
        let headers = self.lock_headers(key, data)?;
        for (name, value) in &headers {
            action.headers_mut().insert(*name, value.clone());
        }
        let url = action.sign(SIGNED_FOR);
        let a = self.send_with("PUT", &url, Some(data), &headers, ATTEMPTS, MAX_OBJECT)?;
        if (200..300).contains(&a.status) {
            Ok(())
        } else {
            Err(self.fail("PUT", key, &a))
        }
    }

    /// Object `key`'s bytes, or `None` if there is none.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BucketError> {
        self.get_limited(key, MAX_OBJECT)
    }

    /// [`Bucket::get`] of an object that should be at most `limit` bytes:
    /// a larger one is an error, and is not read.
    pub fn get_limited(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, BucketError> {
        let full = self.full(key);
        let url = rusty_s3::actions::GetObject::new(&self.bucket, Some(&self.creds), &full).sign(SIGNED_FOR);
        // A manifest's word on a size is capped too (an unsealed one is read by `verify`).
        let a = self.send_tries("GET", &url, None, ATTEMPTS, limit.min(MAX_OBJECT))?;
        match a.status {
            200 => Ok(Some(a.body)),
            404 if error_code(&a.body) != "NoSuchBucket" => Ok(None),
            _ => Err(self.fail("GET", key, &a)),
        }
    }

    /// Object `key`'s size and time, or `None` if there is none.
    pub fn head(&self, key: &str) -> Result<Option<Object>, BucketError> {
        let full = self.full(key);
        let url = rusty_s3::actions::HeadObject::new(&self.bucket, Some(&self.creds), &full).sign(SIGNED_FOR);
        let a = self.send("HEAD", &url, None)?;
        match a.status {
            200 => Ok(Some(Object {
                key: key.to_string(),
                size: a.len.unwrap_or(0),
                modified_ms: a.modified_ms.unwrap_or(0),
            })),
            // A HEAD has no body to tell a missing object from a missing
            // bucket: the bucket is asked when it matters (`check`).
            404 => Ok(None),
            _ => Err(self.fail("HEAD", key, &a)),
        }
    }

    /// Deletes object `key`; one that is not there is no error.
    pub fn delete(&self, key: &str) -> Result<(), BucketError> {
        let full = self.full(key);
        let url = rusty_s3::actions::DeleteObject::new(&self.bucket, Some(&self.creds), &full).sign(SIGNED_FOR);
        let a = self.send("DELETE", &url, None)?;
        match a.status {
            200..=299 | 404 => Ok(()),
            _ => Err(self.fail("DELETE", key, &a)),
        }
    }

    /// Every object whose key (below the prefix) starts with `under`, and
    /// the storage's clock when the listing ended (ms).
    pub fn list(&self, under: &str) -> Result<(Vec<Object>, i64), BucketError> {
        self.list_tries(under, ATTEMPTS)
    }

    /// [`Bucket::list`] with each request tried at most `tries` times (a
    /// person waiting on the answer: once).
    pub fn list_tries(&self, under: &str, tries: u32) -> Result<(Vec<Object>, i64), BucketError> {
        self.list_with(under, tries, &mut || Ok(()))
    }

    /// [`Bucket::list_tries`], calling `each_page` after every page (a lock
    /// holder rewrites its lock there: a long listing must not let it go
    /// stale). The time returned is the storage's clock; when the storage
    /// gives none, 0 (1970), so that nothing looks old enough to delete.
    pub fn list_with(
        &self,
        under: &str,
        tries: u32,
        each_page: &mut dyn FnMut() -> Result<(), BucketError>,
    ) -> Result<(Vec<Object>, i64), BucketError> {
        let full = self.full(under);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut now_ms = 0;
        // Bounded: a listing of more than a billion keys is not ours.
        for _ in 0..1_000_000 {
            let mut action = rusty_s3::actions::ListObjectsV2::new(&self.bucket, Some(&self.creds));
            action.with_prefix(full.as_str());
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGNED_FOR);
            let a = self.send_tries("GET", &url, None, tries.max(1), MAX_OBJECT)?;
            if a.status != 200 {
                return Err(self.fail("LIST", under, &a));
            }
            // The storage's clock, which stamped every object.
            now_ms = a.date_ms.unwrap_or(now_ms);
            let page: ListPage = quick_xml::de::from_reader(a.body.as_slice()).map_err(|e| BucketError::Bad {
                bucket: self.target.shown(),
                what: format!("a listing of {under} does not parse: {e}"),
            })?;
            for c in page.contents {
                // Keys come URL-encoded (`encoding-type=url`).
                let key = percent_decode(&c.key);
                let Some(rel) = key.strip_prefix(self.target.prefix.as_str()) else { continue };
                // A time that does not read is taken as new: nothing is
                // deleted, nor any lock taken over, on its account.
                let modified_ms = chrono::DateTime::parse_from_rfc3339(&c.last_modified)
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(a.date_ms.unwrap_or(i64::MAX / 2));
                out.push(Object { key: rel.to_string(), size: c.size, modified_ms });
            }
            each_page()?;
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok((out, now_ms)),
            }
        }
        Err(BucketError::Bad { bucket: self.target.shown(), what: format!("the listing of {under} does not end") })
    }

    /// Makes the bucket (an operator's step, or a test's); one that is
    /// there already and ours is no error.
    pub fn create(&self) -> Result<(), BucketError> {
        let url = rusty_s3::actions::CreateBucket::new(&self.bucket, &self.creds).sign(SIGNED_FOR);
        let a = self.send("PUT", &url, Some(b""))?;
        match (a.status, error_code(&a.body).as_str()) {
            (200..=299, _) | (_, "BucketAlreadyOwnedByYou") => Ok(()),
            _ => Err(self.fail("CREATE", "", &a)),
        }
    }

    /// Checks that the bucket is there and these credentials may use it.
    pub fn check(&self) -> Result<(), BucketError> {
        self.list("locks/").map(|_| ())
    }
}

/// One page of a `ListObjectsV2` answer: only what backmesh reads, so a
/// server that leaves out the rest (`ETag`, `Owner`…) is understood.
#[derive(serde::Deserialize)]
struct ListPage {
    #[serde(rename = "Contents", default)]
    contents: Vec<ListedObject>,
    #[serde(rename = "NextContinuationToken", default)]
    next_continuation_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct ListedObject {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "LastModified", default)]
    last_modified: String,
    #[serde(rename = "Size", default)]
    size: u64,
}

/// A listed key decoded (`encoding-type=url`): `%XX` sequences, and `+`
/// for a space. Backmesh's own keys hold neither `+` nor a space (the
/// prefix may not: [`OffsiteTarget::parse`]).
pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl crate::error::Transient for BucketError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            BucketError::Unreachable { .. } | BucketError::Unwell { .. } | BucketError::Clock { .. } => {
                crate::error::Retry::Later
            }
            BucketError::Failed { status, .. } if *status >= 500 || *status == 429 => crate::error::Retry::Later,
            _ => crate::error::Retry::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_what_is_wrong() {
        let t = OffsiteTarget::parse("s3://backups/mesh/a/", Some("http://127.0.0.1:9000/"), None).unwrap();
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("backups", "mesh/a/"));
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(OffsiteTarget::parse("s3://backups", None, Some("eu-west-3")).unwrap().prefix, "");
        for bad in ["backups", "s3://", "s3://B", "s3://abc/../b", "http://x/y", "s3://abc/my backups", "s3://abc/a//b"]
        {
            assert!(OffsiteTarget::parse(bad, None, None).is_err(), "{bad}");
        }
        assert!(OffsiteTarget::parse("s3://backups", Some("ftp://x"), None).is_err());
    }

    #[test]
    fn credentials_come_from_a_profile() {
        let ini = "[default]\naws_access_key_id = AK\naws_secret_access_key = S\n[other]\naws_access_key_id=B\naws_secret_access_key=T\naws_session_token=X\n";
        let d = Secret::from_ini(ini, "default").unwrap();
        assert_eq!((d.key.as_str(), d.secret.as_str(), d.token.as_deref()), ("AK", "S", None));
        let o = Secret::from_ini(ini, "other").unwrap();
        assert_eq!((o.key.as_str(), o.token.as_deref()), ("B", Some("X")));
        assert!(Secret::from_ini(ini, "none").is_none());
        assert_eq!(format!("{d:?}"), "Secret { key: AK, secret: (hidden) }");
    }

    #[test]
    fn listed_keys_are_decoded() {
        assert_eq!(percent_decode("a%2Fb%20c%"), "a/b c%");
        assert_eq!(percent_decode("members/ab"), "members/ab");
        assert_eq!(percent_decode("my+key%2"), "my key%2");
        // Not ASCII after `%`: kept as it is, no panic.
        assert_eq!(percent_decode("locks/%aé"), "locks/%aé");
    }

    #[test]
    fn the_throttle_holds_the_rate() {
        let t = Throttle::new(10_000_000);
        let start = Instant::now();
        for _ in 0..4 {
            t.take(500_000);
        }
        // 2 MB at 10 MB/s, from no allowance: 0.2 s at least (a floor, not a speed).
        assert!(start.elapsed() >= Duration::from_millis(190), "{:?}", start.elapsed());
    }
}
