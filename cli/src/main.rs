//! `backmesh`: the light client. It talks HTTP/JSON to any node of the
//! mesh and never links actix or libp2p (the API types come from the small
//! `backmesh-api` crate).
//!
//! Exit codes: 0 ok, 1 the node refused or the operation failed, 2 usage,
//! 3 the node cannot be reached.

mod args;
mod client;
mod keys;
mod operator;
mod sealed;

use std::process::ExitCode;
use std::time::Duration;

use backmesh_api::cli::{RestoreOutcome, RestoreResult, RunOutcome, VerifyOutcome};
use backmesh_api::{human_bytes as human, Event, LogEntry, RunResult, Status};
use clap::Parser;

use args::{Cli, Command, OperatorCommand, RecoveryCommand};
use backmesh_api::order::Act;
use client::{enc, Client, Failure};
use serde::Serialize;

/// Writes a line on stdout. When the reader has gone (`backmesh jobs |
/// head -1`), the client has nothing more to say to anyone: it exits
/// quietly instead of panicking — 0, or 1 when what it was printing is a
/// failure (a damaged verify, a failed run), so `set -o pipefail` still
/// sees it.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(e)
        }
    }};
}

/// Set once the command knows it ends in failure (its exit code is 1).
static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn failing() {
    FAILING.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(i32::from(FAILING.load(std::sync::atomic::Ordering::Relaxed)));
    }
    eprintln!("backmesh: cannot write the output: {e}");
    std::process::exit(1)
}

fn short(peer: &str) -> String {
    format!("…{}", &peer[peer.len().saturating_sub(8)..])
}

fn status(client: &Client, json: bool, workers: bool) -> Result<(), Failure> {
    let body = client.get_text("/status")?;
    if json {
        print_raw(&body);
        return Ok(());
    }
    let s: Status = client.parse(&body)?;
    out!("{:<20} {:<10} {:<22} {:<5} {:>10}  SITE", "NODE", "PEER", "ADDRESS", "STATE", "FREE");
    for n in &s.nodes {
        let name = if n.this_node { format!("{} *", n.name) } else { n.name.clone() };
        out!(
            "{:<20} {:<10} {:<22} {:<5} {:>10}  {}",
            name,
            short(&n.peer_id),
            n.address,
            if n.up { "up" } else { "DOWN" },
            human(n.free_bytes),
            if n.site.is_empty() { "-" } else { &n.site }
        );
    }
    let up = s.nodes.iter().filter(|n| n.up).count();
    out!("{up} of {} nodes up (* = the node that answered)", s.nodes.len());
    if !s.recovery.is_empty() {
        out!("operator recovery recipients (data keys are wrapped to them): {}", s.recovery.join(", "));
    }
    if s.jobs.is_empty() {
        out!("no backup jobs registered");
    } else {
        out!();
        out!("{:<16} {:<36} {:>7} {:<10} LAST SUCCESS", "JOB NODE", "PATH", "EVERY", "STATE");
        for j in &s.jobs {
            out!(
                "{:<16} {:<36} {:>5}m {:<10} {}",
                j.node,
                j.path,
                j.every,
                j.state,
                j.last_success.as_deref().unwrap_or("never")
            );
        }
    }
    if let Some(o) = &s.offsite {
        out!();
        out!("offsite: {} (the series this node uploads)", o.bucket);
        if o.series.is_empty() {
            out!("  none yet");
        }
        for x in &o.series {
            let state = match (x.state.as_str(), &x.since, &x.error) {
                ("failing", _, Some(e)) => format!("FAILING: {e}"),
                ("behind", Some(since), _) => format!("behind since {since}"),
                (other, _, _) => other.to_string(),
            };
            out!("  {:<16} {:<36} {}", x.node, x.path, state);
        }
        if let Some(c) = &o.collected {
            out!("  unused members last collected {c}");
        }
    }
    if workers {
        out!();
        out!("{:<14} {:<10} DOING", "WORKER", "STATE");
        for w in &s.workers {
            out!("{:<14} {:<10} {}", w.name, w.state, w.detail.as_deref().unwrap_or(&w.what));
            if let Some(e) = &w.last_error {
                let at = w.last_error_at.as_deref().unwrap_or("?");
                out!("{:<25} last error at {at} ({} since start): {e}", "", w.errors);
            }
        }
    }
    for p in &s.problems {
        out!("problem: {p}");
    }
    Ok(())
}

mod browse;
mod fetch;
mod opened;
mod progress;

fn print_json(v: &impl Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(text) => out!("{text}"),
        Err(e) => {
            eprintln!("backmesh: cannot write the answer as JSON: {e}");
            std::process::exit(1)
        }
    }
}

/// Prints a node's answer as it came (pretty), fields this client does not
/// know included.
fn print_raw(body: &str) {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => print_json(&v),
        Err(_) => out!("{body}"),
    }
}

fn jobs(client: &Client, json: bool) -> Result<(), Failure> {
    let body = client.get_text("/jobs")?;
    if json {
        print_raw(&body);
        return Ok(());
    }
    let v: backmesh_api::Jobs = client.parse(&body)?;
    if v.jobs.is_empty() {
        out!("no backup jobs registered");
        return Ok(());
    }
    out!("{:<16} {:<36} {:>7} {:<10} LAST SUCCESS", "NODE", "PATH", "EVERY", "STATE");
    for j in &v.jobs {
        out!(
            "{:<16} {:<36} {:>5}m {:<10} {}",
            j.node,
            j.path,
            j.every,
            j.state,
            j.last_success.as_deref().unwrap_or("never")
        );
    }
    Ok(())
}

/// The most entries one `/log` answer holds (the node's page size).
const LOG_PAGE: usize = 1000;

fn log(
    client: &Client,
    json: bool,
    node: Option<&str>,
    path: Option<&str>,
    limit: usize,
    before: Option<&str>,
) -> Result<(), Failure> {
    // Newest first, page by page, until `limit` entries or the oldest.
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut cursor = before.map(String::from);
    let mut more = true;
    while entries.len() < limit && more {
        let mut q = format!("/log?limit={}", (limit - entries.len()).min(LOG_PAGE));
        if let Some(n) = node {
            q.push_str(&format!("&node={}", enc(n)));
        }
        if let Some(p) = path {
            q.push_str(&format!("&path={}", enc(p)));
        }
        if let Some(c) = &cursor {
            q.push_str(&format!("&before={}", enc(c)));
        }
        let mut page: backmesh_api::LogPage = client.get(&q)?;
        // Go on while older entries remain and the cursor moves back (a
        // page may be empty when a filter matches little of a long history).
        more = page.more && page.cursor.is_some() && page.cursor != cursor;
        cursor = page.cursor;
        page.entries.append(&mut entries);
        entries = page.entries;
    }
    if json {
        print_json(&backmesh_api::LogPage { entries, more, cursor });
        return Ok(());
    }
    if more {
        if let Some(c) = &cursor {
            eprintln!("(older entries remain: --before {c}, or a larger --limit)");
        }
    }
    for e in entries {
        out!(
            "{}  {:<12} {:<10} {}  (by {} #{})",
            e.time,
            e.event.kind(),
            e.event.node(),
            details(&e.event),
            e.origin_name,
            e.seq
        );
    }
    Ok(())
}

/// An event's fields but its kind and node, as `name=value` words.
fn details(event: &Event) -> String {
    let mut words = Vec::new();
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(event) {
        for (k, val) in fields.into_iter().filter(|(k, _)| k != "kind" && k != "node") {
            words.push(match val {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            });
        }
    }
    words.join(" ")
}

/// A change (register, unregister, pause, resume): with `--json`, the
/// node's answer (`Recorded`) as it came.
fn write(
    client: &Client,
    json: bool,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    done: &str,
) -> Result<(), Failure> {
    let answer = client.call_text(method, path, body)?;
    if json {
        print_raw(&answer);
    } else {
        out!("{done}");
    }
    Ok(())
}

/// Polls the log until `expect` entries of the kinds `kinds` answer
/// `request`, calling `tick` between polls; `None` after `timeout` seconds.
fn wait_request(
    client: &Client,
    request: &str,
    kinds: &[&str],
    expect: usize,
    timeout: u64,
    mut tick: impl FnMut(std::time::Instant),
) -> Result<Option<Vec<LogEntry>>, Failure> {
    let start = std::time::Instant::now();
    loop {
        let answer: backmesh_api::RequestEntries = client.get(&format!("/requests/{}", enc(request)))?;
        let done: Vec<LogEntry> = answer.entries.into_iter().filter(|e| kinds.contains(&e.event.kind())).collect();
        if done.len() >= expect {
            return Ok(Some(done));
        }
        if start.elapsed().as_secs() >= timeout {
            return Ok(None);
        }
        tick(start);
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn is_tty(json: bool) -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr()) && !json
}

fn clear_line(tty: bool) {
    if tty {
        eprint!("\r{:78}\r", "");
    }
}

fn run(client: &Client, json: bool, node: &str, path: &str, no_wait: bool, timeout: u64) -> Result<bool, Failure> {
    let key = backmesh_api::JobKey { node: node.into(), path: path.into() };
    client.sign(Act::Run(key.clone()))?;
    let answer = client.call_text("POST", "/run", serde_json::to_value(&key).ok())?;
    let queued: backmesh_api::Queued = client.parse(&answer)?;
    if no_wait {
        if json {
            print_raw(&answer);
        } else {
            out!("queued: {path} on {node} (request {})", queued.request);
        }
        return Ok(true);
    }
    let request = queued.request;
    let tty = is_tty(json);
    let mut last_poll = std::time::Instant::now() - Duration::from_secs(10);
    let progress_q = format!("/progress?node={}&path={}", enc(node), enc(path));
    let found = wait_request(client, &request, &["finished", "unchanged", "failed"], 1, timeout, |start| {
        if !tty || last_poll.elapsed() < Duration::from_millis(900) {
            return;
        }
        last_poll = std::time::Instant::now();
        let line = match client.get::<backmesh_api::Progress>(&progress_q) {
            Ok(p) if p.running && p.request.as_deref() == Some(&request) => {
                let secs = (p.elapsed_ms as f64 / 1000.0).max(0.001);
                format!(
                    "  {node}: {} files, {} read, {} written, {}/s",
                    p.entries,
                    human(p.bytes_read),
                    human(p.bytes_out),
                    human((p.bytes_read as f64 / secs) as u64)
                )
            }
            Ok(p) if p.running => format!("  {node}: waiting for the run already under way…"),
            _ => format!("  waiting for {node} to start the backup… {}s", start.elapsed().as_secs()),
        };
        eprint!("\r{line:78}");
    })?;
    clear_line(tty);
    let Some(mut entries) = found else {
        return Err(Failure::Refused(format!(
            "no result after {timeout}s; the run goes on: see `backmesh log --path {path}`"
        )));
    };
    let mut outcome = RunOutcome {
        result: RunResult::Failed,
        archive: None,
        size: None,
        files: None,
        warnings: Vec::new(),
        error: None,
        duration_ms: 0,
        request: request.clone(),
    };
    match entries.remove(0).event {
        Event::Finished { archive, size, files, duration_ms, warnings, .. } => {
            if !json {
                out!(
                    "finished: {path} on {node} → archive {archive} ({}, {files} files) in {:.1}s",
                    human(size),
                    duration_ms as f64 / 1000.0
                );
                for w in &warnings {
                    out!("  warning: {w}");
                }
            }
            outcome = RunOutcome {
                result: RunResult::Finished,
                archive: Some(archive),
                size: Some(size),
                files: Some(files),
                warnings,
                duration_ms,
                ..outcome
            };
        }
        Event::Unchanged { archive, duration_ms, .. } => {
            if !json {
                out!("unchanged: {path} on {node} (latest archive {archive})");
            }
            outcome = RunOutcome { result: RunResult::Unchanged, archive: Some(archive), duration_ms, ..outcome };
        }
        Event::Failed { error, duration_ms, .. } => {
            failing();
            if !json {
                out!("failed: {path} on {node}: {error}");
            }
            outcome = RunOutcome { error: Some(error), duration_ms, ..outcome };
        }
        other => return Err(Failure::Refused(format!("the run was answered by a `{}` entry", other.kind()))),
    }
    if json {
        print_json(&outcome);
    }
    Ok(outcome.result != RunResult::Failed)
}

#[allow(clippy::too_many_arguments)]
fn restore(
    client: &Client,
    json: bool,
    node: &str,
    path: &str,
    to: &str,
    archive: Option<&str>,
    on: Option<&str>,
    overwrite: bool,
    include: &[String],
    timeout: u64,
) -> Result<bool, Failure> {
    let mut body = backmesh_api::Restore {
        node: node.into(),
        path: path.into(),
        to: to.into(),
        archive: archive.map(String::from),
        // Always named: the order says which node is to write the files.
        on: Some(on.unwrap_or(node).to_string()),
        overwrite,
        key: None,
        include: include.to_vec(),
    };
    if client.operator_key.is_some() {
        body.key = keys::restore_key(client, node, path, archive, on.unwrap_or(node))?;
    }
    client.sign(Act::Restore(body.clone()))?;
    let started: backmesh_api::RestoreStarted = client.post("/restore", &body)?;
    let (request, target) = (started.request, started.on);
    // How far it has come, asked of the restoring node about once a second.
    let mut meter = progress::Meter::new(format!("restoring {path} of {node} on {target}"), None, json);
    let mut asked = std::time::Instant::now();
    let found = wait_request(client, &request, &["restored"], 1, timeout, |_| {
        if json || asked.elapsed() < Duration::from_secs(1) {
            return;
        }
        asked = std::time::Instant::now();
        let url = format!("/requests/{}/progress?on={}", enc(&request), enc(&target));
        if let Ok(p) = client.get::<backmesh_api::RestoreProgress>(&url) {
            meter.set(p.bytes, p.total);
        }
    })?;
    meter.finish();
    let Some(mut entries) = found else {
        return Err(Failure::Refused(format!("no result after {timeout}s; the restore goes on: see `backmesh log`")));
    };
    let Event::Restored { archive, on, to, files, bytes, duration_ms, error, .. } = entries.remove(0).event else {
        return Err(Failure::Refused("the restore was answered by an entry of another kind".into()));
    };
    let ok = error.is_none();
    if !ok {
        failing();
    }
    if json {
        print_json(&RestoreOutcome {
            result: if ok { RestoreResult::Restored } else { RestoreResult::Failed },
            archive: archive.clone(),
            on: on.clone(),
            to: to.clone(),
            files,
            bytes,
            error: error.clone(),
            duration_ms,
            request: request.clone(),
        });
    } else if let Some(e) = &error {
        out!("failed: restore of {path} on {node} onto {target}: {e}");
    } else {
        out!(
            "restored: archive {archive} of {path} on {node} → {target}:{to} ({files} entries, {}) in {:.1}s",
            human(bytes),
            duration_ms as f64 / 1000.0
        );
    }
    Ok(ok)
}

fn verify(client: &Client, json: bool, node: Option<&str>, path: Option<&str>, timeout: u64) -> Result<bool, Failure> {
    let body = backmesh_api::Verify { node: node.map(String::from), path: path.map(String::from) };
    client.sign(Act::Verify(body.clone()))?;
    let started: backmesh_api::VerifyStarted = client.post("/verify", &body)?;
    let (request, expect, problems) = (started.request, started.expect, started.problems);
    let tty = is_tty(json);
    let found = wait_request(client, &request, &["verified", "verify_failed"], expect, timeout, |start| {
        if tty {
            eprint!("\r  verifying {expect} cop(ies) of series… {}s", start.elapsed().as_secs());
        }
    })?;
    clear_line(tty);
    let Some(entries) = found else {
        return Err(Failure::Refused(format!("not every holder answered within {timeout}s; see `backmesh log`")));
    };
    let ok = entries.iter().all(|e| matches!(e.event, Event::Verified { ok: true, .. })) && problems.is_empty();
    if !ok {
        failing();
    }
    if json {
        print_json(&VerifyOutcome { ok, verified: entries, problems });
        return Ok(ok);
    }
    if entries.is_empty() {
        out!("nothing to verify: no live node keeps archives{}", path.map(|p| format!(" of {p}")).unwrap_or_default());
    }
    for e in &entries {
        match &e.event {
            Event::VerifyFailed { node, path, holder, error, .. } => {
                out!("{holder:<12} {path} on {node}: could not verify: {error}");
            }
            Event::Verified { node, path, holder, archives, members, damaged, repaired, .. } => {
                let verdict = match (damaged, repaired) {
                    (0, _) => "ok".to_string(),
                    (d, r) if d == r => format!("{d} damaged member(s), all repaired from another holder"),
                    (d, r) => format!("{d} damaged member(s), only {r} repaired: DAMAGED"),
                };
                out!("{holder:<12} {path} on {node}: {archives} archive(s), {members} members: {verdict}");
            }
            _ => {}
        }
    }
    for p in &problems {
        out!("could not verify on {p}");
    }
    Ok(ok)
}

fn backups(client: &Client, json: bool, node: &str, path: &str, all: bool, hidden: bool) -> Result<(), Failure> {
    let body = client.get_text(&format!("/backups?node={}&path={}&all={all}&hidden={hidden}", enc(node), enc(path)))?;
    if json {
        print_raw(&body);
        return Ok(());
    }
    let v: backmesh_api::Backups = client.parse(&body)?;
    if v.archives.is_empty() {
        out!("no archives of {path} on {node} yet");
    } else {
        out!("{:<32} {:<21} {:>10} {:>7}  HOLDERS", "ARCHIVE", "CREATED", "SIZE", "FILES");
        for a in &v.archives {
            let mut holders: Vec<String> = a
                .holders
                .iter()
                .map(|n| if a.holders_down.contains(n) { format!("{n} (down)") } else { n.clone() })
                .collect();
            if a.offsite {
                holders.push("offsite".into());
            }
            out!(
                "{:<32} {:<21} {:>10} {:>7}  {}",
                a.id,
                a.created.as_deref().unwrap_or(""),
                human(a.size),
                a.files,
                holders.join(", ")
            );
        }
    }
    if hidden {
        out!();
        if v.hidden.is_empty() {
            out!("no hidden archives (out of retention, kept for the grace period)");
        } else {
            out!("hidden: out of retention, kept until their grace period ends (restore or fetch them with --archive ID)");
            out!("{:<32} {:<21} {:>10} {:>7}  KEPT BY", "ARCHIVE", "CREATED", "SIZE", "FILES");
            for a in &v.hidden {
                let size = if a.size > 0 { human(a.size) } else { "?".into() };
                let created = a.created.as_deref().unwrap_or("");
                out!("{:<32} {:<21} {:>10} {:>7}  {}", a.id, created, size, a.files, a.holders.join(", "));
            }
        }
    }
    if all {
        out!();
        for e in &v.executions {
            let what = match &e.event {
                Event::Failed { error, .. } | Event::VerifyFailed { error, .. } => error.as_str(),
                Event::Restored { error: Some(error), .. } | Event::Notified { error: Some(error), .. } => error,
                other => other.archive().unwrap_or(""),
            };
            out!("{}  {:<12} {}", e.time, e.event.kind(), what);
        }
    }
    Ok(())
}

/// `backmesh revoke NODE`: the identity NODE has (or `peer`), revoked
/// under the operator's order.
fn revoke(client: &Client, json: bool, node: &str, peer: Option<&str>, retire: bool) -> Result<(), Failure> {
    let peer = match peer {
        Some(p) => p.to_string(),
        None => {
            let s: Status = client.get("/status")?;
            let claims: Vec<&str> = s.nodes.iter().filter(|n| n.name == node).map(|n| n.peer_id.as_str()).collect();
            match claims.as_slice() {
                [one] => one.to_string(),
                [] => return Err(Failure::Refused(format!("no node `{node}` in the mesh; give its id with --peer"))),
                more => {
                    return Err(Failure::Refused(format!(
                        "{} peers claim `{node}` ({}): give the one to revoke with --peer",
                        more.len(),
                        more.join(", ")
                    )))
                }
            }
        }
    };
    let body = backmesh_api::Revoke { node: node.to_string(), peer, retire };
    let (n, p) = (body.node.clone(), body.peer.clone());
    if retire {
        client.sign_required(Act::Retire { node: n, peer: p }, "a retirement")?;
    } else {
        client.sign_required(Act::Revoke { node: n, peer: p }, "a revocation")?;
    }
    let done: backmesh_api::Revoke = client.post("/revoke", &body)?;
    if json {
        print_json(&done);
    } else {
        out!(
            "{}: node {} ({}); every node refuses it once it hears (within a hello period){}",
            if retire { "retired" } else { "revoked" },
            done.node,
            done.peer,
            if retire { ", and its series go once the grace period has passed" } else { "" }
        );
    }
    Ok(())
}

/// `backmesh rebind NODE PEER`: NODE's name bound to identity PEER, in
/// place of the one it had, under the operator's order.
fn rebind(client: &Client, json: bool, node: &str, peer: &str, former: Option<&str>) -> Result<(), Failure> {
    let former = match former {
        Some(f) => f.to_string(),
        None => {
            let id: backmesh_api::Identity = client.get(&format!("/nodes/{}/identity", enc(node)))?;
            match id.peer {
                Some(p) if p != peer => p,
                Some(_) => return Err(Failure::Refused(format!("node {node} is {peer} already"))),
                None => {
                    return Err(Failure::Refused(format!(
                        "this node binds no identity to `{node}` yet: give the old one with --former"
                    )))
                }
            }
        }
    };
    let body = backmesh_api::Rebind { node: node.to_string(), peer: peer.to_string(), former };
    let act = Act::Rebind { node: body.node.clone(), peer: body.peer.clone(), former: body.former.clone() };
    client.sign_required(act, "a rebind")?;
    let done: backmesh_api::Rebind = client.post("/rebind", &body)?;
    if json {
        print_json(&done);
    } else {
        out!(
            "rebound: node {} is {} from now on; {} is refused, and the archives it sealed before stay {}'s \
             (every node hears it within a hello period)",
            done.node,
            done.peer,
            done.former,
            done.node
        );
    }
    Ok(())
}

/// `backmesh operator trust|distrust KEY`: a change of the operator keys
/// every node trusts, signed with this operator's key.
fn operators(client: &Client, json: bool, key: &str, trusted: bool) -> Result<(), Failure> {
    let body = backmesh_api::OperatorChange { operator: key.to_string(), trusted };
    let act = if trusted { Act::Trust { operator: key.into() } } else { Act::Distrust { operator: key.into() } };
    client.sign_required(act, "a change of operators")?;
    let done: backmesh_api::Operators = client.post("/operators", &body)?;
    if json {
        print_json(&done);
    } else {
        out!(
            "{} {key} (every node, as hellos pass it on); trusted here now:",
            if trusted { "trusted" } else { "no longer trusted:" }
        );
        for k in &done.trusted {
            out!("  {k}");
        }
    }
    Ok(())
}

/// `backmesh operator recovery add|remove RECIPIENT`: a change of the
/// recovery recipients every node wraps its data key to, signed with this
/// operator's key.
fn recipients(client: &Client, json: bool, recipient: &str, wrap: bool) -> Result<(), Failure> {
    let recipient = backmesh_crypt::wrap::parse_recipient(recipient).map_err(|e| Failure::Refused(e.to_string()))?;
    let body = backmesh_api::RecipientChange { recipient: recipient.clone(), wrap };
    let act = if wrap {
        Act::AddRecipient { recipient: recipient.clone() }
    } else {
        Act::RemoveRecipient { recipient: recipient.clone() }
    };
    client.sign_required(act, "a change of recovery recipients")?;
    let done: backmesh_api::Recipients = client.post("/recipients", &body)?;
    if json {
        print_json(&done);
    } else {
        out!(
            "data keys are wrapped to {recipient} {} (every node, as hellos pass it on); recovery recipients here now:",
            if wrap { "too" } else { "no longer" }
        );
        for r in &done.recovery {
            out!("  {r}");
        }
        if done.recovery.is_empty() {
            out!("  none: a node's backups can then be read only with that node's own key");
        }
    }
    Ok(())
}

/// `backmesh operator init|show`: on this machine, no node asked.
fn operator_command(cli: &Cli, json: bool, command: &OperatorCommand) -> Result<(), Failure> {
    let given = cli.operator_key.clone();
    match command {
        OperatorCommand::Init { out, passphrase } => {
            let out = out
                .clone()
                .or(given)
                .or_else(operator::default_path)
                .ok_or_else(|| Failure::Refused("no home directory to keep the key in: give --out FILE".into()))?;
            let (file, key) = operator::init(&out, *passphrase).map_err(Failure::Refused)?;
            let public = key.public();
            let recovery = backmesh_crypt::wrap::Identity::of_operator(&key.seed()).recipient();
            if json {
                print_json(&serde_json::json!({ "file": file, "public": public, "recovery": recovery }));
            } else {
                out!(
                    "operator key written to {} (keep it on this machine only; back it up offline: it signs \
                     commands, and it is the key that reads every node's backups once that node is lost)",
                    file.display()
                );
                out!("public key: {public}");
                out!("recovery recipient: {recovery}");
                out!("tell every node, in node.toml (or --operator-key and --operator-recovery):");
                out!("  operator-key = \"{public}\"");
                out!("  operator-recovery = \"{recovery}\"");
            }
            Ok(())
        }
        OperatorCommand::Trust { .. } | OperatorCommand::Distrust { .. } | OperatorCommand::Recovery { .. } => {
            Err(Failure::Refused("`operator trust|distrust|recovery` asks a node".into()))
        }
        OperatorCommand::Show { recovery, secret } => {
            let file = operator::key_file(given.as_deref()).ok_or_else(|| {
                Failure::Refused(
                    "no operator key: give --operator-key FILE, or make one with `backmesh operator init`".into(),
                )
            })?;
            let key = operator::load(&file).map_err(Failure::Refused)?;
            let identity = backmesh_crypt::wrap::Identity::of_operator(&key.seed());
            if *secret {
                if json {
                    print_json(&serde_json::json!({ "file": file, "recovery_secret": identity.secret_text() }));
                } else {
                    out!("{}", identity.secret_text());
                }
            } else if json {
                print_json(
                    &serde_json::json!({ "file": file, "public": key.public(), "recovery": identity.recipient() }),
                );
            } else if *recovery {
                out!("{}", identity.recipient());
            } else {
                out!("{}", key.public());
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let json = cli.json;
    let result = Client::new(&cli).and_then(|c| match &cli.command {
        Command::Operator { command: OperatorCommand::Trust { key } } => operators(&c, json, key, true),
        Command::Operator { command: OperatorCommand::Distrust { key } } => operators(&c, json, key, false),
        Command::Operator { command: OperatorCommand::Recovery { command: RecoveryCommand::Add { recipient } } } => {
            recipients(&c, json, recipient, true)
        }
        Command::Operator { command: OperatorCommand::Recovery { command: RecoveryCommand::Remove { recipient } } } => {
            recipients(&c, json, recipient, false)
        }
        Command::Operator { command } => operator_command(&cli, json, command),
        Command::Status { workers } => status(&c, json, *workers),
        Command::Jobs => jobs(&c, json),
        Command::Revoke { node, peer } => revoke(&c, json, node, peer.as_deref(), false),
        Command::Retire { node, peer } => revoke(&c, json, node, peer.as_deref(), true),
        Command::Rebind { node, peer, former } => rebind(&c, json, node, peer, former.as_deref()),
        Command::Backups { node, path, all, hidden } => backups(&c, json, node, path, *all, *hidden),
        Command::Run { node, path, no_wait, timeout } => match run(&c, json, node, path, *no_wait, *timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Failed),
            Err(e) => Err(e),
        },
        Command::Log { node, path, limit, before } => {
            log(&c, json, node.as_deref(), path.as_deref(), *limit, before.as_deref())
        }
        Command::Restore { node, path, to, archive, on, overwrite, include, timeout } => {
            let (archive, on) = (archive.as_deref(), on.as_deref());
            match restore(&c, json, node, path, to, archive, on, *overwrite, include, *timeout) {
                Ok(true) => Ok(()),
                Ok(false) => Err(Failure::Failed),
                Err(e) => Err(e),
            }
        }
        Command::Fetch { node, path, archive, output, force, include } => {
            fetch::fetch(&cli, json, node, path, archive.as_deref(), output, *force, include)
        }
        Command::Ls { node, path, subpath, archive, long, recursive } => {
            browse::ls(&c, json, node, path, subpath.as_deref(), archive.as_deref(), *long, *recursive)
        }
        Command::Find { node, path, pattern } => browse::find(&c, json, node, path, pattern),
        Command::Diff { node, path, from, to } => browse::diff(&c, json, node, path, from, to),
        Command::Dump { node, path, file, archive, output, force } => {
            browse::dump(&c, json, node, path, file, archive.as_deref(), output.as_deref(), *force)
        }
        Command::Verify { node, path, timeout } => match verify(&c, json, node.as_deref(), path.as_deref(), *timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Failed),
            Err(e) => Err(e),
        },
        Command::Register { node, path, every, excludes, source, args, pre, post, timeout, notify, notify_cmd } => {
            // HOST:PORT of a node not in the mesh yet: it joins first, and
            // the command is signed for the name it says it has.
            let node = &match node.contains(':') {
                true => c.post::<_, backmesh_api::Joined>("/join", &backmesh_api::Join { address: node.clone() })?.name,
                false => node.clone(),
            };
            let body = backmesh_api::Register {
                node: node.clone(),
                path: path.clone(),
                every: *every,
                excludes: excludes.clone(),
                spec: backmesh_api::JobSpec {
                    source: source.clone(),
                    args: args.clone(),
                    pre: pre.clone(),
                    post: post.clone(),
                    timeout_s: *timeout,
                    notify: notify.clone(),
                    notify_cmd: notify_cmd.clone(),
                },
            };
            c.sign(Act::Register(body.clone()))?;
            write(
                &c,
                json,
                "POST",
                "/jobs",
                serde_json::to_value(&body).ok(),
                &format!(
                    "registered: {path} on {node}, every {every} min{}",
                    source.as_deref().map(|s| format!(", from {s}")).unwrap_or_default()
                ),
            )
        }
        Command::Unregister { node, path } => {
            c.sign(Act::Unregister(backmesh_api::JobKey { node: node.clone(), path: path.clone() })).and_then(|()| {
                write(
                    &c,
                    json,
                    "DELETE",
                    &format!("/jobs?node={}&path={}", enc(node), enc(path)),
                    None,
                    &format!("unregistered: {path} on {node} (its archives stay until retention removes them)"),
                )
            })
        }
        Command::Pause { node } => c.sign(Act::Pause { node: node.clone() }).and_then(|()| {
            write(
                &c,
                json,
                "POST",
                &format!("/nodes/{}/pause", enc(node)),
                None,
                &format!("paused: scheduled backups of {node}"),
            )
        }),
        Command::Resume { node } => c.sign(Act::Resume { node: node.clone() }).and_then(|()| {
            write(
                &c,
                json,
                "POST",
                &format!("/nodes/{}/resume", enc(node)),
                None,
                &format!("resumed: scheduled backups of {node}"),
            )
        }),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(m)) => {
            eprintln!("backmesh: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Failed) => ExitCode::from(1),
        Err(Failure::Unreachable(m)) => {
            eprintln!("backmesh: {m}");
            ExitCode::from(3)
        }
    }
}
