//! Running a node: checks that turn every start-up problem into a clear
//! message, then the actix system (membership actor, network loop, HTTP
//! API) until SIGINT or SIGTERM.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use actix::Actor;
use actix_web::{web, App, HttpServer};
use anyhow::{anyhow, bail, Context, Result};
use backmesh_api::Health;
use backmesh_core::authority::Authority;
use backmesh_core::disk::free_bytes;
use backmesh_core::jobs::actor::{JobsActor, JobsConfig};
use backmesh_core::jobs::plugin::Programs;
use backmesh_core::log::actor::LogActor;
use backmesh_core::net::actor::MembershipActor;
use backmesh_core::net::membership::{Membership, NodeInfo};
use backmesh_core::net::router::Router;
use backmesh_core::net::{client, swarm, swarm_key};
use backmesh_core::notify::NotifyActor;
use backmesh_core::replica::actor::{ReplicaActor, ReplicaConfig};
use backmesh_core::replica::restore::Protected;
use backmesh_core::store::{write_atomic, Store};
use backmesh_core::workers::Worker;
use backmesh_core::{jobs, log, protocols, replica};

use crate::config::NodeConfig;
use crate::http::ApiState;

fn check_data_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::File::create(&probe)
        .and_then(|mut f| f.write_all(b"ok"))
        .with_context(|| format!("the data directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn bind_api(cfg: &NodeConfig) -> Result<TcpListener> {
    TcpListener::bind(cfg.api).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow!("cannot serve the API on {}: the port is already in use", cfg.api),
        _ => anyhow!("cannot serve the API on {}: {e}", cfg.api),
    })
}

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("cannot read the TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        bail!("the TLS certificate file {} holds no certificate", cert.display());
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow!("cannot read the TLS key {}: {e}", key.display()))?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow!("the TLS certificate and key do not fit together: {e}"))
}

/// What no restore may write into, over or above: this node's data
/// directory (its store, index and identity key), config, keys and tokens.
fn protected(cfg: &NodeConfig) -> Protected {
    let mut p = vec![("the node's data directory".to_string(), cfg.data_dir.clone())];
    let mut add = |what: &str, path: &Option<std::path::PathBuf>| {
        if let Some(path) = path {
            p.push((what.to_string(), path.clone()));
        }
    };
    add("the node's config file", &cfg.config_file);
    add("the swarm key", &cfg.swarm_key);
    add("the API token file", &cfg.token_file);
    add("the TLS certificate", &cfg.tls.as_ref().map(|t| t.0.clone()));
    add("the TLS key", &cfg.tls.as_ref().map(|t| t.1.clone()));
    add("the offsite credentials", &cfg.offsite.as_ref().and_then(|o| o.credentials.clone()));
    Protected(p)
}

/// What `DATA_DIR/ready.json` says once the node serves: the addresses it
/// really bound (`--listen`/`--api` may give port 0) and the process that
/// bound them, so scripts and tests never guess a free port.
#[derive(serde::Serialize)]
struct Ready<'a> {
    pid: u32,
    peer_id: String,
    name: &'a str,
    listen: String,
    api: String,
}

pub fn run(mut cfg: NodeConfig) -> Result<()> {
    // actix-web and other users pull in both rustls providers: choose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    check_data_dir(&cfg.data_dir)?;
    let store = std::sync::Arc::new(Store::open(&cfg.data_dir).map_err(|e| anyhow!("{e}"))?);
    let keypair = store.identity().clone();
    let peer_id = keypair.public().to_peer_id();
    // Holders know this node's archives by this key from their first seal on.
    let bound = store.bind_origin(&cfg.name, &peer_id.to_string()).map_err(|e| anyhow!("{e}"))?;
    if bound != peer_id.to_string() {
        tracing::warn!(
            "this data directory knew node {} as {bound}, and its identity key is now {peer_id}: \
             archives sealed by the old key are not this node's here, and holders will refuse its new ones \
             (restore identity.key from a backup, or start it under a new name)",
            cfg.name
        );
    }
    let psk = match &cfg.swarm_key {
        Some(file) => Some(swarm_key::SwarmKeys::open(
            file,
            Some(cfg.data_dir.join("swarm-keys")),
            cfg.swarm_key_overlap,
            backmesh_core::clock::now_ms(),
        )?),
        None => None,
    };
    let api_listener = bind_api(&cfg)?;
    cfg.api = api_listener.local_addr().context("the API listener has no address")?;
    // The mesh port, checked before anything starts (the swarm checks again).
    // Port 0 becomes the port the kernel chose here, held until the swarm binds it.
    let probe = std::net::TcpListener::bind(cfg.listen).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            anyhow!("cannot listen on {}: the port is already in use (another backmesh-node?)", cfg.listen)
        }
        _ => anyhow!("cannot listen on {}: {e}", cfg.listen),
    })?;
    cfg.listen = probe.local_addr().context("the mesh listener has no address")?;
    let tls = cfg.tls.as_ref().map(|(c, k)| tls_config(c, k)).transpose()?;
    let authority = Authority::new(&cfg.operator_keys).map_err(|e| anyhow!("operator-key: {e}"))?;
    let authority = std::sync::Arc::new(
        authority.with_recovery(&cfg.operator_recovery).map_err(|e| anyhow!("operator-recovery: {e}"))?,
    );
    if !authority.has_operators() {
        tracing::warn!(
            "no operator key is trusted (--operator-key): this node acts only for its own API token, on its own \
             jobs, and no operator can run, restore or change anything here from another node"
        );
    }
    // Sealed backups: the data key made once (0600), wrapped to this node
    // and the operator's recovery recipients at each backup.
    let (seal, encrypt_note) = decide_encrypt(&cfg, &store, &authority)?;
    let seals = if seal {
        let key = store.make_data_key().map_err(|e| anyhow!("{e}"))?.clone();
        let own = backmesh_core::store::node_unwrapper(&keypair)
            .ok_or_else(|| anyhow!("this node's identity key is not Ed25519: it cannot unwrap a data key"))?;
        if authority.recovery().is_empty() {
            tracing::warn!(
                "encrypt is on but no operator recovery recipient is known (operator-recovery in node.toml): \
                 backups fail until one is, rather than make archives only this node could open"
            );
        }
        tracing::info!("backups are sealed under data key {} (DATA_DIR/data.key)", key.id());
        Some(std::sync::Arc::new(backmesh_core::jobs::seals::Seals::new(
            key,
            cfg.name.clone(),
            peer_id.to_string(),
            own.recipient(),
            authority.clone(),
        )))
    } else {
        if let Some(note) = &encrypt_note {
            tracing::warn!("{note}");
        }
        None
    };
    // Offsite settings and credentials, checked before anything starts.
    let offsite = match &cfg.offsite {
        None => None,
        Some(o) => {
            use backmesh_core::offsite::{sync::Offsite, Bucket, Secret};
            let secret = Secret::find(o.credentials.as_deref()).map_err(|e| anyhow!("--offsite: {e}"))?;
            let mut bucket = Bucket::new(o.target.clone(), &secret, o.rate).map_err(|e| anyhow!("--offsite: {e}"))?;
            // With Object Lock on in the bucket, objects are locked past the grace period.
            bucket.set_grace(cfg.keep.grace);
            Some(std::sync::Arc::new(Offsite::new(bucket, peer_id.to_string())))
        }
    };

    let system = actix::System::new();
    system.block_on(async move {
        let me = NodeInfo {
            name: cfg.name.clone(),
            site: cfg.site.clone(),
            free_bytes: free_bytes(&cfg.data_dir),
            address: cfg.listen.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            swarm_key: psk.as_ref().map(|k| k.current()),
            recipient: backmesh_core::store::node_unwrapper(&keypair).map(|i| i.recipient()),
        };
        let down_after_ms = cfg.down_after.as_millis() as i64;
        let membership = Membership::new(peer_id.to_string(), me.clone(), down_after_ms);
        let tick = Duration::from_millis((down_after_ms as u64 / 4).clamp(200, 1000));
        let ping_every = Duration::from_millis((down_after_ms as u64 / 3).clamp(500, 15_000));
        drop(probe);
        let (net, inbound, event_loop) = swarm::new(swarm::NetConfig {
            keypair,
            listen: cfg.listen,
            bootstrap: cfg.bootstrap.clone(),
            swarm_key: psk.clone(),
            mdns: cfg.mdns,
            ping_every,
            hello_every: ping_every * 2,
            info: me,
            connections_per_peer: swarm::CONNECTIONS_PER_PEER,
            outbound_per_peer: swarm::OUTBOUND_PER_PEER,
            protocol: protocols::MESH_PROTOCOL,
            protocols: protocols::all(),
            topics: protocols::topics(),
            max_gossip: protocols::MAX_GOSSIP,
            partition: std::env::var_os("BACKMESH_TEST_PARTITION").map(std::path::PathBuf::from),
            authority: authority.clone(),
            revocations: Some(cfg.data_dir.join("revoked")),
        })?;
        let actor =
            MembershipActor::new(membership, cfg.data_dir.clone(), tick, net.clone()).with_swarm_keys(psk).start();
        let workers = backmesh_core::workers::Workers::default();
        let log = LogActor::load(
            store.identity().clone(),
            cfg.name.clone(),
            store.kv(),
            &cfg.data_dir.join("history"),
            Duration::from_secs(10),
            net.clone(),
        )
        .map_err(|e| anyhow!("cannot load the execution log: {e}"))?
        .reporting_to(actor.clone().recipient())
        .with_workers(
            workers.register("anti-entropy", "pulls the mesh state from peers"),
            workers.register("backfill", "fetches the history of the series this node keeps"),
        )
        .start();
        let offsite = offsite.map(|offsite| {
            // Said at start, in the log: the node runs on whatever the answer.
            let probe = offsite.clone();
            actix::spawn(async move {
                let shown = probe.bucket.target().shown();
                match tokio::task::spawn_blocking(move || probe.bucket.check().and_then(|()| probe.bucket.lock())).await
                {
                    Ok(Ok(None)) => tracing::info!("offsite: {shown} is reachable; copies go there"),
                    Ok(Ok(Some(grace))) => tracing::info!(
                        "offsite: {shown} is reachable, with Object Lock on: every copy that goes there is locked \
                         (COMPLIANCE) for {} hours, so that the bucket's keys cannot delete it",
                        backmesh_core::offsite::locked::lock_period(grace).as_secs() / 3600
                    ),
                    Ok(Err(e)) => tracing::error!("offsite: {e}; backups go on, and the bucket is tried again"),
                    Err(e) => tracing::error!("offsite: the check crashed: {e}"),
                }
            });
            let actor = backmesh_core::offsite::actor::OffsiteActor::new(
                offsite.clone(),
                store.clone(),
                cfg.keep,
                cfg.repair_after,
                std::sync::Arc::new(backmesh_core::clock::SystemClock),
            )
            .with_worker(workers.register("offsite", "keeps this node's elected series in the bucket"))
            .start();
            (actor, offsite)
        });
        let replica = ReplicaActor::new(
            cfg.name.clone(),
            store.clone(),
            log.clone(),
            actor.clone(),
            net.clone(),
            ReplicaConfig {
                replicas: cfg.replicas,
                keep: cfg.keep,
                repair_after: cfg.repair_after,
                sync_every: Duration::from_secs(2),
                quota: cfg.quota,
                protected: protected(&cfg),
                burst: cfg.burst,
            },
        );
        let replica = match &offsite {
            Some((actor, o)) => replica.with_offsite(actor.clone(), o.clone()),
            None => replica,
        }
        .with_worker(workers.register("copies", "pushes archives to their elected holders, repairs lost copies"))
        .with_authority(authority.clone())
        .start();
        let programs = Programs { allowed: cfg.allow_programs };
        let jobs = JobsActor::new(
            cfg.name.clone(),
            store.clone(),
            log.clone(),
            replica.clone().recipient(),
            JobsConfig {
                keep: cfg.keep,
                max_parallel: 2,
                queue_bound: cfg.queue_limit,
                programs: programs.clone(),
                seals: seals.clone(),
            },
        )
        .with_worker(workers.register("backups", "runs this node's backups from its queue"))
        .start();
        actix::spawn(watch_index(
            store.clone(),
            cfg.data_dir.clone(),
            workers.register("index", "probes the index database"),
        ));
        let _notify = NotifyActor::new(cfg.name.clone(), log.clone(), actor.clone(), programs).start();
        // The network (noise, yamux, gossip signatures, member transfers)
        // runs on a thread of its own: on the actors' thread, its bursts of
        // crypto held up every actor and API answer behind them.
        std::thread::Builder::new()
            .name("mesh-net".into())
            .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(event_loop.run()),
                Err(e) => tracing::error!("cannot start the mesh network's runtime: {e}"),
            })
            .context("cannot start the mesh network's thread")?;
        // Each area's protocols, to the actor that answers them; what makes
        // this node act for another checks the operator's order.
        let me = cfg.name.clone();
        let misdeeds = actor.clone().recipient();
        let router = Router::new(actor.clone())
            .on_retired(log.clone().recipient())
            .on_retired(replica.clone().recipient())
            .on_rebound(replica.clone().recipient())
            .hear(log::proto::LOG_TOPIC, log::actor::serve::hear(log.clone()))
            .accept(&log::proto::STATE, log::actor::serve::serve_state(log.clone()))
            .accept(&log::proto::HISTORY, log::actor::serve::serve_history(log.clone()))
            .accept(
                &jobs::proto::JOBS,
                jobs::actor::serve(jobs.clone(), me.clone(), authority.clone(), misdeeds.clone()),
            )
            .accept(&replica::proto::XFER, replica::actor::serve_xfer(replica.clone()))
            .accept(
                &replica::proto::REPLICA,
                replica::actor::serve_replica(replica.clone(), me, authority.clone(), misdeeds),
            );
        actix::spawn(router.run(inbound));
        let mut listen = net.listen_addrs().await?;
        if listen.is_empty() {
            listen.push(client::multiaddr_of(cfg.listen).to_string());
        }
        let federation = crate::federation::Federation::default();
        crate::federation::start_federation(cfg.federate.clone(), federation.clone());
        let state = ApiState {
            membership: actor,
            log,
            jobs,
            replica,
            store: store.clone(),
            net: net.clone(),
            token: cfg.token.clone(),
            authority,
            viewer_token: cfg.viewer_token.clone(),
            site_tokens: cfg.site_tokens.clone(),
            site_browse: cfg.site_browse.clone(),
            federate: cfg.federate.clone(),
            federation: federation.clone(),
            replicas: cfg.replicas,
            encrypt_note: encrypt_note.clone(),
            workers: workers.clone(),
            offsite: offsite.clone(),
            health: Health {
                status: "ok".into(),
                name: cfg.name.clone(),
                peer_id: peer_id.to_string(),
                version: env!("CARGO_PKG_VERSION").into(),
                listen: listen.clone(),
            },
        };
        let data = web::Data::new(state);
        let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(crate::routes::routes))
            .workers(2)
            .disable_signals()
            .shutdown_timeout(5);
        let (server, scheme) = match tls {
            Some(tls) => (server.listen_rustls_0_23(api_listener, tls)?, "https"),
            None => (server.listen(api_listener)?, "http"),
        };
        let server = server.run();
        let handle = server.handle();
        actix::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!("the API server stopped: {e}");
            }
        });
        let ready = Ready {
            pid: std::process::id(),
            peer_id: peer_id.to_string(),
            name: &cfg.name,
            listen: cfg.listen.to_string(),
            api: format!("{scheme}://{}", cfg.api),
        };
        let ready_file = cfg.data_dir.join("ready.json");
        let body = serde_json::to_vec_pretty(&ready).context("encoding ready.json")?;
        write_atomic(&ready_file, &body).with_context(|| format!("cannot write {}", ready_file.display()))?;
        println!(
            "backmesh-node {} ready: peer id {peer_id}, mesh {}, API {scheme}://{}",
            cfg.name, cfg.listen, cfg.api
        );
        let _ = std::io::stdout().flush();
        tracing::info!(
            "data dir {}, site `{}`, {} replicas, keeping {} archives per path{}, {}; another node's archives may \
             take {} (--quota)",
            cfg.data_dir.display(),
            cfg.site,
            cfg.replicas,
            cfg.keep.keep,
            cfg.keep.within.map_or(String::new(), |d| format!(
                " and every one stored in the last {}",
                crate::config::human_duration(d)
            )),
            cfg.keep.grace.map_or("deleting what falls out at once (--grace 0)".to_string(), |d| format!(
                "hiding what falls out for {} (--grace)",
                crate::config::human_duration(d)
            )),
            cfg.quota
        );
        let signal = shutdown_signal().await;
        tracing::info!("{signal}: shutting down");
        handle.stop(true).await;
        net.shutdown().await;
        store.flush().map_err(|e| anyhow!("{e}"))?;
        // Its addresses are no longer served (after a crash the pid in it tells).
        let _ = std::fs::remove_file(&ready_file);
        tracing::info!("stopped cleanly");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

/// Probes the index every few seconds, and ends the process when it has
/// failed for good (docs/operations.md, "Disk full"): its
/// service manager starts it again, and a fresh open recovers it.
async fn watch_index(store: std::sync::Arc<Store>, data_dir: std::path::PathBuf, worker: Worker) {
    use backmesh_core::store::health::{IndexWatch, Verdict, EXIT_INDEX_BROKEN, PROBE_EVERY};
    let mut watch = IndexWatch::default();
    let mut failing = false;
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        // A flush waits for the disk: off the actors' thread.
        let s = store.clone();
        let probe =
            tokio::task::spawn_blocking(move || s.probe_index(backmesh_core::clock::now_ms())).await.unwrap_or_else(
                |e| Err(backmesh_core::store::StoreError::Index { reason: format!("the probe crashed: {e}") }),
            );
        match watch.observe(probe, free_bytes(&data_dir), std::time::Instant::now()) {
            Verdict::Healthy => {
                worker.idle(backmesh_core::clock::now_ms());
                if std::mem::take(&mut failing) {
                    tracing::info!("the index takes writes again");
                }
            }
            Verdict::Failing(why) => {
                worker.failed(format!("the index refuses writes: {why}"), backmesh_core::clock::now_ms());
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!("the index refuses writes: {why}");
                }
            }
            Verdict::Broken(why) => {
                tracing::error!(
                    "the index database failed for good: {why}; it keeps its first I/O error until it is \
                     opened again: exiting with code {EXIT_INDEX_BROKEN} so that the service manager starts \
                     this node again"
                );
                std::process::exit(EXIT_INDEX_BROKEN);
            }
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "interrupt"
        }
    }
}

/// Whether this node seals its backups, and what `status` says when
/// `encrypt = auto` leaves them plain.
fn decide_encrypt(cfg: &NodeConfig, store: &Store, authority: &Authority) -> Result<(bool, Option<String>)> {
    use crate::config::Encrypt;
    Ok(match cfg.encrypt {
        Encrypt::On => (true, None),
        Encrypt::Off => (false, None),
        Encrypt::Auto if store.data_key().is_some() => (true, None),
        Encrypt::Auto => {
            let own = store.list_all().map_err(|e| anyhow!("{e}"))?.iter().any(|a| a.node == cfg.name);
            if own {
                let note = "backups are not encrypted: this node made plain archives before encryption existed \
                            (encrypt = auto leaves them so); set encrypt = \"on\" to seal from now on";
                (false, Some(note.to_string()))
            } else if authority.recovery().is_empty() {
                let note = "backups are not encrypted: no operator recovery recipient is known (add \
                            operator-recovery = \"age1…\" to node.toml: `backmesh operator show --recovery`), or \
                            set encrypt = \"off\" to say so";
                (false, Some(note.to_string()))
            } else {
                (true, None)
            }
        }
    })
}
