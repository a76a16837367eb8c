//! `sluice cluster status`: a running cluster's health as Metadata tells it (brokers, the
//! active controller, under-replicated and offline partitions).
//!
//! `sluice cluster up`: a local cluster in one command, for trying a cluster out and for
//! scripts. It starts N broker processes (this binary) on 127.0.0.1, each a broker and a
//! controller voter with its own data directory under `--dir`, prints the bootstrap list once
//! every broker listens, and stops them all (SIGTERM) on Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;

mod replicas;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Brokers, the active controller, and partitions that are under-replicated (an ISR
    /// smaller than the replicas) or offline (no leader).
    Status {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
    },
    /// Move a partition to other brokers (KIP-455): the new replicas copy it while producers
    /// and consumers go on, then the old ones drop it. `--cancel` stops a move in progress.
    Reassign {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// The new replicas, the preferred leader first: `--replicas 2,3,1`.
        #[arg(long, required_unless_present = "cancel")]
        replicas: Option<String>,
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
        /// Wait up to this many seconds for the move to complete.
        #[arg(long)]
        wait: Option<u64>,
    },
    /// The partition moves in progress: replicas, and those being added and removed.
    Reassignments {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
    },
    /// Give partitions their preferred leader (the first replica), or with `--unclean` a
    /// leader for partitions that have none, even a replica outside the ISR (records only the
    /// lost in-sync replicas had are then gone).
    ElectLeaders {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[arg(long)]
        unclean: bool,
        /// Only this topic (default: every partition).
        #[arg(long)]
        topic: Option<String>,
        #[arg(long, requires = "topic")]
        partition: Option<i32>,
    },
    /// What each broker holds: partition sizes and how far each copy is behind.
    LogDirs {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
    },
    /// Move every replica off a broker, so that it can be taken out of the cluster.
    Decommission {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[arg(long)]
        broker: i32,
        /// Wait up to this many seconds until it holds nothing.
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Start a local cluster: node i (1..=N) serves Kafka on base-port + i - 1 and its
    /// controller on controller-base-port + i - 1.
    Up {
        /// Number of nodes (each a broker and a controller voter).
        #[arg(long, default_value_t = 3)]
        brokers: u16,
        /// Where the nodes keep their data (`node-1/`, `node-2/`, ...).
        #[arg(long, default_value = "./sluice-cluster")]
        dir: PathBuf,
        #[arg(long, default_value_t = 19092)]
        base_port: u16,
        #[arg(long, default_value_t = 19192)]
        controller_base_port: u16,
        /// Admin HTTP API of node i on admin-base-port + i - 1.
        #[arg(long, default_value_t = 19644)]
        admin_base_port: u16,
        /// Extra broker configs for every node, `KEY=VALUE`.
        #[arg(long = "set")]
        set: Vec<String>,
    },
}

pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { bootstrap } => status(&bootstrap),
        ClusterCommand::Reassign { bootstrap, topic, partition, replicas, cancel: _, wait } => {
            replicas::reassign(&bootstrap, &topic, partition, replicas.as_deref(), wait)
        }
        ClusterCommand::Reassignments { bootstrap } => replicas::reassignments(&bootstrap),
        ClusterCommand::ElectLeaders { bootstrap, unclean, topic, partition } => {
            replicas::elect_leaders(&bootstrap, unclean, topic.as_deref(), partition)
        }
        ClusterCommand::LogDirs { bootstrap } => replicas::log_dirs(&bootstrap),
        ClusterCommand::Decommission { bootstrap, broker, wait } => replicas::decommission(&bootstrap, broker, wait),
        ClusterCommand::Up { brokers, dir, base_port, controller_base_port, admin_base_port, set } => {
            up(brokers, dir, [base_port, controller_base_port, admin_base_port], &set)
        }
    }
}

fn status(bootstrap: &str) -> anyhow::Result<()> {
    let mut client = crate::client::Client::connect(bootstrap)?;
    let cluster = client.metadata(None)?;
    println!("BROKER  ADDRESS");
    for (id, address) in &cluster.brokers {
        let role = if *id == cluster.controller_id { "  (controller)" } else { "" };
        println!("{id:<7} {address}{role}");
    }
    let (mut total, mut under, mut offline) = (0, Vec::new(), Vec::new());
    for (topic, metadata) in &cluster.topics {
        for (partition, (replicas, isr)) in &metadata.replicas {
            total += 1;
            let leader = metadata.leaders.get(partition).copied().unwrap_or(-1);
            if leader < 0 {
                offline.push(format!("{topic}-{partition}"));
            } else if isr.len() < replicas.len() {
                under.push(format!("{topic}-{partition} (isr {isr:?} of {replicas:?})"));
            }
        }
    }
    print_quorum(&mut client, bootstrap)?;
    println!("partitions: {total}, under-replicated: {}, offline: {}", under.len(), offline.len());
    for line in under {
        println!("  under-replicated {line}");
    }
    for line in offline {
        println!("  offline {line}");
    }
    Ok(())
}

/// The metadata quorum's leader, epoch, high watermark and each voter's lag (DescribeQuorum).
fn print_quorum(client: &mut crate::client::Client, bootstrap: &str) -> anyhow::Result<()> {
    use kafka_protocol::messages::describe_quorum_request::{DescribeQuorumRequest, PartitionData, TopicData};
    let topic = TopicData::default()
        .with_topic_name(kafka_protocol::messages::TopicName(kafka_protocol::protocol::StrBytes::from_static_str(
            "__cluster_metadata",
        )))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)]);
    let response = client.call(bootstrap, 2, &DescribeQuorumRequest::default().with_topics(vec![topic]))?;
    let Some(partition) = response.topics.first().and_then(|t| t.partitions.first()) else {
        println!("metadata quorum: {}", crate::client::error_name(response.error_code));
        return Ok(());
    };
    if partition.error_code != 0 {
        println!("metadata quorum: {}", crate::client::error_name(partition.error_code));
        return Ok(());
    }
    let hw = partition.high_watermark;
    println!(
        "metadata quorum: leader {}, epoch {}, high watermark {hw}",
        partition.leader_id.0, partition.leader_epoch
    );
    for voter in &partition.current_voters {
        let end = voter.log_end_offset;
        let lag = if end < 0 { "unknown".to_string() } else { (hw - end).max(0).to_string() };
        println!("  voter {}: log end {end}, lag {lag}", voter.replica_id.0);
    }
    Ok(())
}

fn up(brokers: u16, dir: PathBuf, ports: [u16; 3], set: &[String]) -> anyhow::Result<()> {
    let [base_port, controller_base_port, admin_base_port] = ports;
    if !(1..=9).contains(&brokers) {
        bail!("--brokers must be between 1 and 9, got {brokers}");
    }
    let voters: Vec<String> =
        (1..=brokers).map(|id| format!("{id}@127.0.0.1:{}", controller_base_port + id - 1)).collect();
    let voters = voters.join(",");
    let executable = std::env::current_exe().context("finding the sluice executable")?;
    let mut children: Vec<(u16, Child)> = Vec::new();
    for id in 1..=brokers {
        let node_dir = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&node_dir).with_context(|| format!("creating {}", node_dir.display()))?;
        let log = std::fs::File::create(node_dir.join("broker.log"))?;
        let mut command = Command::new(&executable);
        command
            .arg("broker")
            .arg("--listen")
            .arg(format!(
                "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                base_port + id - 1,
                controller_base_port + id - 1
            ))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", admin_base_port + id - 1))
            .arg("--data-dir")
            .arg(node_dir.join("data"))
            .arg("--set")
            .arg(format!("node.id={id}"))
            .arg("--set")
            .arg(format!("controller.quorum.voters={voters}"));
        for setting in set {
            command.arg("--set").arg(setting);
        }
        let child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting a broker process")?;
        children.push((id, child));
    }
    let bootstrap: Vec<String> = (1..=brokers).map(|id| format!("127.0.0.1:{}", base_port + id - 1)).collect();
    let ready = wait_until_listening(&bootstrap, &mut children);
    if let Err(err) = ready {
        stop_all(&mut children);
        return Err(err);
    }
    println!("sluice cluster of {brokers} node(s) is up; logs in {}/node-N/broker.log", dir.display());
    println!("bootstrap.servers={}", bootstrap.join(","));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = terminate.recv() => {}
        }
        anyhow::Ok(())
    })?;
    stop_all(&mut children);
    Ok(())
}

/// Waits (up to a minute) until every broker accepts connections; fails if one exits.
fn wait_until_listening(bootstrap: &[String], children: &mut [(u16, Child)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for address in bootstrap {
        while std::net::TcpStream::connect(address).is_err() {
            for (id, child) in children.iter_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("node {id} exited ({status}); see its broker.log");
                }
            }
            if Instant::now() > deadline {
                bail!("{address} did not start listening within a minute");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

fn stop_all(children: &mut [(u16, Child)]) {
    for (_, child) in children.iter_mut() {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) only sends a signal to our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (id, child) in children.iter_mut() {
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!("node {id} did not stop within 30 s; killing it");
                child.kill().ok();
                child.wait().ok();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
