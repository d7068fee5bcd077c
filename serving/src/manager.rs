//! The model manager: which models and versions are loaded, loading and unloading
//! them, Triton's model control modes (none, explicit, poll) and on-demand loading, memory
//! budgets with eviction (see [`crate::budget`]), and the optimiser's hooks that route and
//! record its requests.
//!
//! A model that fails to load (corrupt file, bad config, missing runtime, no room) is
//! recorded as UNAVAILABLE with its reason; the others keep serving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tracing::Instrument;

use nexus_gpu::{Gpus, GroupKind, GroupRequest, Placed, Reclaimable};
use nexus_models::backend::{Backends, LoadOptions};
use nexus_models::config::{self, ModelSignature};
use nexus_models::pb::ModelInstanceGroup;
use nexus_models::pb::model_instance_group::Kind;
use nexus_models::{Backend, Device, ModelConfig, ModelRepository};

use crate::budget::{self, Candidate, Footprint, MemoryBudget};
use crate::error::ServingError;
use crate::hooks::{InferenceRecord, Protocol, RequestIds};
use crate::infer::{InferRequest, InferResponse};
use crate::instance::Released;
use crate::metrics::VersionStats;
use crate::pb::repository_index_response::ModelIndex;
use crate::remote::{ModelSource, RemoteSpec};
use crate::scheduler::Scheduler;
use crate::version::LoadedVersion;

/// How models get loaded, as Triton's `--model-control-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlMode {
    /// Load every model at start-up; the repository API cannot load or unload.
    None,
    /// Load only what `--load-model` names or the repository API asks for.
    Explicit,
    /// Load everything, then rescan the repository and apply changes periodically.
    Poll,
    /// As explicit, and a request for a model that is not loaded loads it (the request waits);
    /// with `--model-memory-budget`, the least recently used idle models are unloaded to
    /// make room.
    OnDemand,
}

/// How long an unload or eviction waits for the requests still running on a model before
/// reporting it freed anyway (their model is freed when they finish).
const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// Settings that apply to every model.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub control_mode: ControlMode,
    /// max_batch_size given to models whose config is completed from the model file.
    pub default_max_batch_size: i32,
    /// Overrides the instance count of every model's instance_group.
    pub instances: Option<usize>,
    /// Requests that may wait for a free instance, per model version.
    pub queue_capacity: usize,
    /// Intra-op threads per instance when the config sets no `intra_op_thread_count`.
    pub intra_op_threads: usize,
    /// The runtimes models are opened with, chosen by each config's platform/backend.
    pub backends: Backends,
    /// The GPUs instances may be placed on (none, with the reason, on a CPU machine).
    pub gpus: Gpus,
    /// What the loaded models may hold on each device.
    pub memory_budget: MemoryBudget,
    /// How long a request waits for its model to load in on-demand mode.
    pub load_timeout: Duration,
}

/// The seam where the optimiser plugs into serving: it picks the version of requests that
/// do not pin one, and hears about every inference. The manager calls these on the request
/// path, so an implementation must answer at once and never wait on I/O.
///
/// Declared beside the manager because each names the other: the manager holds the hooks,
/// and the hooks get the manager in [`ServingHandle`].
pub trait InferenceHooks: Send + Sync {
    /// Called once when serving starts, with what the hooks may control.
    fn started(self: Arc<Self>, serving: ServingHandle);
    /// The version an unpinned request of `model` goes to; `None` (or a version that is
    /// not ready) keeps Triton's default, the newest.
    fn route(&self, model: &str) -> Option<u64>;
    /// Whether this request's inputs and outputs should be kept in its record.
    fn sample(&self) -> bool;
    /// Called once per request after it finished or failed.
    fn record(&self, record: InferenceRecord<'_>);
}

/// What serving offers to hooks once it runs.
#[derive(Clone)]
pub struct ServingHandle {
    pub manager: Arc<ModelManager>,
    /// The registry `--model` references resolve against, if any.
    pub source: Option<Arc<dyn ModelSource>>,
    /// The registry models being served, and the names they are served as.
    pub remote: Vec<RemoteSpec>,
}

enum VersionState {
    Ready(Arc<LoadedVersion>),
    Unavailable(String),
}

impl VersionState {
    fn ready(&self) -> Option<Arc<LoadedVersion>> {
        match self {
            VersionState::Ready(l) => Some(Arc::clone(l)),
            VersionState::Unavailable(_) => None,
        }
    }
}

#[derive(Default)]
struct ModelEntry {
    versions: BTreeMap<u64, VersionState>,
    /// Why the model as a whole is unavailable (bad config, no versions, unloaded).
    reason: Option<String>,
    loading: bool,
    fingerprint: Option<u64>,
    /// The last load failed: on-demand requests do not retry it until the files change.
    failed: bool,
    /// Memory the loaded versions took, per device: what unloading the model frees.
    footprint: Footprint,
    /// When the versions were loaded, as a [`crate::metrics::use_tick`] (a use, for eviction).
    loaded_use: u64,
}

impl ModelEntry {
    fn ready(&self) -> impl Iterator<Item = Arc<LoadedVersion>> + '_ {
        self.versions.values().filter_map(VersionState::ready)
    }

    /// When it was last loaded or answered a request, as a use tick.
    fn last_use(&self) -> u64 {
        self.ready()
            .map(|v| v.stats.last_use.load(Ordering::Relaxed))
            .fold(self.loaded_use, u64::max)
    }

    fn busy(&self) -> bool {
        self.ready().any(|v| v.scheduler.in_flight() > 0)
    }
}

/// Loads, unloads and looks up model versions.
pub struct ModelManager {
    repository: ModelRepository,
    options: ManagerOptions,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    /// Serialises loads and unloads so two never race on the same model.
    changes: tokio::sync::Mutex<()>,
    started: AtomicBool,
    hooks: OnceLock<Arc<dyn InferenceHooks>>,
    ids: RequestIds,
}

impl ModelManager {
    /// A manager over `repository`; nothing is loaded until [`ModelManager::start`].
    pub fn new(repository: ModelRepository, options: ManagerOptions) -> Arc<Self> {
        Arc::new(ModelManager {
            repository,
            options,
            models: RwLock::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
            started: AtomicBool::new(false),
            hooks: OnceLock::new(),
            ids: RequestIds::new(),
        })
    }

    /// The runtimes models are opened with.
    pub fn backends(&self) -> &Backends {
        &self.options.backends
    }

    /// Installs the hooks that route and record inferences (once; later calls are ignored).
    pub fn set_hooks(&self, hooks: Arc<dyn InferenceHooks>) {
        let _ = self.hooks.set(hooks);
    }

    /// Runs one request for `model`: at `version`, or (when empty) at the version the
    /// hooks route it to, else the newest. With hooks installed, a request without an id
    /// gets one (returned to the client, the key for feedback) and is recorded.
    pub async fn infer(
        self: &Arc<Self>,
        model: &str,
        version: &str,
        request: InferRequest,
        protocol: Protocol,
    ) -> Result<InferResponse, ServingError> {
        let span = tracing::info_span!("infer", model, version);
        self.infer_traced(model, version, request, protocol)
            .instrument(span)
            .await
    }

    async fn infer_traced(
        self: &Arc<Self>,
        model: &str,
        version: &str,
        mut request: InferRequest,
        protocol: Protocol,
    ) -> Result<InferResponse, ServingError> {
        let Some(hooks) = self.hooks.get() else {
            return self.resolve(model, version).await?.infer(request).await;
        };
        let start = Instant::now();
        let routed = match version.is_empty() {
            true => hooks.route(model),
            false => None,
        };
        if request.id.is_empty() {
            request.id = self.ids.issue();
        }
        let id = request.id.clone();
        let traceparent =
            nexus_telemetry::current_traceparent().or_else(|| request.traceparent.clone());
        let trace_id = traceparent.as_deref().and_then(crate::hooks::trace_id);
        let inputs = hooks.sample().then(|| request.inputs.clone());
        // A routed version unloaded since the weights were set falls back to the default.
        let routed = routed.and_then(|v| self.get_version(model, v));
        let target = match &routed {
            Some(loaded) => Ok(Arc::clone(loaded)),
            None => self.resolve(model, version).await,
        };
        let (served, result) = match target {
            Ok(loaded) => (loaded.version.to_string(), loaded.infer(request).await),
            Err(e) => (version.to_string(), Err(e)),
        };
        hooks.record(InferenceRecord {
            id: &id,
            model,
            version: &served,
            routed: routed.is_some(),
            protocol,
            result: result.as_ref(),
            latency: start.elapsed(),
            trace_id: trace_id.as_deref(),
            traceparent: traceparent.as_deref(),
            inputs,
        });
        result
    }

    /// The model control mode.
    pub fn control_mode(&self) -> ControlMode {
        self.options.control_mode
    }

    /// Refuses repository load/unload requests unless the mode is explicit (or on-demand),
    /// as Triton does.
    pub fn ensure_explicit(&self) -> Result<(), ServingError> {
        match self.options.control_mode {
            ControlMode::Explicit | ControlMode::OnDemand => Ok(()),
            mode => Err(ServingError::InvalidArgument(format!(
                "explicit model load / unload is not allowed in model control mode '{}'; start the server with --model-control-mode explicit",
                format!("{mode:?}").to_lowercase()
            ))),
        }
    }

    /// Loads the start-up set (everything, or `explicit` in explicit mode; `*` means all)
    /// except models already loaded, then marks the server ready.
    pub async fn start(self: &Arc<Self>, explicit: &[String]) {
        let names = match self.repository.model_names() {
            Ok(names) => names,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the model repository");
                Vec::new()
            }
        };
        let wanted: Vec<String> = match self.options.control_mode {
            ControlMode::Explicit | ControlMode::OnDemand if !explicit.iter().any(|m| m == "*") => {
                explicit.to_vec()
            }
            _ => names,
        };
        for name in wanted {
            if self.models.read().contains_key(&name) {
                continue;
            }
            if let Err(e) = self.load(&name, None).await {
                tracing::warn!(model = %name, error = %e, "model unavailable");
            }
        }
        self.started.store(true, Ordering::Release);
    }

    /// True once the start-up loads have finished.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Rescans the repository every `interval`: loads new or changed models and unloads
    /// removed ones. Runs until the task is dropped.
    pub async fn poll(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            self.poll_once().await;
        }
    }

    async fn poll_once(self: &Arc<Self>) {
        let Ok(names) = self.repository.model_names() else {
            tracing::warn!("cannot list the model repository; keeping the loaded models");
            return;
        };
        for name in &names {
            let known = self.models.read().get(name).map(|e| e.fingerprint);
            let current = self.repository.fingerprint(name);
            if known != Some(current) {
                tracing::info!(model = %name, "model changed on disk, reloading");
                if let Err(e) = self.load(name, None).await {
                    tracing::warn!(model = %name, error = %e, "reload failed");
                }
            }
        }
        let gone: Vec<String> = self
            .models
            .read()
            .keys()
            .filter(|k| !names.contains(k))
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(model = %name, "model removed from the repository, unloading");
            let _guard = self.changes.lock().await;
            let released = self.take_down(&name, "removed from the repository".into());
            self.models.write().remove(&name);
            release_in_background(released);
        }
    }

    /// Loads (or reloads) every version of `name` its version policy selects.
    /// `config_override` replaces config.pbtxt, as Triton's load API allows.
    pub async fn load(
        self: &Arc<Self>,
        name: &str,
        config_override: Option<ModelConfig>,
    ) -> Result<(), ServingError> {
        let _guard = self.changes.lock().await;
        self.load_locked(name, config_override).await
    }

    /// The version to serve, as [`Self::get`]. With `--model-control-mode on-demand`, a model
    /// of the repository that is not loaded is loaded first, the request waiting for at most
    /// the load timeout; a model whose last load failed is not retried until its files change.
    pub async fn resolve(
        self: &Arc<Self>,
        name: &str,
        version: &str,
    ) -> Result<Arc<LoadedVersion>, ServingError> {
        let found = self.get(name, version);
        if self.options.control_mode != ControlMode::OnDemand
            || found.is_ok()
            || !self.loads_on_demand(name)
        {
            return found;
        }
        let start = Instant::now();
        let this = Arc::clone(self);
        let model = name.to_string();
        // Its own task: a request that gives up (timeout, client gone) leaves the load to
        // finish for the next one, rather than cancelling it half-way.
        let loading = tokio::spawn(async move { this.ensure_loaded(&model).await });
        let timeout = self.options.load_timeout;
        match tokio::time::timeout(timeout, loading).await {
            Ok(Ok(Ok(()))) => budget::record_cold_start(name, start.elapsed()),
            // The model is UNAVAILABLE, and `get` says why (a 503, where the repository API's
            // own load answers a failed load with 400 as Triton does).
            Ok(Ok(Err(_))) => {}
            Ok(Err(e)) => return Err(ServingError::Internal(format!("loading '{name}': {e}"))),
            Err(_) => {
                return Err(ServingError::Unavailable(format!(
                    "model '{name}' is still loading after {} s (--model-load-timeout-secs); retry later",
                    timeout.as_secs()
                )));
            }
        }
        self.get(name, version)
    }

    /// Whether a request may load `name`: it is in the repository, not ready, and not a
    /// failed load of the same files.
    fn loads_on_demand(&self, name: &str) -> bool {
        let known = self
            .models
            .read()
            .get(name)
            .map(|e| (e.ready().next().is_some(), e.failed, e.fingerprint));
        match known {
            Some((true, _, _)) => false,
            Some((false, true, failed)) => self.repository.fingerprint(name) != failed,
            _ => self.repository.fingerprint(name).is_some(),
        }
    }

    /// Loads `name` unless a load that finished while this one waited made it ready or failed
    /// on the same files.
    async fn ensure_loaded(self: &Arc<Self>, name: &str) -> Result<(), ServingError> {
        let _guard = self.changes.lock().await;
        if !self.loads_on_demand(name) {
            return self.get(name, "").map(|_| ());
        }
        self.load_locked(name, None).await
    }

    /// [`Self::load`] once the caller holds `changes`.
    async fn load_locked(
        self: &Arc<Self>,
        name: &str,
        config_override: Option<ModelConfig>,
    ) -> Result<(), ServingError> {
        let Some(fingerprint) = self.repository.fingerprint(name) else {
            // Gone from disk (or never there): nothing to load, and nothing left serving.
            self.models.write().remove(name);
            return Err(ServingError::NotFound(format!(
                "model '{name}' is not in the model repository"
            )));
        };
        self.models
            .write()
            .entry(name.to_string())
            .or_default()
            .loading = true;
        let this = Arc::clone(self);
        let model = name.to_string();
        let started = Instant::now();
        let outcome =
            tokio::task::spawn_blocking(move || this.load_versions(&model, config_override))
                .await
                .unwrap_or_else(|e| Err(format!("loader failed: {e}")));
        budget::record_load(name, outcome.is_ok(), started.elapsed());

        let mut models = self.models.write();
        let entry = models.entry(name.to_string()).or_default();
        entry.loading = false;
        entry.fingerprint = Some(fingerprint);
        entry.failed = !matches!(&outcome, Ok((versions, _)) if versions.values().any(|s| s.ready().is_some()));
        match outcome {
            Ok((versions, footprint)) => {
                budget::record_footprint(name, &entry.footprint, &footprint);
                entry.footprint = footprint;
                entry.loaded_use = crate::metrics::use_tick();
                let failures: Vec<String> = versions
                    .iter()
                    .filter_map(|(v, s)| match s {
                        VersionState::Unavailable(r) => Some(format!("version {v}: {r}")),
                        VersionState::Ready(_) => None,
                    })
                    .collect();
                let any_ready = failures.len() < versions.len();
                entry.versions = versions;
                entry.reason = None;
                if any_ready {
                    tracing::info!(model = %name, "model loaded");
                    Ok(())
                } else {
                    Err(ServingError::InvalidArgument(format!(
                        "failed to load '{name}': {}",
                        failures.join("; ")
                    )))
                }
            }
            Err(reason) => {
                // A failed reload keeps the versions that were serving.
                let serving = entry
                    .versions
                    .values()
                    .any(|s| matches!(s, VersionState::Ready(_)));
                if !serving {
                    entry.versions.clear();
                }
                entry.reason = Some(reason.clone());
                Err(ServingError::InvalidArgument(format!(
                    "failed to load '{name}': {reason}"
                )))
            }
        }
    }

    /// Unloads every version of `name`; requests already running finish first, and the
    /// model's memory is given back to the system once they have.
    pub async fn unload(&self, name: &str) -> Result<(), ServingError> {
        let _guard = self.changes.lock().await;
        if !self.models.read().contains_key(name) {
            return match self.repository.read(name) {
                Ok(_) => Ok(()),
                Err(_) => Err(ServingError::NotFound(format!("unknown model '{name}'"))),
            };
        }
        release_in_background(self.take_down(name, "unloaded".into()));
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// Takes every version of `name` out of service (they are dropped once their last
    /// request has finished) and returns watches on their instances.
    fn take_down(&self, name: &str, reason: String) -> Vec<Released> {
        let mut models = self.models.write();
        let Some(entry) = models.get_mut(name) else {
            return Vec::new();
        };
        let released = entry.ready().map(|v| v.scheduler.released()).collect();
        entry.versions.clear();
        entry.reason = Some(reason);
        entry.failed = false;
        budget::record_footprint(name, &entry.footprint, &Footprint::new());
        entry.footprint.clear();
        released
    }

    /// Makes room on every device for `need`, the estimate of `name`'s load, within the
    /// memory budget: in on-demand mode by unloading the least recently used idle models
    /// (and waiting until their memory is freed); in the other modes it only checks.
    fn make_room(&self, name: &str, need: &Footprint) -> Result<(), String> {
        let budget = &self.options.memory_budget;
        if budget.is_empty() {
            return Ok(());
        }
        let evict = self.options.control_mode == ControlMode::OnDemand;
        let victims: Vec<String> = {
            let models = self.models.read();
            // The model's own versions are replaced by this load, so they do not count.
            let others: Vec<(&String, &ModelEntry)> =
                models.iter().filter(|(n, _)| *n != name).collect();
            let mut held = Footprint::new();
            for (_, entry) in &others {
                for (device, bytes) in &entry.footprint {
                    *held.entry(*device).or_default() += bytes;
                }
            }
            let candidates: Vec<Candidate<'_>> = others
                .iter()
                .filter(|(_, e)| !e.footprint.is_empty())
                .map(|(n, e)| Candidate {
                    name: n.as_str(),
                    last_use: e.last_use(),
                    busy: e.busy(),
                    footprint: &e.footprint,
                })
                .collect();
            let chosen = budget::evictions(budget, need, &held, &candidates, evict)
                .map_err(|e| format!("memory budget: the model {e}"))?;
            chosen
                .into_iter()
                .map(|i| candidates[i].name.to_string())
                .collect()
        };
        for victim in victims {
            let why = format!("evicted to make room for '{name}' (--model-memory-budget)");
            let freed = release(self.take_down(&victim, why));
            budget::record_eviction(&victim);
            tracing::info!(model = %victim, for_model = %name, freed, "model evicted");
        }
        Ok(())
    }

    /// Memory on each GPU that evicting idle models would free for `name` (on-demand mode).
    fn reclaimable(&self, name: &str) -> Reclaimable {
        let mut reclaimable = Reclaimable::new();
        if self.options.control_mode != ControlMode::OnDemand {
            return reclaimable;
        }
        for (_, entry) in self.models.read().iter().filter(|(n, _)| *n != name) {
            if entry.busy() {
                continue;
            }
            for (device, bytes) in &entry.footprint {
                if let Placed::Gpu(ordinal) = device {
                    *reclaimable.entry(*ordinal).or_default() += bytes;
                }
            }
        }
        reclaimable
    }

    /// Blocking part of a load: reads the repository, opens every selected version,
    /// completes the config from the model and starts the instance pools.
    fn load_versions(
        &self,
        name: &str,
        config_override: Option<ModelConfig>,
    ) -> Result<(BTreeMap<u64, VersionState>, Footprint), String> {
        let source = self.repository.read(name).map_err(|e| e.to_string())?;
        let mut config = config_override.unwrap_or(source.config);
        let available: Vec<u64> = source.versions.iter().map(|(v, _)| *v).collect();
        if available.is_empty() {
            return Err("no version folders (such as 1/) in the model directory".into());
        }
        let chosen = config::select_versions(&config, &available);
        if chosen.is_empty() {
            return Err(format!(
                "the version policy selects none of the versions on disk {available:?}"
            ));
        }
        let selected: Vec<(u64, PathBuf)> = source
            .versions
            .into_iter()
            .filter(|(v, _)| chosen.contains(v))
            .collect();
        let newest = selected.last().map(|(_, dir)| dir.as_path());
        let runtime = self
            .options
            .backends
            .resolve(&config.platform, &config.backend, newest)?;
        config.platform = runtime.platform().to_string();
        config.backend = runtime.backend().to_string();
        let model_file = config.default_model_filename.clone();
        let model_path = |dir: &Path| runtime.model_path(dir, &model_file);
        let newest_model = newest.map(model_path).unwrap_or_default();
        let estimate = model_size(&newest_model);
        let (plan, placed) = self.instance_plan(&config, estimate, &self.reclaimable(name))?;
        config.instance_group = placed;
        let need = need_of(&plan, estimate, selected.len());
        self.make_room(name, &need)?;
        let before = self.usage(&need);

        // Open the first instance of each version, newest first; the first model that opens
        // completes the config, and every version is then checked against it.
        let mut opened: Vec<(u64, PathBuf, Box<dyn Backend>)> = Vec::new();
        let mut states = BTreeMap::new();
        for (version, dir) in selected.into_iter().rev() {
            let path = model_path(&dir);
            match runtime.load(&path, &plan[0]) {
                Ok(b) => opened.push((version, path, b)),
                Err(e) => {
                    states.insert(version, VersionState::Unavailable(e.to_string()));
                }
            }
        }
        let Some((_, _, first)) = opened.first() else {
            return Ok((states, Footprint::new()));
        };
        let max_batch = self.options.default_max_batch_size;
        let signature = ModelSignature {
            inputs: first.inputs(),
            outputs: first.outputs(),
        };
        config::complete(&mut config, name, &signature, max_batch).map_err(|e| e.to_string())?;
        let config = Arc::new(config);

        for (version, path, instance) in opened {
            let signature = ModelSignature {
                inputs: instance.inputs(),
                outputs: instance.outputs(),
            };
            let checked = config::complete(&mut (*config).clone(), name, &signature, max_batch);
            let state = match checked {
                Err(e) => VersionState::Unavailable(e.to_string()),
                Ok(()) => {
                    let mut instances = vec![instance];
                    let started = plan[1..]
                        .iter()
                        .try_for_each(|options| {
                            instances.push(runtime.load(&path, options)?);
                            Ok::<_, ServingError>(())
                        })
                        .and_then(|()| self.start_version(name, version, instances, &config));
                    match started {
                        Ok(loaded) => VersionState::Ready(Arc::new(loaded)),
                        Err(e) => VersionState::Unavailable(e.to_string()),
                    }
                }
            };
            states.insert(version, state);
        }
        let footprint = match states.values().any(|s| s.ready().is_some()) {
            true => before.footprint(&self.usage(&need), &need),
            false => Footprint::new(),
        };
        Ok((states, footprint))
    }

    /// The process's resident memory, and the memory used on the GPUs `need` names.
    fn usage(&self, need: &Footprint) -> Usage {
        let on_gpu = need.keys().any(|d| matches!(d, Placed::Gpu(_)));
        let gpus = match on_gpu {
            true => self.options.gpus.visible().unwrap_or_default(),
            false => Vec::new(),
        };
        Usage {
            resident: budget::resident_bytes().unwrap_or(0),
            gpus: gpus
                .iter()
                .map(|v| (v.ordinal, v.gpu.memory_used_bytes))
                .collect(),
        }
    }

    fn start_version(
        &self,
        name: &str,
        version: u64,
        instances: Vec<Box<dyn Backend>>,
        config: &Arc<ModelConfig>,
    ) -> Result<LoadedVersion, ServingError> {
        let label = format!("{name}:{version}");
        let stats = Arc::new(VersionStats::new(name, version));
        let queue = self.options.queue_capacity;
        let scheduler = Scheduler::start(config, &label, instances, Arc::clone(&stats), queue)?;
        Ok(LoadedVersion {
            name: name.to_string(),
            version,
            config: Arc::clone(config),
            scheduler,
            stats,
        })
    }

    /// Load options for each instance the config's instance groups ask for, placed on the
    /// devices this process may use (`nexus_gpu::placement`), and the groups as placed for
    /// the config that is shown. `estimate` is what each instance is expected to take on a GPU
    /// (the newest version's weights), `reclaimable` what evictions would free there.
    fn instance_plan(
        &self,
        config: &ModelConfig,
        estimate: u64,
        reclaimable: &Reclaimable,
    ) -> Result<(Vec<LoadOptions>, Vec<ModelInstanceGroup>), String> {
        let threads = |lower: &str, upper: &str| -> Result<Option<usize>, config::ConfigError> {
            Ok(config::parameter::<usize>(config, lower)?.or(config::parameter(config, upper)?))
        };
        let err = |e: config::ConfigError| e.to_string();
        let intra = threads("intra_op_thread_count", "INTRA_OP_THREAD_COUNT")
            .map_err(err)?
            .unwrap_or(self.options.intra_op_threads);
        let inter = threads("inter_op_thread_count", "INTER_OP_THREAD_COUNT")
            .map_err(err)?
            .unwrap_or(0);
        let mut groups: Vec<GroupRequest> =
            config.instance_group.iter().map(group_request).collect();
        if let Some(n) = self.options.instances {
            if groups.is_empty() {
                groups.push(group_request(&ModelInstanceGroup::default()));
            }
            groups.iter_mut().for_each(|g| g.count = n.max(1) as u32);
        }
        let plan = self
            .options
            .gpus
            .place(&groups, estimate, reclaimable)
            .map_err(|e| e.to_string())?;
        // The config's bound counts per group; a group without `gpus` multiplies by the GPUs.
        if plan.instances.len() > config::MAX_INSTANCES as usize {
            return Err(format!(
                "instance_group places {} instances over the GPUs here; the limit is {} per model",
                plan.instances.len(),
                config::MAX_INSTANCES
            ));
        }
        let given = Arc::new(config.clone());
        let options = plan
            .instances
            .iter()
            .map(|placed| LoadOptions {
                device: match placed {
                    Placed::Cpu => Device::Cpu,
                    Placed::Gpu(ordinal) => Device::Gpu(*ordinal),
                },
                intra_op_threads: intra,
                inter_op_threads: inter,
                config: Arc::clone(&given),
            })
            .collect();
        // Each group as placed, keeping what placement does not decide (name, profile, …).
        let placed = plan
            .groups
            .into_iter()
            .enumerate()
            .map(|(i, g)| ModelInstanceGroup {
                kind: match g.kind {
                    GroupKind::Gpu => Kind::Gpu,
                    _ => Kind::Cpu,
                } as i32,
                count: g.count as i32,
                gpus: g.gpus,
                ..config.instance_group.get(i).cloned().unwrap_or_default()
            })
            .collect();
        Ok((options, placed))
    }

    /// The version to serve: the named one, or the newest ready one when `version` is empty.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<LoadedVersion>, ServingError> {
        let models = self.models.read();
        let entry = models
            .get(name)
            .ok_or_else(|| ServingError::NotFound(format!("unknown model '{name}'")))?;
        if version.is_empty() {
            return entry
                .versions
                .values()
                .rev()
                .find_map(VersionState::ready)
                .ok_or_else(|| {
                    let newest_failure = entry.versions.values().rev().find_map(|s| match s {
                        VersionState::Unavailable(why) => Some(why.as_str()),
                        VersionState::Ready(_) => None,
                    });
                    let why = entry
                        .reason
                        .as_deref()
                        .or(newest_failure)
                        .unwrap_or("no version loaded");
                    ServingError::Unavailable(format!("model '{name}' is not ready: {why}"))
                });
        }
        let number: u64 = version.parse().map_err(|_| {
            ServingError::NotFound(format!("unknown version '{version}' of model '{name}'"))
        })?;
        match entry.versions.get(&number) {
            Some(VersionState::Ready(l)) => Ok(Arc::clone(l)),
            Some(VersionState::Unavailable(why)) => Err(ServingError::Unavailable(format!(
                "model '{name}' version {number} is not ready: {why}"
            ))),
            None => Err(ServingError::NotFound(format!(
                "model '{name}' has no version {number}"
            ))),
        }
    }

    /// Version `version` of `name` if it is ready.
    fn get_version(&self, name: &str, version: u64) -> Option<Arc<LoadedVersion>> {
        self.models
            .read()
            .get(name)?
            .versions
            .get(&version)?
            .ready()
    }

    /// Ready versions of `name`, oldest first.
    pub fn ready_versions(&self, name: &str) -> Vec<u64> {
        self.models.read().get(name).map_or_else(Vec::new, |e| {
            e.versions
                .iter()
                .filter(|(_, s)| s.ready().is_some())
                .map(|(v, _)| *v)
                .collect()
        })
    }

    /// Every ready version of every model, for statistics.
    pub fn loaded(&self) -> Vec<Arc<LoadedVersion>> {
        self.models
            .read()
            .values()
            .flat_map(|e| e.versions.values())
            .filter_map(VersionState::ready)
            .collect()
    }

    /// The ready versions statistics are asked for: one version, or every ready version
    /// of the model when `version` is empty.
    pub fn versions_of(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Vec<Arc<LoadedVersion>>, ServingError> {
        if !version.is_empty() {
            return Ok(vec![self.get(name, version)?]);
        }
        let models = self.models.read();
        let entry = models
            .get(name)
            .ok_or_else(|| ServingError::NotFound(format!("unknown model '{name}'")))?;
        Ok(entry
            .versions
            .values()
            .filter_map(VersionState::ready)
            .collect())
    }

    /// The repository index: every model on disk or known to the manager, with the state
    /// and reason of each version. Models never loaded are listed by name only.
    pub fn index(&self, ready_only: bool) -> Vec<ModelIndex> {
        let models = self.models.read();
        let mut names: BTreeSet<String> = self
            .repository
            .model_names()
            .unwrap_or_default()
            .into_iter()
            .collect();
        names.extend(models.keys().cloned());
        let row = |name: &str, version: String, state: &str, reason: &str| ModelIndex {
            name: name.to_string(),
            version,
            state: state.to_string(),
            reason: reason.to_string(),
        };
        let mut rows = Vec::new();
        for name in names {
            match models.get(&name) {
                None => rows.push(row(&name, String::new(), "", "")),
                Some(e) if e.loading => rows.push(row(&name, String::new(), "LOADING", "")),
                Some(e) if e.versions.is_empty() => rows.push(row(
                    &name,
                    String::new(),
                    "UNAVAILABLE",
                    e.reason.as_deref().unwrap_or(""),
                )),
                Some(e) => {
                    for (v, s) in &e.versions {
                        match s {
                            VersionState::Ready(_) => {
                                rows.push(row(&name, v.to_string(), "READY", ""))
                            }
                            VersionState::Unavailable(r) => {
                                rows.push(row(&name, v.to_string(), "UNAVAILABLE", r))
                            }
                        }
                    }
                }
            }
        }
        if ready_only {
            rows.retain(|r| r.state == "READY");
        }
        rows
    }
}

/// Memory readings around a load.
struct Usage {
    resident: u64,
    /// Used bytes per GPU ordinal.
    gpus: BTreeMap<i32, u64>,
}

impl Usage {
    /// What a load took between `self` and `after`: on each device it was expected to use,
    /// the larger of the measurement and the estimate `need` (other requests allocate and free
    /// meanwhile, and freed memory may be reused, so a measurement alone can undercount), and
    /// on the host what it measured there even for a model placed on GPUs (runtime, CUDA
    /// context).
    fn footprint(&self, after: &Usage, need: &Footprint) -> Footprint {
        let mut footprint = need.clone();
        let host = after.resident.saturating_sub(self.resident);
        if host > 0 {
            let cpu = footprint.entry(Placed::Cpu).or_default();
            *cpu = (*cpu).max(host);
        }
        for (ordinal, used) in &after.gpus {
            let grew = used.saturating_sub(self.gpus.get(ordinal).copied().unwrap_or(*used));
            if let Some(gpu) = footprint.get_mut(&Placed::Gpu(*ordinal)) {
                *gpu = (*gpu).max(grew);
            }
        }
        footprint
    }
}

/// What loading `versions` versions with `plan` is expected to take: `estimate` per instance
/// on its device.
fn need_of(plan: &[LoadOptions], estimate: u64, versions: usize) -> Footprint {
    let mut need = Footprint::new();
    for options in plan {
        let device = match options.device {
            Device::Cpu => Placed::Cpu,
            Device::Gpu(ordinal) => Placed::Gpu(ordinal),
        };
        let bytes = need.entry(device).or_default();
        *bytes = bytes.saturating_add(estimate.saturating_mul(versions as u64));
    }
    need
}

/// Waits until the instances of unloaded versions are dropped, then gives the freed heap
/// back to the system; false if requests still held some after [`RELEASE_WAIT`].
fn release(released: Vec<Released>) -> bool {
    let freed = released.iter().all(|r| r.wait(RELEASE_WAIT));
    budget::trim_heap();
    freed
}

/// [`release`] on a blocking thread, for callers that do not wait for it.
fn release_in_background(released: Vec<Released>) {
    if !released.is_empty() {
        tokio::task::spawn_blocking(move || release(released));
    }
}

/// An instance group as placement reads it.
fn group_request(group: &ModelInstanceGroup) -> GroupRequest {
    GroupRequest {
        kind: match Kind::try_from(group.kind) {
            Ok(Kind::Gpu) => GroupKind::Gpu,
            Ok(Kind::Cpu) => GroupKind::Cpu,
            Ok(Kind::Model) => GroupKind::Model,
            Ok(Kind::Auto) | Err(_) => GroupKind::Auto,
        },
        count: u32::try_from(group.count).unwrap_or(0),
        gpus: group.gpus.clone(),
    }
}

/// Bytes of a model: its file, or the files of its folder (a Hugging Face folder keeps its
/// pooling config one level down). Looks at most [`MODEL_SIZE_ENTRIES`] entries: the size is
/// an estimate for placement, not worth an unbounded walk of a hostile folder.
fn model_size(path: &Path) -> u64 {
    const MODEL_SIZE_ENTRIES: usize = 10_000;
    let mut total = 0;
    let mut pending = vec![(path.to_path_buf(), 0)];
    let mut seen = 0;
    while let Some((path, depth)) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            total += meta.len();
        } else if meta.is_dir() && depth < 2 {
            let Ok(entries) = std::fs::read_dir(&path) else {
                continue;
            };
            for entry in entries.flatten() {
                seen += 1;
                if seen > MODEL_SIZE_ENTRIES {
                    return total;
                }
                pending.push((entry.path(), depth + 1));
            }
        } else if meta.file_type().is_symlink() {
            total += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}
