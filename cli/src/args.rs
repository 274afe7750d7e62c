//! The command line: global options and every command, with their help.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "backmesh", version, about = "The backmesh client: ask any node of the mesh")]
pub(crate) struct Cli {
    /// Node API URL (http:// or https://); give it before the command.
    #[arg(
        long = "node",
        id = "node_url",
        value_name = "URL",
        env = "BACKMESH_NODE",
        default_value = "http://127.0.0.1:7401"
    )]
    pub(crate) node: String,
    /// API token of the node. Prefer BACKMESH_TOKEN or --token-file: a
    /// token on the command line is shown to every user by `ps`.
    #[arg(long, env = "BACKMESH_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// Read the node's API token from FILE (its first line).
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "token")]
    pub(crate) token_file: Option<PathBuf>,
    /// The operator's secret key (from `backmesh operator init`): commands
    /// that concern another node than the one asked, or change jobs, are
    /// signed with it [default: ~/.config/backmesh/operator.key, if it exists].
    #[arg(long, env = "BACKMESH_OPERATOR_KEY", value_name = "FILE", global = true)]
    pub(crate) operator_key: Option<PathBuf>,
    /// Trust this CA certificate (PEM) for an https:// node.
    #[arg(long, env = "BACKMESH_CA", value_name = "FILE", global = true)]
    pub(crate) ca: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// The operator key: made once on the operator's machine, its public half given to every node.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// The nodes of the mesh (name, peer id, address, up/down, free space, site) and job health.
    Status {
        /// Also the answering node's background workers: copies, offsite,
        /// anti-entropy, backfill, backups, index; busy, throttled, idle or
        /// failing, with their last error.
        #[arg(long)]
        workers: bool,
    },
    /// Back up PATH on NODE every MINUTES.
    Register {
        /// The node's name (see `backmesh status`), or HOST:PORT of a node to bring into the mesh.
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        /// Absolute path of a directory on that node (with --source: an absolute name for the job).
        path: String,
        /// Minutes between backups.
        #[arg(long, value_name = "MINUTES")]
        every: u64,
        /// Leave out matching paths (`*.log`, `cache/**`); repeatable.
        #[arg(long = "exclude", value_name = "GLOB")]
        excludes: Vec<String>,
        /// Where the data comes from: `dir` (PATH itself, the default), `command` (the stdout of the
        /// --arg command line, stored as a file named after PATH's last component), or a plugin:
        /// a name in DATA_DIR/plugins on NODE, or an absolute path (docs/plugins.md).
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
        /// An argument of the source; repeatable, in order (`--arg pg_dump --arg mydb`).
        #[arg(long = "arg", value_name = "VALUE", allow_hyphen_values = true)]
        args: Vec<String>,
        /// Shell command run on NODE before each backup; if it fails, the run fails with its stderr.
        #[arg(long, value_name = "CMD")]
        pre: Option<String>,
        /// Shell command run on NODE after each backup, told the result ($BACKMESH_RESULT…).
        #[arg(long, value_name = "CMD")]
        post: Option<String>,
        /// Seconds the source, command or a hook may run before it is killed [default: 3600].
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Webhook URL told (JSON POST) when the job fails, goes stale or recovers; repeatable.
        #[arg(long, value_name = "URL")]
        notify: Vec<String>,
        /// Shell command told when the job fails, goes stale or recovers (JSON in $BACKMESH_NOTIFICATION).
        #[arg(long, value_name = "CMD")]
        notify_cmd: Option<String>,
    },
    /// Stop backing up PATH on NODE (its archives stay until retention removes them).
    Unregister {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
    },
    /// Stop NODE's scheduled backups.
    Pause {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
    },
    /// Start NODE's scheduled backups again.
    Resume {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
    },
    /// Back up PATH on NODE now; waits and prints the result.
    Run {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
        /// Return once the run is queued.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the run goes on).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// The retained archives of PATH on NODE (id, created, size, files, holders).
    Backups {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
        /// Also every execution of the job from the log.
        #[arg(long)]
        all: bool,
        /// Also the archives out of retention that nodes keep hidden for
        /// the grace period (--grace on the nodes, 7 days by default).
        #[arg(long)]
        hidden: bool,
    },
    /// Restore the archive of PATH on NODE into DIR (on NODE, or on --on NODE2); waits for the result.
    Restore {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
        /// Absolute directory to restore into, on the node that restores; new or empty unless --overwrite.
        #[arg(long, value_name = "DIR")]
        to: String,
        /// Archive id (see `backmesh backups`); the newest by default.
        #[arg(long, value_name = "ID")]
        archive: Option<String>,
        /// Restore on this node instead (for instance when NODE is gone).
        #[arg(long, value_name = "NODE2")]
        on: Option<String>,
        /// Replace what DIR holds (the old tree goes only once the new one is complete).
        #[arg(long)]
        overwrite: bool,
        /// Only the files matching GLOB (repeatable), with the directories above them: a GLOB
        /// without `/` matches a name at any depth (`*.conf`), one with `/` the path from the
        /// archive's root (`etc/app.conf`, `var/log/**`); a directory brings all it holds.
        #[arg(long = "include", value_name = "GLOB")]
        include: Vec<String>,
        /// Give up waiting after this many seconds (the restore goes on).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Download the archive of PATH on NODE to this machine as a .tgz (`tar -xzf` reads it).
    Fetch {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
        /// Archive id; the newest by default.
        #[arg(long, value_name = "ID")]
        archive: Option<String>,
        /// Where to write the .tgz.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        /// Only the files matching GLOB (repeatable), with the directories above them, as a
        /// .tgz of their own (patterns as for `restore --include`).
        #[arg(long = "include", value_name = "GLOB")]
        include: Vec<String>,
    },
    /// The files of an archive of PATH on NODE: a directory's entries (the archive's root by
    /// default), the newest archive by default.
    Ls {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
        /// A directory (or a file) inside the archive, relative to its root.
        #[arg(value_name = "SUBPATH")]
        subpath: Option<String>,
        /// Archive id (see `backmesh backups`); the newest by default.
        #[arg(long, value_name = "ID")]
        archive: Option<String>,
        /// Mode, owner, size, time and link target, as `tar -tv` shows them (times in UTC).
        #[arg(short = 'l', long)]
        long: bool,
        /// Everything beneath SUBPATH, not only its entries.
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// Which archives of PATH on NODE (retained, and hidden ones in their grace period) hold
    /// files matching GLOB, with each version's size and time.
    Find {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
        /// A name (`*.conf`: at any depth) or a path from the archive's root (`etc/*.conf`).
        #[arg(value_name = "GLOB")]
        pattern: String,
    },
    /// What changed in PATH on NODE from archive FROM to archive TO: added (+), removed (-),
    /// changed content (M) and changed mode, owner or time only (U).
    Diff {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
        #[arg(value_name = "FROM")]
        from: String,
        #[arg(value_name = "TO")]
        to: String,
    },
    /// One file of an archive of PATH on NODE, to stdout (or --output), read from the members
    /// that hold it alone.
    Dump {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        path: String,
        /// The file, relative to the archive's root.
        #[arg(value_name = "FILE")]
        file: String,
        /// Archive id; the newest by default.
        #[arg(long, value_name = "ID")]
        archive: Option<String>,
        /// Write it to this file (staged, synced, then renamed) instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: Option<PathBuf>,
        /// Replace OUT if it exists.
        #[arg(long, requires = "output")]
        force: bool,
    },
    /// Re-hash the members every holder keeps (of PATH on NODE, or everything); damage is repaired from another holder.
    Verify {
        #[arg(id = "target", value_name = "NODE", requires = "path")]
        node: Option<String>,
        path: Option<String>,
        /// Give up waiting after this many seconds (verification goes on).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Every job: node, path, every, paused, state, last success.
    Jobs,
    /// Revoke NODE's identity mesh-wide (a stolen or retired server): every
    /// node refuses its key from then on. Signed with the operator key.
    Revoke {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        /// The peer id to revoke [default: the one NODE has in `status`].
        #[arg(long, value_name = "PEER")]
        peer: Option<String>,
    },
    /// Retire NODE (a server given up): revoked as by `revoke`, its jobs
    /// leave the views, and its series are collected by their holders once
    /// the grace period has passed. Signed with the operator key.
    Retire {
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        /// The peer id to retire [default: the one NODE has in `status`].
        #[arg(long, value_name = "PEER")]
        peer: Option<String>,
    },
    /// Bind NODE's name to a new identity PEER (a rebuilt server, started
    /// under the old name with a new key: its peer id is in its start-up
    /// line and in `status`). Every node takes PEER's archives as NODE's
    /// from then on and refuses the old identity; archives the old one
    /// sealed before stay NODE's and restorable. Signed with the operator key.
    Rebind {
        /// The node's name, as the mesh knew it before the server was rebuilt.
        #[arg(id = "target", value_name = "NODE")]
        node: String,
        /// The new identity (peer id, 12D3KooW…).
        #[arg(value_name = "PEER")]
        peer: String,
        /// The identity NODE had [default: the one the answering node knows].
        #[arg(long, value_name = "PEER")]
        former: Option<String>,
    },
    /// The execution log, newest last.
    Log {
        /// Only entries about this node (a name).
        #[arg(long = "node", id = "filter_node", value_name = "NAME")]
        node: Option<String>,
        /// Only entries about this path.
        #[arg(long)]
        path: Option<String>,
        /// At most this many entries (the newest); pages through the
        /// nodes that keep the history as far back as needed.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only entries older than this cursor (printed when more remain).
        #[arg(long, value_name = "CURSOR")]
        before: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum RecoveryCommand {
    /// Wrap every node's data key to RECIPIENT too (an offline key of the
    /// operator's, say, from `age-keygen`).
    Add {
        #[arg(value_name = "RECIPIENT")]
        recipient: String,
    },
    /// Wrap data keys to RECIPIENT no longer (what was wrapped to it stays
    /// so: rotate the data keys if its secret was stolen).
    Remove {
        #[arg(value_name = "RECIPIENT")]
        recipient: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum OperatorCommand {
    /// Make a new operator key pair on this machine (never on a node) and
    /// print its public half, which every node is then told
    /// (`operator-key = "bmop-…"` in node.toml, or --operator-key).
    Init {
        /// Where to write the secret key (mode 0600; an existing file is never replaced)
        /// [default: --operator-key, else ~/.config/backmesh/operator.key].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Seal the key under a passphrase (asked twice on the terminal, or
        /// BACKMESH_OPERATOR_PASSPHRASE); every signed command then asks it.
        #[arg(long)]
        passphrase: bool,
    },
    /// Print the public half of the operator key (--operator-key, or the default file).
    Show {
        /// Print the recovery recipient (age1…) instead: give it to every node
        /// (`operator-recovery = "age1…"` in node.toml), which wraps its data key to it.
        #[arg(long)]
        recovery: bool,
        /// With --recovery: print the recovery identity's secret
        /// (AGE-SECRET-KEY-1…, for `age -d -i`) instead. Keep it as you keep the key.
        #[arg(long, requires = "recovery")]
        secret: bool,
    },
    /// Have every node wrap its data key to recovery recipient RECIPIENT
    /// (age1…) too, or no longer: signed with your operator key, passed
    /// from node to node.
    Recovery {
        #[command(subcommand)]
        command: RecoveryCommand,
    },
    /// Trust operator key KEY (bmop-…) on every node too: signed with your
    /// operator key, passed from node to node.
    Trust {
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Trust operator key KEY no longer, on every node.
    Distrust {
        #[arg(value_name = "KEY")]
        key: String,
    },
}
