//! A real `sluice` broker process for end-to-end tests: started on an ephemeral port with
//! its own temporary data directory, restarted cleanly (SIGTERM) or after SIGKILL on the
//! same port and data directory, and killed when dropped. The broker's stderr goes to a file
//! in the temporary directory and is printed when a test fails. Every wait has a deadline.

pub mod clients;
pub mod groups;
pub mod jobs;
pub mod proxy;
pub mod records;
pub mod transactions;
pub mod wire;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous for a debug build recovering a log after SIGKILL on a busy 2-core machine.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// A clean shutdown flushes every log; it should take well under a second.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Only the tail of a long log is printed on failure: the end is where the trouble is.
const LOG_TAIL_LINES: usize = 300;

pub struct TestBroker {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    /// The admin HTTP API's port (jobs); the same across restarts.
    admin_port: u16,
    settings: Vec<String>,
    /// Where the broker keeps its data, when not in its own temporary directory.
    data_dir: Option<PathBuf>,
    /// `--listen` as given (a cluster node's listeners), instead of the broker port alone.
    listen: Option<String>,
}

impl TestBroker {
    /// Starts a broker with extra broker configs, each `key=value` (passed as `--set`).
    pub fn start(settings: &[&str]) -> TestBroker {
        TestBroker::start_with_data_dir(None, settings)
    }

    /// [`TestBroker::start`] with its data in `data_dir` (a filesystem the test made), which
    /// the test owns and cleans up.
    pub fn start_with_data_dir(data_dir: Option<PathBuf>, settings: &[&str]) -> TestBroker {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut broker = TestBroker {
            child: None,
            dir,
            port: 0,
            admin_port: 0,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            data_dir,
            listen: None,
        };
        broker.spawn();
        broker
    }

    /// A cluster node: `listen` is its `listeners` (`PLAINTEXT://...,CONTROLLER://...`).
    /// Returns once it prints that it listens (it may not have joined a quorum yet).
    pub fn start_node(listen: &str, settings: &[String]) -> TestBroker {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut broker = TestBroker {
            child: None,
            dir,
            port: 0,
            admin_port: 0,
            settings: settings.to_vec(),
            data_dir: None,
            listen: Some(listen.to_string()),
        };
        broker.spawn();
        broker
    }

    /// Kills the broker with SIGKILL and leaves it down.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the broker is running");
        child.kill().expect("SIGKILL the broker");
        wait_with_deadline(&mut child, STOP_DEADLINE).expect("a SIGKILLed broker exits");
    }

    /// Starts a broker that was stopped or killed again, on the same ports and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `host:port` for `bootstrap.servers`; the same across restarts.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `host:port` of the admin HTTP API.
    pub fn admin(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| self.dir.path().join("data"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// Stops the broker with SIGTERM, checks it exits successfully within the deadline, and
    /// starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "the broker did not shut down cleanly on SIGTERM: {status}");
        self.spawn();
    }

    /// Kills the broker with SIGKILL (no chance to flush or mark anything clean) and starts it
    /// again on the same port and data directory.
    pub fn kill9_and_restart(&mut self) {
        let mut child = self.child.take().expect("the broker is running");
        child.kill().expect("SIGKILL the broker");
        wait_with_deadline(&mut child, STOP_DEADLINE).expect("a SIGKILLed broker exits");
        self.spawn();
    }

    /// SIGTERM, then the exit status (within the deadline, else the test fails).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the broker is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped (we
        // hold its `Child` and have not waited on it), so the pid cannot have been reused.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM the broker: {}", std::io::Error::last_os_error());
        match wait_with_deadline(&mut child, STOP_DEADLINE) {
            Some(status) => status,
            None => {
                child.kill().ok();
                child.wait().ok();
                panic!("the broker did not exit within {STOP_DEADLINE:?} of SIGTERM");
            }
        }
    }

    /// Everything the broker has logged so far (all runs, in order).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).expect("open the broker log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .arg("broker")
            .arg("--listen")
            .arg(self.listen.clone().unwrap_or_else(|| format!("127.0.0.1:{}", self.port)))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port))
            .arg("--data-dir")
            .arg(self.data_dir());
        for setting in &self.settings {
            command.arg("--set").arg(setting);
        }
        let mut child = command
            // The log is a file read by people, not a terminal: no colour escapes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the sluice binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        // Reads stdout to its end so the broker never blocks on a full pipe; the thread ends
        // when the broker exits.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(address) = line.strip_prefix("sluice admin API listening on ") {
                        let port = address.rsplit_once(':').and_then(|(_, port)| port.parse().ok());
                        self.admin_port = port.unwrap_or_else(|| panic!("no port in \"{line}\""));
                    }
                    if let Some(address) = line.strip_prefix("sluice broker listening on ") {
                        let port = address.rsplit_once(':').and_then(|(_, port)| port.parse().ok());
                        self.port = port.unwrap_or_else(|| panic!("no port in \"{line}\""));
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the broker did not print \"listening on\" within {START_DEADLINE:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| wait_with_deadline(c, STOP_DEADLINE));
                    panic!("the broker exited before it was ready ({status:?})");
                }
            }
        }
    }
}

/// Polls the child until it exits or the deadline passes.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the broker") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lines shown before a panic the tail does not reach.
const PANIC_CONTEXT_LINES: usize = 60;

fn print_log_tail(path: &Path) {
    let Ok(file) = File::open(path) else { return };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let skipped = lines.len().saturating_sub(LOG_TAIL_LINES);
    // A panic inside the broker is the first thing to see, however long ago it was.
    for (at, _) in lines[..skipped].iter().enumerate().filter(|(_, l)| l.contains("panicked at")) {
        let from = at.saturating_sub(PANIC_CONTEXT_LINES);
        eprintln!("---- broker log lines {from} to {}, around a panic ----", at + 5);
        lines[from..(at + 6).min(skipped)].iter().for_each(|l| eprintln!("{l}"));
    }
    eprintln!("---- broker log ({}, last {} of {} lines) ----", path.display(), lines.len() - skipped, lines.len());
    for line in &lines[skipped..] {
        eprintln!("{line}");
    }
    eprintln!("---- end of broker log ----");
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        if std::thread::panicking() {
            print_log_tail(&self.log_path());
        }
    }
}

/// What a run of the `sluice` binary printed, and how it ended.
pub struct CliRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Fails the test, showing the output, unless the run succeeded.
    pub fn success(self, what: &str) -> CliRun {
        assert!(self.status.success(), "{what} failed ({}):\n{}\n{}", self.status, self.stdout, self.stderr);
        self
    }
}

/// Runs `sluice <args>`, killing it and failing the test if it outlives `limit`. Both pipes
/// are drained while it runs, so a chatty command never blocks on a full pipe.
pub fn run_sluice(args: &[&str], limit: Duration) -> CliRun {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sluice binary");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).ok();
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let status = match wait_with_deadline(&mut child, limit) {
        Some(status) => status,
        None => {
            child.kill().ok();
            child.wait().ok();
            panic!("sluice {args:?} did not finish within {limit:?}");
        }
    };
    CliRun { status, stdout: stdout.join().expect("stdout reader"), stderr: stderr.join().expect("stderr reader") }
}
