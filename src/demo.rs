//! `sluice demo clickstream`: the clickstream job end to end in one command. It uses the broker
//! answering at --bootstrap or starts one (and stops it again at the end), makes sure `clicks`
//! exists, starts the job through the admin API, produces generated clicks through the Kafka
//! protocol at --rate, and every 2 s prints the job's latest committed results. Every loop ends
//! at a deadline or when Ctrl-C (or --duration) sets the stop flag.

mod broker;
mod clicks;
mod results;
mod stop;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

use crate::client::{error_name, Client, Cluster};

use broker::{broker_answers, ChildBroker};
use clicks::produce_clicks;
use results::{watch, ResultReader};
use stop::{install_stop_handler, request_stop, stopping};

const CLICKS_TOPIC: &str = "clicks";
const JOB_NAME: &str = "clickstream";
const JOB_DEFINITION: &[u8] = br#"{"name":"clickstream","kind":"clickstream"}"#;

const CREATE_TOPICS_VERSION: i16 = 5;
const TOPIC_ALREADY_EXISTS: i16 = 36;

/// How long a just-created topic may take to have leaders (the job creates its outputs).
const TOPIC_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Subcommand)]
pub enum DemoCommand {
    /// Start a broker (or use a running one), produce generated clicks at --rate, run the
    /// clickstream job and print its latest results as they arrive.
    Clickstream(ClickstreamArgs),
}

#[derive(Args)]
pub struct ClickstreamArgs {
    /// The broker's Kafka listener; if nothing answers there, a broker is started on it.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The broker's admin HTTP API.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9644")]
    admin: String,
    /// Clicks produced per second.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    rate: u32,
    /// Stop after this many seconds of clicks (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Data directory of the broker the demo starts (unused when a broker is running).
    #[arg(long, value_name = "PATH", default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// Partitions of `clicks` if the demo creates it.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=1000))]
    partitions: i32,
}

pub fn run(command: DemoCommand) -> anyhow::Result<()> {
    match command {
        DemoCommand::Clickstream(args) => clickstream(&args),
    }
}

fn clickstream(args: &ClickstreamArgs) -> anyhow::Result<()> {
    install_stop_handler()?;
    let mut broker = if broker_answers(&args.bootstrap)? {
        println!("using the broker at {} (admin API at {})", args.bootstrap, args.admin);
        None
    } else {
        Some(ChildBroker::start(args)?)
    };
    let result = run_demo(args);
    request_stop();
    match broker.as_mut() {
        Some(broker) => {
            let stopped = broker.stop();
            match (&result, stopped) {
                (Err(_), Err(err)) => eprintln!("error: {err:#}"),
                (Ok(()), Err(err)) => return Err(err),
                (_, Ok(())) => {}
            }
        }
        None if result.is_ok() => {
            println!("the {JOB_NAME} job keeps running on the broker; `sluice job stop {JOB_NAME}` stops it")
        }
        None => {}
    }
    result
}

fn run_demo(args: &ClickstreamArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.bootstrap)?;
    create_clicks_topic(&mut client, &args.bootstrap, args.partitions)?;
    let clicks = wait_for_topics(&mut client, &[CLICKS_TOPIC])?;
    start_job(&args.admin)?;
    let mut results = ResultReader::open(&args.bootstrap)?;
    println!("producing {} clicks/s to {CLICKS_TOPIC}; Ctrl-C stops the demo", args.rate);

    let produced = Arc::new(AtomicU64::new(0));
    let producer = {
        let (produced, rate) = (produced.clone(), args.rate);
        thread::Builder::new()
            .name("click-producer".into())
            .spawn(move || produce_clicks(client, &clicks, rate, &produced))
            .context("cannot start the click producer thread")?
    };
    let watched = watch(&mut results, args, &produced, &producer);
    request_stop();
    let produced_result = producer.join().map_err(|_| anyhow!("the click producer thread panicked"))?;
    println!("produced {} clicks in all", produced.load(Ordering::Relaxed));
    watched.and(produced_result)
}

fn create_clicks_topic(client: &mut Client, bootstrap: &str, partitions: i32) -> anyhow::Result<()> {
    let topic = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_static_str(CLICKS_TOPIC)))
        .with_num_partitions(partitions)
        .with_replication_factor(-1);
    let request = CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(30_000);
    let response = client.call(bootstrap, CREATE_TOPICS_VERSION, &request)?;
    let result = response
        .topics
        .iter()
        .find(|t| t.name.0.as_str() == CLICKS_TOPIC)
        .ok_or_else(|| anyhow!("the broker's CreateTopics answer has no result for {CLICKS_TOPIC}"))?;
    match result.error_code {
        0 => println!("created topic {CLICKS_TOPIC} with {partitions} partitions"),
        TOPIC_ALREADY_EXISTS => println!("topic {CLICKS_TOPIC} exists already"),
        code => {
            let message = result.error_message.as_ref().map_or(String::new(), |m| format!(" ({})", m.as_str()));
            bail!("cannot create topic {CLICKS_TOPIC}: {}{message}", error_name(code));
        }
    }
    Ok(())
}

/// Metadata once every one of `topics` exists and each of its partitions has a leader.
fn wait_for_topics(client: &mut Client, topics: &[&str]) -> anyhow::Result<Cluster> {
    let names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let deadline = Instant::now() + TOPIC_DEADLINE;
    loop {
        let cluster = client.metadata(Some(&names))?;
        let missing = topics.iter().find(|&&topic| {
            cluster.topics.get(topic).is_none_or(|t| {
                t.error_code != 0 || t.leaders.is_empty() || t.leaders.values().any(|leader| *leader < 0)
            })
        });
        let Some(missing) = missing else { return Ok(cluster) };
        if stopping() {
            bail!("interrupted while waiting for topic {missing}");
        }
        if Instant::now() >= deadline {
            bail!(
                "topic {missing} has no leaders after {} s; check the job with `sluice job status {JOB_NAME}`",
                TOPIC_DEADLINE.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn start_job(admin: &str) -> anyhow::Result<()> {
    match crate::jobs::request(admin, "POST", "/v1/jobs", Some(JOB_DEFINITION)) {
        Ok(_) => println!("started the {JOB_NAME} job"),
        Err(err) if err.to_string().contains("already running") => {
            println!("the {JOB_NAME} job is running already; showing its results")
        }
        Err(err) => return Err(err.context(format!("cannot start the {JOB_NAME} job"))),
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
