//! The broker's jobs: their definitions, persisted in `jobs.json` in the data directory
//! (replaced atomically, fsynced) so they start again with the broker, and the running
//! instances with their status. Submitting checks the definition first; stopping a job
//! commits what it has done and forgets its definition, keeping its checkpoint (offsets
//! and changelogs), so submitting it again resumes where it stopped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_broker::InProcessClient;

use crate::error::{Error, Result};
use crate::jobs::aggregation::AggregationDataflow;
use crate::jobs::clickstream::{ClickstreamDataflow, Operators};
use crate::jobs::definition::JobDefinition;
use crate::runtime::pool::WorkerPool;
use crate::runtime::{self, JobHandle, JobStatus};

const JOBS_FILE: &str = "jobs.json";

/// Processing settings (`processing.*` keys of the broker config).
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Threads all jobs' tasks share; the rest of the machine is the broker's.
    pub worker_threads: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Half the cores, at least one: the network and log tasks keep the rest.
        HostConfig { worker_threads: (cores / 2).max(1) }
    }
}

impl HostConfig {
    /// Applies one `processing.*` key; the message says what is wrong.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "processing.worker.threads" => {
                let threads: usize =
                    value.trim().parse().map_err(|_| Error::WorkerThreadsNotANumber(value.to_string()))?;
                if !(1..=256).contains(&threads) {
                    return Err(Error::WorkerThreadsOutOfRange(threads));
                }
                self.worker_threads = threads;
                Ok(())
            }
            other => Err(Error::UnknownConfig(other.to_string())),
        }
    }
}

/// Why a request about jobs was refused, with the HTTP status that says so.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HostError {
    pub status: u16,
    pub message: String,
}

impl HostError {
    fn new(status: u16, message: impl ToString) -> HostError {
        HostError { status, message: message.to_string() }
    }
}

struct Hosted {
    definition: JobDefinition,
    handle: JobHandle,
}

pub struct JobHost {
    client: InProcessClient,
    pool: Arc<WorkerPool>,
    path: PathBuf,
    /// Held across a submit or stop, so the file and the running set change together.
    jobs: Mutex<BTreeMap<String, Hosted>>,
}

impl JobHost {
    /// Starts the jobs the data directory's `jobs.json` lists.
    pub fn start(client: InProcessClient, config: HostConfig) -> Result<Arc<JobHost>> {
        let path = client.data_dir().join(JOBS_FILE);
        let definitions: Vec<JobDefinition> = match std::fs::read(&path) {
            Ok(text) => {
                serde_json::from_slice(&text).map_err(|source| Error::JobsFileDamaged { path: path.clone(), source })?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(Error::JobsFileUnreadable { path, source }),
        };
        let host = Arc::new(JobHost {
            pool: WorkerPool::new(config.worker_threads),
            client,
            path,
            jobs: Mutex::new(BTreeMap::new()),
        });
        {
            let mut jobs = host.jobs.lock();
            for definition in definitions {
                if let Err(error) = definition.validate() {
                    tracing::error!(job = %definition.name, %error, "not starting a stored job");
                    continue;
                }
                tracing::info!(job = %definition.name, "starting job");
                match host.launch(&definition) {
                    Ok(handle) => {
                        jobs.insert(definition.name.clone(), Hosted { definition, handle });
                    }
                    Err(error) => tracing::error!(job = %definition.name, %error, "not starting a stored job"),
                }
            }
        }
        Ok(host)
    }

    fn launch(&self, definition: &JobDefinition) -> Result<JobHandle> {
        let (client, pool, spec, kind) =
            (self.client.clone(), self.pool.clone(), definition.run_spec(), definition.kind.as_str());
        match &definition.aggregation {
            Some(aggregation) => {
                let dataflow = AggregationDataflow::new(aggregation.clone())?;
                Ok(runtime::spawn(client, pool, spec, kind, dataflow))
            }
            None => Ok(runtime::spawn(client, pool, spec, kind, ClickstreamDataflow { operators: Operators::ALL })),
        }
    }

    /// Checks, persists and starts a job. Blocking (creates topics, fsyncs).
    pub fn submit(&self, text: &[u8]) -> Result<JobStatus, HostError> {
        let definition = JobDefinition::parse(text).map_err(|e| HostError::new(400, e))?;
        let mut jobs = self.jobs.lock();
        if jobs.contains_key(&definition.name) {
            return Err(HostError::new(409, format!("job \"{}\" is already running", definition.name)));
        }
        // Like a producer's first send with auto-create on: the input may come later.
        let input = definition.input();
        if let Err(err) = self.client.ensure_topic(input, -1, Default::default()) {
            let error = Error::CreateTopic { role: "input", topic: input.to_string(), source: err };
            return Err(HostError::new(400, error));
        }
        let mut definitions: Vec<JobDefinition> = jobs.values().map(|j| j.definition.clone()).collect();
        definitions.push(definition.clone());
        self.persist(&definitions).map_err(|e| HostError::new(500, e))?;
        let handle = self.launch(&definition).map_err(|e| HostError::new(400, e))?;
        let status = handle.status.lock().clone();
        tracing::info!(job = %definition.name, "job submitted");
        jobs.insert(definition.name.clone(), Hosted { definition, handle });
        Ok(status)
    }

    /// Stops a job after a last commit and removes its definition.
    pub fn stop(&self, name: &str) -> Result<JobStatus, HostError> {
        let mut jobs = self.jobs.lock();
        if !jobs.contains_key(name) {
            return Err(HostError::new(404, format!("no job named \"{name}\"")));
        }
        let definitions: Vec<JobDefinition> =
            jobs.values().filter(|j| j.definition.name != name).map(|j| j.definition.clone()).collect();
        self.persist(&definitions).map_err(|e| HostError::new(500, e))?;
        let hosted = jobs.remove(name).expect("checked above");
        // Status requests go on while the job makes its last commit.
        drop(jobs);
        let status = hosted.handle.status.clone();
        hosted.handle.stop();
        tracing::info!(job = name, "job stopped");
        let status = status.lock().clone();
        Ok(status)
    }

    pub fn list(&self) -> Vec<JobStatus> {
        self.jobs.lock().values().map(|j| j.handle.status.lock().clone()).collect()
    }

    pub fn status(&self, name: &str) -> Option<JobStatus> {
        self.jobs.lock().get(name).map(|j| j.handle.status.lock().clone())
    }

    /// Stops every job (each commits what it has) without forgetting them: they start
    /// again with the broker.
    pub fn shutdown(&self) {
        let jobs = std::mem::take(&mut *self.jobs.lock());
        for (_, hosted) in jobs {
            hosted.handle.stop();
        }
        self.pool.shutdown();
    }

    fn persist(&self, definitions: &[JobDefinition]) -> Result<()> {
        let fail = |source: std::io::Error| Error::JobsFileUnwritable { path: self.path.clone(), source };
        let text = serde_json::to_vec_pretty(definitions).map_err(|e| fail(e.into()))?;
        let temporary = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temporary).map_err(fail)?;
        file.write_all(&text).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&temporary, &self.path).map_err(fail)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
        }
        Ok(())
    }
}
