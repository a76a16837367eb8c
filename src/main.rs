//! The `sluice` command: with no arguments a single-node Kafka broker on 127.0.0.1:9092 with
//! its data in ./sluice-data; subcommands inspect partition logs on disk and operate consumer
//! groups over the wire.

mod admin;
mod allocator;
mod client;
mod cluster;
mod demo;
mod groups;
mod jobs;
mod run_broker;
mod transactions;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_broker::DataDirLock;
use sluice_storage::{HandleCache, LogConfig, Offset, PartitionLog, RecordBatch};

#[global_allocator]
static ALLOCATOR: allocator::LazyHugeAllocator = allocator::LazyHugeAllocator;

#[derive(Parser)]
#[command(name = "sluice", version, about = "A Kafka-compatible broker with an in-broker stream processor")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-node broker (the default when no command is given).
    Broker(run_broker::BrokerArgs),
    /// Inspect a partition log directory (`<topic>-<partition>/`).
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Operate consumer groups on a running cluster: list, describe (offsets and lag),
    /// reset-offsets, delete.
    Groups {
        #[command(subcommand)]
        command: groups::GroupsCommand,
    },
    /// Operate the broker's stream-processing jobs through its admin API: list, start,
    /// status, stop.
    Job {
        #[command(subcommand)]
        command: jobs::JobCommand,
    },
    /// Inspect transactions on a running cluster: list, describe.
    Transactions {
        #[command(subcommand)]
        command: transactions::TransactionsCommand,
    },
    /// A local cluster: `cluster up --brokers 3` starts three nodes and prints the bootstrap
    /// list.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Demonstrations in one command: `demo clickstream` starts a broker (or uses a running
    /// one), produces generated clicks, runs the clickstream job and prints its results.
    Demo {
        #[command(subcommand)]
        command: demo::DemoCommand,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Check every batch's framing and CRC-32C; recovers the log first if it was not closed cleanly.
    Verify {
        /// The partition directory, e.g. ./sluice-data/clicks-0
        dir: PathBuf,
    },
    /// Print one line per batch (offsets, size, timestamps, codec); with --records, every record too.
    Dump {
        dir: PathBuf,
        /// Also print each record's offset, timestamp, key and value sizes.
        #[arg(long)]
        records: bool,
    },
}

/// Opens a partition log of a stopped broker: the data directory's lock (held by a running
/// broker) is taken for as long as the log is open, since opening may recover and write.
fn open_log(dir: &PathBuf) -> anyhow::Result<(PartitionLog, DataDirLock)> {
    anyhow::ensure!(
        dir.is_dir(),
        "{} is not a directory; pass a partition directory such as ./sluice-data/clicks-0",
        dir.display()
    );
    let data_dir = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let lock = DataDirLock::acquire(data_dir)?;
    let log = PartitionLog::open(dir, LogConfig::default(), HandleCache::new(HandleCache::DEFAULT_MAX_OPEN))
        .with_context(|| format!("cannot open the log in {}", dir.display()))?;
    Ok((log, lock))
}

fn verify(dir: &PathBuf) -> anyhow::Result<()> {
    let (log, _lock) = open_log(dir)?;
    log.verify()?;
    println!(
        "{}: ok, offsets [{}, {}), {} segment(s), {} bytes",
        dir.display(),
        log.log_start_offset(),
        log.log_end_offset(),
        log.segment_count(),
        log.size_bytes()
    );
    log.close()?;
    Ok(())
}

fn dump(dir: &PathBuf, records: bool) -> anyhow::Result<()> {
    let (log, _lock) = open_log(dir)?;
    let end = log.log_end_offset();
    let mut next = log.log_start_offset();
    while next < end {
        let read = log.read(next, 1 << 20, end)?;
        anyhow::ensure!(!read.records.is_empty(), "no batch found at offset {next}");
        for batch in RecordBatch::iter_batches(read.records) {
            let batch = batch?;
            println!(
                "baseOffset: {} lastOffset: {} count: {} size: {} maxTimestamp: {} compression: {} producerId: {} transactional: {} control: {}",
                batch.base_offset(),
                batch.last_offset(),
                batch.record_count(),
                batch.as_bytes().len(),
                batch.max_timestamp_ms(),
                batch.compression()?.name(),
                batch.producer_id(),
                batch.is_transactional(),
                batch.is_control()
            );
            if records {
                for record in batch.records()? {
                    let record = record?;
                    println!(
                        "  offset: {} timestamp: {} keySize: {} valueSize: {} headers: {}",
                        record.offset,
                        record.timestamp_ms,
                        record.key.as_ref().map_or(-1, |k| k.len() as i64),
                        record.value.as_ref().map_or(-1, |v| v.len() as i64),
                        record.headers.len()
                    );
                }
            }
            next = Offset(batch.last_offset() + 1);
        }
    }
    log.close()?;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => run_broker::run(run_broker::BrokerArgs::default()),
        Some(Command::Broker(args)) => run_broker::run(args),
        Some(Command::Log { command: LogCommand::Verify { dir } }) => verify(&dir),
        Some(Command::Log { command: LogCommand::Dump { dir, records } }) => dump(&dir, records),
        Some(Command::Groups { command }) => groups::run(command),
        Some(Command::Transactions { command }) => transactions::run(command),
        Some(Command::Job { command }) => jobs::run(command),
        Some(Command::Demo { command }) => demo::run(command),
        Some(Command::Cluster { command }) => cluster::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
