//! `sluice job list | start | status | stop`: the broker's jobs through its admin HTTP API
//! (default 127.0.0.1:9644). `start clickstream` submits the built-in clickstream job;
//! `start --file job.json` submits any definition.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);
/// A status or list is a few KiB; this bounds what a wrong server could make us hold.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Subcommand)]
pub enum JobCommand {
    /// List the broker's jobs with their state, watermark and lag.
    List {
        #[arg(long, default_value = "127.0.0.1:9644")]
        admin: String,
    },
    /// Start a job: a built-in one by name (`clickstream`), or a definition from --file.
    Start {
        /// The built-in job to start (`clickstream`).
        name: Option<String>,
        /// A job definition (JSON), e.g. {"name":"clicks-eu","kind":"clickstream","input":"clicks-eu"}.
        #[arg(long, conflicts_with = "name")]
        file: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:9644")]
        admin: String,
    },
    /// A job's state, per-partition offsets and lag, watermark, counts and last commit.
    Status {
        name: String,
        #[arg(long, default_value = "127.0.0.1:9644")]
        admin: String,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a job (it commits what it has done first) and remove its definition.
    Stop {
        name: String,
        #[arg(long, default_value = "127.0.0.1:9644")]
        admin: String,
    },
}

pub fn run(command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::List { admin } => {
            let jobs = request(&admin, "GET", "/v1/jobs", None)?;
            let jobs = jobs.as_array().cloned().unwrap_or_default();
            if jobs.is_empty() {
                println!("no jobs");
                return Ok(());
            }
            println!("{:<24} {:<12} {:<10} {:>16} {:>12} {:>12}", "NAME", "KIND", "STATE", "WATERMARK", "LAG", "OUT");
            for job in jobs {
                let lag: i64 =
                    job["partitions"].as_array().map_or(0, |ps| ps.iter().filter_map(|p| p["lag"].as_i64()).sum());
                println!(
                    "{:<24} {:<12} {:<10} {:>16} {:>12} {:>12}",
                    job["name"].as_str().unwrap_or("?"),
                    job["kind"].as_str().unwrap_or("?"),
                    job["state"].as_str().unwrap_or("?"),
                    job["watermark"].as_i64().map_or("-".to_string(), |w| w.to_string()),
                    lag,
                    job["records_out"].as_u64().unwrap_or(0)
                );
            }
            Ok(())
        }
        JobCommand::Start { name, file, admin } => {
            let body = match (name, file) {
                (_, Some(file)) => {
                    std::fs::read(&file).with_context(|| format!("cannot read job definition {}", file.display()))?
                }
                (Some(name), None) if name == "clickstream" => {
                    br#"{"name":"clickstream","kind":"clickstream"}"#.to_vec()
                }
                (Some(name), None) => bail!("no built-in job named \"{name}\" (built in: clickstream); use --file"),
                (None, None) => bail!("name a built-in job (clickstream) or pass --file job.json"),
            };
            let status = request(&admin, "POST", "/v1/jobs", Some(&body))?;
            println!(
                "started job {} ({})",
                status["name"].as_str().unwrap_or("?"),
                status["kind"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        JobCommand::Status { name, admin, json } => {
            let status = request(&admin, "GET", &format!("/v1/jobs/{name}"), None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        JobCommand::Stop { name, admin } => {
            request(&admin, "DELETE", &format!("/v1/jobs/{name}"), None)?;
            println!("stopped job {name}");
            Ok(())
        }
    }
}

fn print_status(status: &Value) {
    let field = |key: &str| match &status[key] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("job {} ({}) {}", field("name"), field("kind"), field("state"));
    if let Some(error) = status["error"].as_str() {
        println!("  error: {error}");
    }
    println!("  input: {} ({} key groups)", field("input"), field("key_groups"));
    println!("  watermark: {}", field("watermark"));
    println!(
        "  records in: {}  out: {}  malformed: {}  absurd timestamps: {}",
        field("records_in"),
        field("records_out"),
        field("malformed_records"),
        field("absurd_timestamps")
    );
    println!("  late records: {}", status["late_records"]);
    println!(
        "  state entries: {}  commits: {}  restarts: {}",
        field("state_entries"),
        field("commits"),
        field("restarts")
    );
    if let Some(commit) = status["last_commit"].as_object() {
        println!("  last commit: at {} ms, watermark {}", commit["at_ms"], commit["watermark"]);
    }
    println!("  {:>9} {:>14} {:>16} {:>14} {:>10}", "PARTITION", "OFFSET", "COMMITTED", "LOG-END", "LAG");
    for p in status["partitions"].as_array().into_iter().flatten() {
        println!(
            "  {:>9} {:>14} {:>16} {:>14} {:>10}",
            p["partition"].to_string(),
            p["offset"].to_string(),
            p["committed_offset"].to_string(),
            p["log_end_offset"].to_string(),
            p["lag"].to_string()
        );
    }
}

/// One HTTP/1.1 request; the JSON body of a 2xx answer, else the server's error message.
pub fn request(admin: &str, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect(admin).with_context(|| {
        format!("cannot reach the admin API at {admin} (is the broker running? --admin sets the address)")
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("the admin API sent a malformed answer"))?;
    let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if !(200..300).contains(&code) {
        let message = value["error"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
        bail!("{message}");
    }
    Ok(value)
}
