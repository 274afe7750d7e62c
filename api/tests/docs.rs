//! docs/api.md is checked against the types: every body it shows is a
//! complete JSON example under a `<!-- api: Type -->` marker, and each
//! must read as that type and write back with exactly the same fields —
//! no field the type lacks, none it has left out. A field renamed in
//! `api/` fails here until the docs say the same.

use std::collections::BTreeSet;

use backmesh_api::cli::{Fetched, RestoreOutcome, RunOutcome, VerifyOutcome};
use backmesh_api::dashboard::{JobPage, Overview, WhoAmI};
use backmesh_api::files::{Compared, Found, Listing};
use backmesh_api::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

const DOC: &str = include_str!("../../docs/api.md");

/// Every type a client sends or reads, by the name its marker uses.
const TYPES: &[&str] = &[
    "Health",
    "Status",
    "Jobs",
    "Register",
    "Recorded",
    "JobKey",
    "Queued",
    "Progress",
    "RequestEntries",
    "Backups",
    "Restore",
    "RestoreStarted",
    "Verify",
    "VerifyStarted",
    "LogPage",
    "ErrorBody",
    "WhoAmI",
    "Overview",
    "JobPage",
    "RunOutcome",
    "RestoreOutcome",
    "VerifyOutcome",
    "Fetched",
    "Join",
    "Joined",
    "Revoke",
    "Rebind",
    "Identity",
    "OperatorChange",
    "Operators",
    "ArchiveKeys",
    "Listing",
    "RestoreProgress",
    "Dumped",
    "Found",
    "Compared",
    "RecipientChange",
    "Recipients",
];

/// The example read as `T` and written back.
fn again<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

fn round_trip(name: &str, v: &Value) -> Result<Value, String> {
    match name {
        "Health" => again::<Health>(v),
        "Status" => again::<Status>(v),
        "Jobs" => again::<Jobs>(v),
        "Register" => again::<Register>(v),
        "Recorded" => again::<Recorded>(v),
        "JobKey" => again::<JobKey>(v),
        "Queued" => again::<Queued>(v),
        "Progress" => again::<Progress>(v),
        "RequestEntries" => again::<RequestEntries>(v),
        "Backups" => again::<Backups>(v),
        "Restore" => again::<Restore>(v),
        "RestoreStarted" => again::<RestoreStarted>(v),
        "Verify" => again::<Verify>(v),
        "VerifyStarted" => again::<VerifyStarted>(v),
        "LogPage" => again::<LogPage>(v),
        "ErrorBody" => again::<ErrorBody>(v),
        "WhoAmI" => again::<WhoAmI>(v),
        "Overview" => again::<Overview>(v),
        "JobPage" => again::<JobPage>(v),
        "RunOutcome" => again::<RunOutcome>(v),
        "RestoreOutcome" => again::<RestoreOutcome>(v),
        "VerifyOutcome" => again::<VerifyOutcome>(v),
        "Fetched" => again::<Fetched>(v),
        "Join" => again::<backmesh_api::Join>(v),
        "Joined" => again::<backmesh_api::Joined>(v),
        "Revoke" => again::<backmesh_api::Revoke>(v),
        "Rebind" => again::<backmesh_api::Rebind>(v),
        "Identity" => again::<backmesh_api::Identity>(v),
        "OperatorChange" => again::<backmesh_api::OperatorChange>(v),
        "Operators" => again::<backmesh_api::Operators>(v),
        "ArchiveKeys" => again::<backmesh_api::ArchiveKeys>(v),
        "Listing" => again::<Listing>(v),
        "RestoreProgress" => again::<backmesh_api::RestoreProgress>(v),
        "Dumped" => again::<backmesh_api::cli::Dumped>(v),
        "Found" => again::<Found>(v),
        "Compared" => again::<Compared>(v),
        "RecipientChange" => again::<backmesh_api::RecipientChange>(v),
        "Recipients" => again::<backmesh_api::Recipients>(v),
        other => Err(format!("no type `{other}` in the API")),
    }
}

/// Every field's path in `v` (`nodes[].name`).
fn fields(v: &Value, at: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                out.insert(p.clone());
                fields(x, &p, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                fields(x, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

/// (type, example) for each marker, in the order of the document.
fn examples() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = DOC;
    while let Some(i) = rest.find("<!-- api: ") {
        rest = &rest[i + "<!-- api: ".len()..];
        let name = rest[..rest.find(" -->").expect("a marker ends with -->")].to_string();
        let start = rest.find("```json\n").expect("a ```json block follows each marker") + "```json\n".len();
        let end = start + rest[start..].find("```").expect("the block ends");
        out.push((name, rest[start..end].to_string()));
        rest = &rest[end..];
    }
    out
}

#[test]
fn every_body_in_docs_api_md_reads_as_its_type_with_the_same_fields() {
    let found = examples();
    let mut problems = Vec::new();
    for (name, text) in &found {
        let doc: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{name}: the example is not JSON: {e}"));
                continue;
            }
        };
        match round_trip(name, &doc) {
            Err(e) => problems.push(format!("{name}: the example does not read as the type: {e}")),
            Ok(back) => {
                let (mut shown, mut kept) = (BTreeSet::new(), BTreeSet::new());
                fields(&doc, "", &mut shown);
                fields(&back, "", &mut kept);
                let unknown: Vec<_> = shown.difference(&kept).collect();
                let missing: Vec<_> = kept.difference(&shown).collect();
                if !unknown.is_empty() || !missing.is_empty() {
                    problems.push(format!("{name}: fields the type lacks {unknown:?}, fields not shown {missing:?}"));
                }
            }
        }
    }
    let named: BTreeSet<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    for t in TYPES {
        if !named.contains(t) {
            problems.push(format!("{t}: docs/api.md shows no example (`<!-- api: {t} -->` before a ```json block)"));
        }
    }
    assert!(problems.is_empty(), "docs/api.md and api/ disagree:\n{}", problems.join("\n"));
}
