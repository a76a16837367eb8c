//! The server's life cycle: bind the Kafka and controller listeners, open the broker, serve
//! connections and the metadata quorum, heartbeat to the active controller (and, on it, fence
//! brokers that stopped), run the timers (group sessions and rebalances, transaction timeouts,
//! internal-topic cleanup) and log maintenance, and shut it all down in order. A process (the `sluice`
//! binary) starts one; a test may start several in one process, each on its own port and
//! data directory, on the caller's tokio runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::group::coordinator::TICK_INTERVAL;
use crate::metadata::Endpoint;
use crate::network;
use crate::quorum::{ControllerRequest, ControllerResponse};
use kafka_protocol::error::ResponseError;

/// How often transaction timeouts (and markers that failed) are looked at.
const TRANSACTION_TICK: Duration = Duration::from_secs(1);
/// How often every log gets its upkeep (`flush.ms` flushes, retention, checkpoints).
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address} (is another broker running there?): {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "listening on {0} needs advertised.listeners (--advertise host:port): the address clients should connect to"
    )]
    WildcardAdvertised(SocketAddr),
    #[error(transparent)]
    Broker(#[from] crate::error::Error),
    #[error("opening the broker failed: {0}")]
    Open(String),
}

/// How often the active controller looks for brokers whose session expired.
const FENCE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A running broker: its listener, its timers and its maintenance.
pub struct Server {
    broker: Arc<Broker>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Set when the node must stop (the controller refused it: another live node has its id).
    fatal: watch::Receiver<Option<String>>,
}

impl Server {
    /// Binds `listeners`, opens the broker in `log.dirs` and starts serving. Without
    /// `advertised.listeners`, clients are told the address actually bound (port 0 picks a
    /// free one). Call from within a multi-threaded tokio runtime.
    pub async fn start(mut config: BrokerConfig) -> Result<Server, ServerError> {
        let mut listeners = Vec::new();
        for broker_listener in config.broker_listeners() {
            let address = broker_listener.address;
            let listener = TcpListener::bind(address).await.map_err(|source| ServerError::Bind { address, source })?;
            let local_addr = listener.local_addr().map_err(|source| ServerError::Bind { address, source })?;
            if config.advertised(&broker_listener.name).is_none() {
                // Clients cannot connect to a wildcard address, as Kafka's own check says.
                if local_addr.ip().is_unspecified() {
                    return Err(ServerError::WildcardAdvertised(local_addr));
                }
                let (host, port) = (local_addr.ip().to_string(), local_addr.port());
                config.advertised_listeners.push(Endpoint { listener: broker_listener.name.clone(), host, port });
            }
            listeners.push((Arc::<str>::from(broker_listener.name), listener, local_addr));
        }
        let local_addr = listeners[0].2;
        let controller_listener = match config.cluster.controller_listener {
            Some(address) => {
                Some(TcpListener::bind(address).await.map_err(|source| ServerError::Bind { address, source })?)
            }
            None => None,
        };
        let broker = tokio::task::spawn_blocking(move || Broker::open(config))
            .await
            .map_err(|join| ServerError::Open(join.to_string()))??;
        let (shutdown, stop) = watch::channel(false);
        let (fatal_tx, fatal) = watch::channel(None);
        let mut tasks = vec![
            tokio::spawn(heartbeats(broker.clone(), fatal_tx, stop.clone())),
            tokio::spawn(fence_expired_brokers(broker.clone(), stop.clone())),
            tokio::spawn(group_timers(broker.clone(), stop.clone())),
            tokio::spawn(transaction_timers(broker.clone(), stop.clone())),
            tokio::spawn(maintenance(broker.clone(), stop.clone())),
            tokio::spawn(log_cleaner(broker.clone(), stop.clone())),
            tokio::spawn(crate::replica_fetcher::run(broker.clone(), stop.clone())),
            tokio::spawn(isr_changes(broker.clone(), stop.clone())),
        ];
        if let Some(listener) = controller_listener {
            let quorum = broker.controller.quorum().clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { quorum.serve(listener, stop).await }));
        }
        // Clients are served once this broker's metadata has caught up with its registration:
        // a restarted broker would otherwise answer from the image it had when it stopped.
        wait_registered(&broker).await;
        for (name, listener, _) in listeners {
            tasks.push(tokio::spawn(network::serve(broker.clone(), listener, name, stop.clone())));
        }
        tracing::info!(%local_addr, "broker ready");
        Ok(Server { broker, local_addr, shutdown, tasks, fatal })
    }

    /// Resolves with a sentence when the node must stop on its own.
    pub async fn fatal(&self) -> String {
        let mut fatal = self.fatal.clone();
        let message = match fatal.wait_for(Option::is_some).await {
            Ok(message) => message.clone().unwrap_or_default(),
            Err(_) => return std::future::pending().await,
        };
        message
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The address the Kafka listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and serving connections (each between two of its requests) and stops
    /// the timers and maintenance; the broker stays open. What runs on top of it (jobs)
    /// can then make its last commits with no client or timer changing anything under it.
    pub async fn stop_serving(&mut self) {
        self.shutdown.send(true).ok();
        for task in self.tasks.drain(..) {
            task.await.ok();
        }
    }

    /// [`Self::stop_serving`] if it has not been, then flushes every log and marks it clean.
    /// First, if other brokers are alive, the controller moves this broker's leaderships to
    /// them (a controlled shutdown), so clients move on at once instead of after a session.
    pub async fn shutdown(mut self) {
        controlled_shutdown(&self.broker).await;
        self.stop_serving().await;
        let broker = self.broker;
        if tokio::task::spawn_blocking(move || broker.shutdown()).await.is_err() {
            tracing::error!("the broker's shutdown panicked");
        }
    }
}

/// Waits (a bounded time) until the controller has registered this broker: at once for a
/// quorum of one; a cluster still forming goes on without it and registers when it can.
async fn wait_registered(broker: &Arc<Broker>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !broker.is_registered() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !broker.is_registered() {
        tracing::warn!("not registered with the controller quorum yet; serving meanwhile");
    }
}

/// Tells the active controller this broker is alive every `broker.heartbeat.interval.ms`.
async fn heartbeats(broker: Arc<Broker>, fatal: watch::Sender<Option<String>>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_millis(broker.config.cluster.broker_heartbeat_interval_ms);
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let quorum = broker.controller.quorum().clone();
    // A refusal for this node's id is fatal only once it outlasts any session an earlier
    // process of this node could still hold: then another live node has the id.
    let patience = Duration::from_millis(broker.config.cluster.broker_session_timeout_ms) * 2;
    let mut refused_since = None;
    let mut cut_off = false;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                let request = ControllerRequest::Heartbeat(broker.heartbeat(false));
                // One attempt per beat: a late answer is worth less than the next beat.
                let answer = tokio::time::timeout(period * 2, quorum.call_controller(request)).await;
                match answer {
                    Ok(Ok(ControllerResponse::Alive)) => {
                        refused_since = None;
                        if broker.cut_off_from_quorum() {
                            tracing::info!("the controller answers again: leading and serving metadata again");
                        }
                        broker.heard_from_controller();
                        if let Err(message) = broker.check_cluster_id() {
                            tracing::error!(%message, "this node belongs to another cluster");
                            fatal.send_replace(Some(message));
                            return;
                        }
                    }
                    Ok(Ok(ControllerResponse::Refused(code, message))) if code == ResponseError::DuplicateBrokerRegistration.code() => {
                        let since = *refused_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= patience {
                            tracing::error!(%message, "the controller refused this node");
                            fatal.send_replace(Some(message));
                            return;
                        }
                    }
                    Ok(other) => tracing::debug!(answer = ?other, "heartbeat not acknowledged"),
                    Err(_) => tracing::debug!("heartbeat timed out"),
                }
                if broker.cut_off_from_quorum() && !cut_off {
                    tracing::warn!("no answer from the controller for twice broker.session.timeout.ms: acting as fenced");
                }
                cut_off = broker.cut_off_from_quorum();
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// On each leader: asks the controller to shrink or grow ISRs as followers fall behind or
/// catch up (Kafka's AlterPartition), every 200 ms.
async fn isr_changes(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => broker.propose_isr_changes().await,
            _ = shutdown.changed() => return,
        }
    }
}

/// On the active controller: fences brokers whose session expired.
async fn fence_expired_brokers(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(FENCE_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => broker.controller.fence_expired_brokers().await,
            _ = shutdown.changed() => return,
        }
    }
}

/// Asks the active controller to move this broker's leaderships away, if any other broker
/// is alive to take them (bounded: a shutdown does not wait on a lost quorum for long).
async fn controlled_shutdown(broker: &Arc<Broker>) {
    let others_alive = broker.metadata().live_brokers().any(|b| b.node_id != broker.config.node_id);
    if !others_alive {
        return;
    }
    let request = ControllerRequest::Heartbeat(broker.heartbeat(true));
    let quorum = broker.controller.quorum().clone();
    match tokio::time::timeout(Duration::from_secs(5), quorum.call_controller(request)).await {
        Ok(Ok(ControllerResponse::Alive)) => tracing::info!("leaderships moved to other brokers"),
        other => tracing::warn!(answer = ?other, "controlled shutdown did not complete"),
    }
}

/// Group timers every [`TICK_INTERVAL`] (sessions, rebalance deadlines, offset expiry).
async fn group_timers(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if broker.groups.is_ready() {
                    broker.groups.tick();
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Aborts timed-out transactions every second.
async fn transaction_timers(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TRANSACTION_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if !broker.txns.is_ready() {
                    continue;
                }
                let broker = broker.clone();
                if tokio::task::spawn_blocking(move || broker.txns.abort_timed_out()).await.is_err() {
                    tracing::error!("transaction timers panicked");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Log upkeep every [`MAINTENANCE_INTERVAL`]: `flush.ms` flushes, retention, checkpoints.
async fn maintenance(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let broker = broker.clone();
                if tokio::task::spawn_blocking(move || broker.maintain_logs()).await.is_err() {
                    tracing::error!("log maintenance panicked");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The log cleaner: a round over the compacted logs, then `log.cleaner.backoff.ms` of rest
/// (none while a round still found work), as Kafka's cleaner threads do.
async fn log_cleaner(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    if !broker.config.cleaner_enable {
        return;
    }
    let backoff = Duration::from_millis(broker.config.cleaner_backoff_ms);
    loop {
        let round = broker.clone();
        let passes = match tokio::task::spawn_blocking(move || round.clean_logs()).await {
            Ok(passes) => passes,
            Err(_) => {
                tracing::error!("the log cleaner panicked");
                0
            }
        };
        let pause = if passes > 0 { Duration::ZERO } else { backoff };
        tokio::select! {
            _ = tokio::time::sleep(pause.max(Duration::from_millis(10))) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> BrokerConfig {
        let mut config = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
        config.apply("listeners", "127.0.0.1:0").unwrap();
        config
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_servers_run_in_one_process_and_each_advertises_its_own_port() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = Server::start(config(a.path())).await.unwrap();
        let second = Server::start(config(b.path())).await.unwrap();
        assert_ne!(first.local_addr(), second.local_addr());
        for server in [&first, &second] {
            assert_eq!(server.broker().config.advertised("PLAINTEXT").unwrap().port, server.local_addr().port());
            tokio::net::TcpStream::connect(server.local_addr()).await.expect("the listener accepts");
        }
        let taken = BrokerConfig { listener: first.local_addr(), ..config(b.path()) };
        assert!(matches!(Server::start(taken).await, Err(ServerError::Bind { .. })));
        first.shutdown().await;
        second.shutdown().await;
        // A clean shutdown released the data directory.
        Server::start(config(a.path())).await.unwrap().shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wildcard_listener_needs_an_advertised_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut wildcard = config(dir.path());
        wildcard.apply("listeners", "0.0.0.0:0").unwrap();
        assert!(matches!(Server::start(wildcard).await, Err(ServerError::WildcardAdvertised(_))));
    }
}
