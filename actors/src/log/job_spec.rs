//! What a job is, as the log records it: its [`JobSpec`] (source, hooks,
//! timeout, notifications) and
//! what a plugin reported of a run ([`PluginReport`]). Running them is
//! `crate::jobs::plugin`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default limit on a plugin, command or hook, in seconds.
pub const DEFAULT_TIMEOUT_S: u64 = 3600;

/// How a job gets its data and what runs around it; part of `registered`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// `dir` (when `None`), `command`, or a plugin name or absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Arguments of the source (`command`: the command line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Shell command run before the backup; its failure fails the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<String>,
    /// Shell command run after the backup, told the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
    /// Seconds a source, command or hook may run before it is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Webhook URLs told of failure, staleness and recovery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    /// Shell command told of failure, staleness and recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_cmd: Option<String>,
    /// What versions before protocol 11 kept here: the HMAC of the
    /// registering node's token over the job. Read, never written nor
    /// trusted now (a node adopts its jobs that carry one: see
    /// `log::actor`), and kept so that such a record still reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<serde_bytes::ByteBuf>,
}

impl JobSpec {
    pub fn is_default(&self) -> bool {
        *self == JobSpec::default()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S).max(1))
    }

    /// The programs this job would run on its node, in words: empty for a
    /// directory job without hooks or a notification command.
    pub fn programs(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        match self.source() {
            Source::Dir => {}
            Source::Command => out.push("a command source"),
            Source::Plugin(_) => out.push("a plugin"),
        }
        if self.pre.is_some() {
            out.push("a pre hook");
        }
        if self.post.is_some() {
            out.push("a post hook");
        }
        if self.notify_cmd.is_some() {
            out.push("a notification command");
        }
        out
    }

    /// The source's name for people: `dir`, `command` or the plugin's.
    pub fn source_name(&self) -> &str {
        self.source.as_deref().unwrap_or("dir")
    }

    /// Where the job's data comes from.
    pub fn source(&self) -> Source<'_> {
        match self.source_name() {
            "dir" => Source::Dir,
            "command" => Source::Command,
            plugin => Source::Plugin(plugin),
        }
    }
}

/// Where a job's data comes from (`--source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// The job's path itself, a directory (the default).
    Dir,
    /// The stdout of the job's `--arg` command line.
    Command,
    /// A plugin: a name in DATA_DIR/plugins, or an absolute path.
    Plugin(&'a str),
}

/// What a plugin, command or hook had to say, kept in the run's log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, serde_json::Value>,
    /// The plugin's `log` and `warning` lines (the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
    /// Hook failures that did not fail the run (post hooks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
    /// `false` when the plugin asked for no archive (e.g. a mirror job).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub archive: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl PluginReport {
    pub fn is_empty(&self) -> bool {
        *self == PluginReport { archive: true, ..Default::default() }
    }
}
