//! S3 Object Lock: what the bucket keeps when the S3 keys are stolen.
//!
//! A bucket made with Object Lock on is versioned, and keeps a locked
//! version of an object until its retain-until date, whoever asks to
//! delete it. When the node finds Object Lock on in its bucket
//! ([`Bucket::object_lock`]) and has a grace period, every member and
//! manifest it writes carries COMPLIANCE retention for one and a half
//! grace periods ([`lock_period`], [`Bucket::lock_headers`]); a member an
//! archive reuses has its retention extended as that archive goes up when
//! less than a grace period is left ([`Bucket::retain`]), so nothing an
//! archive younger than the grace period needs can be deleted before the
//! grace period has passed since that archive was written.
//!
//! What stolen S3 keys still can do to such a bucket is hide objects: a
//! plain DELETE adds a delete marker over the locked version, and a PUT
//! a newer version. Restoring from the bucket therefore reads past them
//! ([`Bucket::versions`], [`Bucket::get_version`]): a manifest or member
//! missing or bad at its newest version is read from the newest older
//! version that checks out.
//!
//! Old versions are not deleted by backmesh (a DELETE only adds a
//! marker); the bucket's lifecycle rule expiring noncurrent versions
//! (docs/operations.md) removes them once their lock has passed.

use md5::Digest as _;
use rusty_s3::actions::S3Action as _;

use super::bucket::{error_code, percent_decode, Bucket, BucketError, ATTEMPTS, MAX_OBJECT, SIGNED_FOR};

/// One version of an object, as a version listing gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub key: String,
    pub version_id: String,
    /// A delete marker, not content.
    pub marker: bool,
    pub modified_ms: i64,
}

/// An element of a `ListObjectVersions` answer: versions and delete
/// markers come interleaved, in key order, newest first per key.
#[derive(serde::Deserialize)]
enum Listed {
    Version(Entry),
    DeleteMarker(Entry),
    IsTruncated(String),
    NextKeyMarker(String),
    NextVersionIdMarker(String),
    #[serde(other)]
    Other,
}

#[derive(serde::Deserialize)]
struct Entry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "VersionId", default)]
    version_id: String,
    #[serde(rename = "LastModified", default)]
    last_modified: String,
}

#[derive(serde::Deserialize)]
struct VersionsPage {
    #[serde(rename = "$value", default)]
    items: Vec<Listed>,
}

/// How long an object is locked once written or extended: one and a half
/// grace periods, so that a member reused by archive after archive is
/// extended at most once per half grace period (when less than one grace
/// period is left), yet stays locked a grace period past the newest
/// archive that names it.
pub fn lock_period(grace: std::time::Duration) -> std::time::Duration {
    grace.saturating_add(grace / 2)
}

/// An S3 time (`2026-12-14T14:00:00Z`), as retention dates are written.
fn s3_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn content_md5(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

impl Bucket {
    /// The node's grace period: with Object Lock on in the bucket, every
    /// object written is locked that long (none: nothing is locked).
    pub fn set_grace(&mut self, grace: Option<std::time::Duration>) {
        self.grace = grace;
    }

    /// How long objects written are locked for, if they are: the grace
    /// period when the bucket has Object Lock on (asked once).
    pub fn lock(&self) -> Result<Option<std::time::Duration>, BucketError> {
        let Some(grace) = self.grace else { return Ok(None) };
        Ok(self.lock_on()?.then_some(grace))
    }

    /// Whether the bucket has Object Lock on (so keeps versions), asked
    /// once: only a definite answer is kept (a bucket not there yet, or
    /// out of reach, is asked again).
    pub fn lock_on(&self) -> Result<bool, BucketError> {
        if let Some(on) = self.lock_on.get() {
            return Ok(*on);
        }
        let on = self.object_lock()?;
        // Two threads may ask at once; both get the same answer.
        let _ = self.lock_on.set(on);
        Ok(on)
    }

    /// The headers a PUT of `data` under `key` carries: COMPLIANCE
    /// retention for the lock period, with the Content-MD5 S3 asks of a
    /// locked write. Locks (`locks/…`) are not locked: they are deleted
    /// as soon as their work is done.
    pub(super) fn lock_headers(&self, key: &str, data: &[u8]) -> Result<Vec<(&'static str, String)>, BucketError> {
        if key.starts_with("locks/") {
            return Ok(Vec::new());
        }
        let Some(grace) = self.lock()? else { return Ok(Vec::new()) };
        let until = crate::clock::now_ms().saturating_add(lock_period(grace).as_millis() as i64);
        Ok(vec![
            ("content-md5", content_md5(data)),
            ("x-amz-object-lock-mode", "COMPLIANCE".into()),
            ("x-amz-object-lock-retain-until-date", s3_time(until)),
        ])
    }

    /// Whether the bucket has Object Lock on (`GET ?object-lock`).
    pub fn object_lock(&self) -> Result<bool, BucketError> {
        let mut action = rusty_s3::actions::ListObjectsV2::new(&self.bucket, Some(&self.creds));
        action.query_mut().remove("list-type");
        action.query_mut().remove("encoding-type");
        action.query_mut().insert("object-lock", "");
        let url = action.sign(SIGNED_FOR);
        let a = self.send_with("GET", &url, None, &[], ATTEMPTS, 1 << 20)?;
        match (a.status, error_code(&a.body).as_str()) {
            (200, _) => Ok(String::from_utf8_lossy(&a.body).contains("<ObjectLockEnabled>Enabled</ObjectLockEnabled>")),
            (_, "ObjectLockConfigurationNotFoundError") => Ok(false),
            // Not there (yet): asked again later.
            (_, "NoSuchBucket") => Err(self.fail("GET object-lock", "", &a)),
            // Keys not allowed to ask (a policy from before Object Lock):
            // written unlocked, and said.
            (403, _) => {
                tracing::warn!(
                    "{}: these keys may not ask whether Object Lock is on (allow \
                     s3:GetBucketObjectLockConfiguration): copies are written without a lock",
                    self.target().shown()
                );
                Ok(false)
            }
            // A server without Object Lock at all says so in its own way.
            (400 | 404 | 501, _) => Ok(false),
            _ => Err(self.fail("GET object-lock", "", &a)),
        }
    }

    /// Makes the bucket with Object Lock on (an operator's step, or a
    /// test's); one that is there already and ours is no error.
    pub fn create_locked(&self) -> Result<(), BucketError> {
        let mut action = rusty_s3::actions::CreateBucket::new(&self.bucket, &self.creds);
        let headers = [("x-amz-bucket-object-lock-enabled", "true".to_string())];
        action.headers_mut().insert(headers[0].0, headers[0].1.clone());
        let url = action.sign(SIGNED_FOR);
        let a = self.send_with("PUT", &url, Some(b""), &headers, ATTEMPTS, MAX_OBJECT)?;
        match (a.status, error_code(&a.body).as_str()) {
            (200..=299, _) | (_, "BucketAlreadyOwnedByYou") => Ok(()),
            _ => Err(self.fail("CREATE", "", &a)),
        }
    }

    /// Extends the retention of object `key` (its current version) to
    /// `until_ms` (later than its lock: COMPLIANCE retention is only ever
    /// lengthened).
    pub fn retain(&self, key: &str, until_ms: i64) -> Result<(), BucketError> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            s3_time(until_ms)
        );
        let full = self.full(key);
        let mut action = rusty_s3::actions::PutObject::new(&self.bucket, Some(&self.creds), &full);
        action.query_mut().insert("retention", "");
        let headers = [("content-md5", content_md5(body.as_bytes()))];
        action.headers_mut().insert(headers[0].0, headers[0].1.clone());
        let url = action.sign(SIGNED_FOR);
        let a = self.send_with("PUT", &url, Some(body.as_bytes()), &headers, ATTEMPTS, 1 << 20)?;
        match a.status {
            200..=299 => Ok(()),
            _ => Err(self.fail("PUT retention", key, &a)),
        }
    }

    /// Every version (and delete marker) of the objects whose key (below
    /// the prefix) starts with `under`, newest first per key.
    pub fn versions(&self, under: &str) -> Result<Vec<Version>, BucketError> {
        let full = self.full(under);
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        // Bounded: a listing of more than a billion versions is not ours.
        for _ in 0..1_000_000 {
            let mut action = rusty_s3::actions::ListObjectsV2::new(&self.bucket, Some(&self.creds));
            let q = action.query_mut();
            q.remove("list-type");
            q.insert("versions", "");
            q.insert("prefix", full.clone());
            if let Some(k) = &key_marker {
                q.insert("key-marker", k.clone());
            }
            if let Some(v) = &version_marker {
                q.insert("version-id-marker", v.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let a = self.send_with("GET", &url, None, &[], ATTEMPTS, MAX_OBJECT)?;
            if a.status != 200 {
                return Err(self.fail("LIST versions", under, &a));
            }
            let page: VersionsPage = quick_xml::de::from_reader(a.body.as_slice()).map_err(|e| BucketError::Bad {
                bucket: self.target().shown(),
                what: format!("a version listing of {under} does not parse: {e}"),
            })?;
            let (mut truncated, mut next_key, mut next_version) = (false, None, None);
            for item in page.items {
                let (entry, marker) = match item {
                    Listed::Version(e) => (e, false),
                    Listed::DeleteMarker(e) => (e, true),
                    Listed::IsTruncated(t) => {
                        truncated = t.trim() == "true";
                        continue;
                    }
                    Listed::NextKeyMarker(k) => {
                        next_key = Some(percent_decode(&k));
                        continue;
                    }
                    Listed::NextVersionIdMarker(v) => {
                        next_version = Some(v);
                        continue;
                    }
                    Listed::Other => continue,
                };
                let key = percent_decode(&entry.key);
                let Some(rel) = key.strip_prefix(self.target().prefix.as_str()) else { continue };
                let modified_ms = chrono::DateTime::parse_from_rfc3339(&entry.last_modified)
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(0);
                out.push(Version { key: rel.to_string(), version_id: entry.version_id, marker, modified_ms });
            }
            if !truncated {
                return Ok(out);
            }
            if next_key.is_none() && next_version.is_none() {
                break;
            }
            (key_marker, version_marker) = (next_key, next_version);
        }
        Err(BucketError::Bad {
            bucket: self.target().shown(),
            what: format!("the version listing of {under} does not end"),
        })
    }

    /// Deletes version `version_id` of object `key` for good: what stolen
    /// S3 keys would try (no node does; the bucket refuses a locked one).
    pub fn delete_version(&self, key: &str, version_id: &str) -> Result<(), BucketError> {
        let full = self.full(key);
        let mut action = rusty_s3::actions::DeleteObject::new(&self.bucket, Some(&self.creds), &full);
        action.query_mut().insert("versionId", version_id.to_string());
        let url = action.sign(SIGNED_FOR);
        let a = self.send_with("DELETE", &url, None, &[], 1, 1 << 20)?;
        match a.status {
            200..=299 => Ok(()),
            _ => Err(self.fail("DELETE version", key, &a)),
        }
    }

    /// Version `version_id` of object `key`, read up to `limit` bytes.
    pub fn get_version(&self, key: &str, version_id: &str, limit: u64) -> Result<Option<Vec<u8>>, BucketError> {
        let full = self.full(key);
        let mut action = rusty_s3::actions::GetObject::new(&self.bucket, Some(&self.creds), &full);
        action.query_mut().insert("versionId", version_id.to_string());
        let url = action.sign(SIGNED_FOR);
        let a = self.send_with("GET", &url, None, &[], ATTEMPTS, limit.min(MAX_OBJECT))?;
        match a.status {
            200 => Ok(Some(a.body)),
            404 | 405 => Ok(None),
            _ => Err(self.fail("GET version", key, &a)),
        }
    }

    /// Object `key` as its newest version that `good` accepts: the
    /// current one first, then (with Object Lock on) older versions,
    /// newest first, past delete markers and newer writes. `None` when
    /// no version is good.
    pub fn get_good(
        &self,
        key: &str,
        limit: u64,
        good: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, BucketError> {
        // A newest version larger than the object may be is no better
        // than a bad one: older versions are looked at all the same.
        match self.get_limited(key, limit) {
            Ok(Some(data)) if good(&data) => return Ok(Some(data)),
            Ok(_) | Err(BucketError::TooLarge { .. }) => {}
            Err(e) => return Err(e),
        }
        // Older versions are kept where Object Lock is on, whatever this
        // node's own --grace.
        if !self.lock_on()? {
            return Ok(None);
        }
        let versions = self.versions(key)?;
        for v in versions.iter().filter(|v| v.key == key && !v.marker) {
            match self.get_version(key, &v.version_id, limit) {
                Ok(Some(data)) if good(&data) => {
                    tracing::warn!(
                        "{}: {key} is read from an older version ({}): its newest was deleted or replaced",
                        self.target().shown(),
                        v.version_id
                    );
                    return Ok(Some(data));
                }
                // Junk, too large junk, or gone: the next older one.
                Ok(_) | Err(BucketError::TooLarge { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_listing_reads_versions_and_markers_interleaved() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>p/</Prefix><KeyMarker></KeyMarker><MaxKeys>1000</MaxKeys>
  <IsTruncated>true</IsTruncated><NextKeyMarker>p/b%2Bc</NextKeyMarker><NextVersionIdMarker>v9</NextVersionIdMarker>
  <DeleteMarker><Key>p/a</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest><LastModified>2026-12-07T10:00:00.000Z</LastModified></DeleteMarker>
  <Version><Key>p/a</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest><LastModified>2026-12-07T09:00:00.000Z</LastModified><ETag>"x"</ETag><Size>3</Size></Version>
  <DeleteMarker><Key>p/b</Key><VersionId>v5</VersionId><IsLatest>true</IsLatest><LastModified>2026-12-07T10:00:00.000Z</LastModified></DeleteMarker>
</ListVersionsResult>"#;
        let page: VersionsPage = quick_xml::de::from_str(xml).unwrap();
        let kinds: Vec<String> = page
            .items
            .iter()
            .map(|i| match i {
                Listed::Version(e) => format!("v {} {}", e.key, e.version_id),
                Listed::DeleteMarker(e) => format!("m {} {}", e.key, e.version_id),
                Listed::IsTruncated(t) => format!("t {t}"),
                Listed::NextKeyMarker(k) => format!("k {k}"),
                Listed::NextVersionIdMarker(v) => format!("n {v}"),
                Listed::Other => "-".into(),
            })
            .filter(|s| s != "-")
            .collect();
        assert_eq!(kinds, ["t true", "k p/b%2Bc", "n v9", "m p/a v3", "v p/a v2", "m p/b v5"]);
        assert_eq!(s3_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }
}
