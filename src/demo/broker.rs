//! The broker the demo runs against: one already answering at --bootstrap, or else a
//! `sluice broker` child process in its own process group, waited for until it listens and
//! stopped with SIGTERM (SIGKILL after `BROKER_STOP_DEADLINE`) when the demo ends or fails.
//! A started broker is always stopped, also on an early error (`Drop`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::stop::{set_child_pid, stopping};
use super::ClickstreamArgs;

/// A broker recovering a large data directory after a crash can take tens of seconds.
const BROKER_START_DEADLINE: Duration = Duration::from_secs(60);
/// The broker's shutdown commits every job and flushes every log; 30 s is far more than that
/// takes, so a broker still running then is stuck and gets SIGKILL.
const BROKER_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Whether anything accepts connections at `bootstrap` (what answers is checked later, by the
/// Kafka client's ApiVersions exchange).
pub(super) fn broker_answers(bootstrap: &str) -> anyhow::Result<bool> {
    let addresses: Vec<_> = bootstrap
        .to_socket_addrs()
        .map_err(|err| anyhow!("cannot resolve --bootstrap {bootstrap}: {err}; give it as HOST:PORT"))?
        .collect();
    Ok(addresses.iter().any(|address| TcpStream::connect_timeout(address, Duration::from_secs(2)).is_ok()))
}

/// A broker run as a child process (`sluice broker`) for as long as the demo runs.
pub(super) struct ChildBroker {
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl ChildBroker {
    pub(super) fn start(args: &ClickstreamArgs) -> anyhow::Result<ChildBroker> {
        let exe = std::env::current_exe().context("cannot find the sluice executable to start a broker with")?;
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
        // Beside the data directory rather than in it, where the broker expects only its own files.
        let log = args.data_dir.with_file_name("sluice-demo-broker.log");
        let log_file = File::create(&log).with_context(|| format!("cannot create the broker log {}", log.display()))?;
        println!(
            "no broker answers at {}; starting one (data in {}, its log in {})",
            args.bootstrap,
            args.data_dir.display(),
            log.display()
        );
        let mut command = Command::new(exe);
        command.arg("broker").arg("--listen").arg(&args.bootstrap).arg("--admin-listen").arg(&args.admin);
        command.arg("--data-dir").arg(&args.data_dir);
        // Its own process group: Ctrl-C reaches only the demo, which then stops the broker
        // after its own last requests instead of racing the broker's shutdown.
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file).process_group(0);
        let mut child = command.spawn().context("cannot start a broker process")?;
        set_child_pid(i32::try_from(child.id()).unwrap_or(0));
        let stdout = child.stdout.take();
        let mut broker = ChildBroker { child, log, stopped: false };
        let stdout = stdout.ok_or_else(|| anyhow!("the broker's output is not connected to the demo"))?;
        broker.wait_until_listening(stdout)?;
        Ok(broker)
    }

    /// Waits for the broker's "listening" line; a drain thread keeps reading its stdout after
    /// that, since a full pipe would block the broker's next print.
    fn wait_until_listening(&mut self, stdout: ChildStdout) -> anyhow::Result<()> {
        let (lines_tx, lines) = mpsc::channel();
        thread::Builder::new()
            .name("broker-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    // Fails once the demo stops listening; the line is dropped, as it should be.
                    let _ = lines_tx.send(line);
                }
            })
            .context("cannot start the thread reading the broker's output")?;
        let deadline = Instant::now() + BROKER_START_DEADLINE;
        loop {
            if stopping() {
                bail!("interrupted while the broker was starting");
            }
            match lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.starts_with("sluice broker listening on ") => {
                    println!("started the broker: {line}");
                    return Ok(());
                }
                Ok(_) => {}
                Err(_) => {
                    if let Some(status) = self.child.try_wait().context("cannot check on the broker process")? {
                        self.stopped = true;
                        set_child_pid(0);
                        bail!("the broker exited before it was ready ({status}){}", self.log_tail());
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "the broker did not start within {} s{}",
                            BROKER_START_DEADLINE.as_secs(),
                            self.log_tail()
                        );
                    }
                }
            }
        }
    }

    /// The broker's last error line from its log, and where the log is.
    fn log_tail(&self) -> String {
        const TAIL_BYTES: u64 = 8 * 1024;
        let mut tail = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if file.seek(SeekFrom::Start(size.saturating_sub(TAIL_BYTES))).is_ok() {
                let mut bytes = Vec::new();
                let _ = file.take(TAIL_BYTES).read_to_end(&mut bytes);
                tail = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        match tail.lines().rev().find(|line| line.starts_with("error:")) {
            Some(line) => format!(": {} (its log is {})", line.trim_start_matches("error: "), self.log.display()),
            None => format!("; its log is {}", self.log.display()),
        }
    }

    /// SIGTERM (the broker's clean shutdown: jobs commit, logs are flushed), then SIGKILL if
    /// it has not exited within `BROKER_STOP_DEADLINE`.
    pub(super) fn stop(&mut self) -> anyhow::Result<()> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        // Signalled below (or gone): a second Ctrl-C need not signal it again.
        set_child_pid(0);
        if self.child.try_wait().context("cannot check on the broker process")?.is_none() {
            println!("stopping the broker");
            let pid = libc::pid_t::try_from(self.child.id()).context("the broker's process id is out of range")?;
            // SAFETY: kill has no memory preconditions, and `pid` is our child, not yet reaped
            // (try_wait above), so it cannot name another process.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                self.child.kill().context("cannot stop the broker process")?;
            }
        }
        let deadline = Instant::now() + BROKER_STOP_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().context("cannot check on the broker process")? {
                println!("the broker stopped ({status})");
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "the broker did not stop within {} s, so it was killed{}",
                    BROKER_STOP_DEADLINE.as_secs(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ChildBroker {
    /// An early error (the broker never became ready) still stops the process.
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("error: {err:#}");
        }
    }
}
