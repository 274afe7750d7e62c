//! Changes of this node's jobs: a registration (checked: the source is
//! there, its programs are allowed), an unregistration, a pause or a
//! resume. A node writes its own jobs only, and the log of every node
//! refuses a job or pause record sealed by another: the HTTP API of this
//! node asks here under its operator's token, another node's under the
//! operator's order ([`super::proto::JobsRequest::Change`]).

use backmesh_api::names::{check_node_name, check_series_path};
use backmesh_api::Register;

use super::plugin::JobSpec;
use crate::authority::Act;

/// Why a change is refused, in words for the operator.
pub type Refusal = String;

/// `r` checked and put in the form the log keeps (`--source dir` is the
/// default, so it is left out); or what is wrong with it.
pub fn validate(r: &Register) -> Result<Register, Refusal> {
    let mut r = r.clone();
    if r.every == 0 {
        return Err("--every must be at least 1 minute".into());
    }
    check_node_name(&r.node).map_err(|e| e.to_string())?;
    check_series_path(&r.path).map_err(|e| e.to_string())?;
    if !r.path.starts_with('/') {
        return Err(format!("`{}` is not an absolute path; give the full path on {}", r.path, r.node));
    }
    for pat in &r.excludes {
        if let Err(e) = globset::Glob::new(pat) {
            return Err(format!("bad exclude pattern `{pat}`: {}", e.kind()));
        }
    }
    for url in &r.spec.notify {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("--notify takes an http:// or https:// URL, not `{url}`"));
        }
    }
    if r.spec.source.as_deref() == Some("dir") {
        r.spec.source = None;
    }
    if r.spec.source.is_none() && !r.spec.args.is_empty() {
        return Err("--arg is for a --source other than a directory".into());
    }
    Ok(r)
}

/// A job's spec as the log keeps it.
pub fn spec_of(s: &backmesh_api::JobSpec) -> JobSpec {
    JobSpec {
        source: s.source.clone(),
        args: s.args.clone(),
        pre: s.pre.clone(),
        post: s.post.clone(),
        timeout_s: s.timeout_s,
        notify: s.notify.clone(),
        notify_cmd: s.notify_cmd.clone(),
        grant: None,
    }
}

/// Whether `act` is a change of jobs (what [`super::proto::JobsRequest::Change`]
/// may carry), and of node `me`'s.
pub fn is_change_of(act: &Act, me: &str) -> Result<(), Refusal> {
    let node = match act {
        Act::Register(r) => &r.node,
        Act::Unregister(k) => &k.node,
        Act::Pause { node } | Act::Resume { node } => node,
        other => return Err(format!("`{}` is not a change of jobs", other.name())),
    };
    if node != me {
        return Err(format!("node {me} changes its own jobs only, not {node}'s"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(path: &str) -> Register {
        Register {
            node: "n1".into(),
            path: path.into(),
            every: 5,
            excludes: vec![],
            spec: backmesh_api::JobSpec { source: Some("dir".into()), ..Default::default() },
        }
    }

    #[test]
    fn a_registration_is_checked_and_normalized() {
        let ok = validate(&reg("/srv/app")).unwrap();
        assert_eq!(ok.spec.source, None, "dir is the default and is left out");
        assert!(validate(&reg("srv")).unwrap_err().contains("absolute"));
        assert!(validate(&Register { every: 0, ..reg("/a") }).unwrap_err().contains("--every"));
        assert!(validate(&Register { excludes: vec!["a[".into()], ..reg("/a") }).unwrap_err().contains("exclude"));
        let mut bad_url = reg("/a");
        bad_url.spec.notify = vec!["ftp://x".into()];
        assert!(validate(&bad_url).unwrap_err().contains("--notify"));
        assert!(is_change_of(&Act::Register(reg("/a")), "n1").is_ok());
        assert!(is_change_of(&Act::Register(reg("/a")), "n2").unwrap_err().contains("own jobs"));
        assert!(is_change_of(&Act::Pause { node: "n1".into() }, "n1").is_ok());
        let run = Act::Run(backmesh_api::JobKey { node: "n1".into(), path: "/a".into() });
        assert!(is_change_of(&run, "n1").is_err());
    }
}
