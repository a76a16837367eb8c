//! `sluice broker`: builds the broker config from defaults, an optional TOML file and flags
//! (in that order), binds the Kafka listener and the admin HTTP API, starts the broker's
//! jobs, and runs until SIGINT or SIGTERM, then shuts down cleanly (jobs commit, every log
//! is flushed and marked clean).

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use sluice_broker::server::Server;
use sluice_broker::{BrokerConfig, InProcessClient};
use sluice_processing::{HostConfig, JobHost};
use tokio::net::TcpListener;

#[derive(Args, Debug, Default)]
pub struct BrokerArgs {
    /// A TOML file of Kafka broker config keys, e.g. `"log.dirs" = "/var/lib/sluice"`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (Kafka's `listeners`). Port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// host:port clients are told to connect to (`advertised.listeners`); defaults to the
    /// address actually bound.
    #[arg(long)]
    advertise: Option<String>,
    /// Address of the admin HTTP API (jobs), default 127.0.0.1:9644 (`admin.listener`).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Data directory (`log.dirs`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Any broker config key, repeatable: `--set num.partitions=4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    for (key, value) in table {
        let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(inner) => flatten(&key, inner, out)?,
            toml::Value::String(s) => out.push((key, s.clone())),
            toml::Value::Integer(i) => out.push((key, i.to_string())),
            toml::Value::Boolean(b) => out.push((key, b.to_string())),
            other => {
                return Err(anyhow!(
                    "config key {key} has a {} value; use a string, integer or boolean",
                    other.type_str()
                ))
            }
        }
    }
    Ok(())
}

/// Everything the process needs besides the broker's own config.
struct ProcessConfig {
    admin_listener: std::net::SocketAddr,
    host: HostConfig,
}

const DEFAULT_ADMIN_LISTENER: &str = "127.0.0.1:9644";

fn build_config(args: &BrokerArgs) -> anyhow::Result<(BrokerConfig, ProcessConfig)> {
    let mut config = BrokerConfig::default();
    let mut process = ProcessConfig {
        admin_listener: DEFAULT_ADMIN_LISTENER.parse().expect("the default admin address parses"),
        host: HostConfig::default(),
    };
    let mut settings = Vec::new();
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let table: toml::Table =
            text.parse().with_context(|| format!("config file {} is not valid TOML", path.display()))?;
        flatten("", &table, &mut settings)?;
    }
    for pair in &args.set {
        let (key, value) = pair.split_once('=').ok_or_else(|| anyhow!("--set takes KEY=VALUE, got \"{pair}\""))?;
        settings.push((key.trim().to_string(), value.to_string()));
    }
    if let Some(listen) = &args.listen {
        settings.push(("listeners".into(), listen.clone()));
    }
    if let Some(advertise) = &args.advertise {
        settings.push(("advertised.listeners".into(), advertise.clone()));
    }
    if let Some(admin) = &args.admin_listen {
        settings.push(("admin.listener".into(), admin.clone()));
    }
    if let Some(dir) = &args.data_dir {
        settings.push(("log.dirs".into(), dir.display().to_string()));
    }
    for (key, value) in settings {
        if key == "admin.listener" {
            process.admin_listener = value.trim().parse().map_err(|_| {
                anyhow!("admin.listener must be host:port with a numeric host, e.g. 127.0.0.1:9644; got \"{value}\"")
            })?;
        } else if key.starts_with("processing.") {
            process.host.apply(&key, &value).map_err(|msg| anyhow!("{msg}"))?;
        } else {
            config.set(&key, &value).map_err(|msg| anyhow!("{msg}"))?;
        }
    }
    Ok((config, process))
}

pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    let (config, process) = build_config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        // Bound first, so that a port in use fails before the data directory is opened.
        let admin_listener = TcpListener::bind(process.admin_listener).await.with_context(|| {
            format!(
                "cannot listen on {} for the admin API (is another broker running? set --admin-listen)",
                process.admin_listener
            )
        })?;
        let admin_bound = admin_listener.local_addr()?;
        let mut server = Server::start(config).await?;
        let client = InProcessClient::new(server.broker().clone());
        let host = match tokio::task::spawn_blocking(move || JobHost::start(client, process.host)).await? {
            Ok(host) => host,
            Err(err) => {
                server.shutdown().await;
                return Err(anyhow!(err));
            }
        };
        // Lines scripts and tests can wait for; the broker's comes last.
        println!("sluice admin API listening on {admin_bound}");
        println!("sluice broker listening on {}", server.local_addr());

        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
        let admin = tokio::spawn(crate::admin::serve(admin_listener, host.clone(), admin_stopped));
        let fatal = tokio::select! {
            signal = wait_for_signal() => { signal?; None }
            message = server.fatal() => Some(message),
        };
        tracing::info!("shutting down");
        stop_admin.send(true).ok();
        admin.await.ok();
        // Clients and timers stop first; then jobs commit what they have, while the
        // coordinators can still take it; then the logs are closed.
        server.stop_serving().await;
        tokio::task::spawn_blocking(move || host.shutdown()).await?;
        server.shutdown().await;
        if let Some(message) = fatal {
            return Err(anyhow!(message));
        }
        tracing::info!("shut down cleanly");
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
