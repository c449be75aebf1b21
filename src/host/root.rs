//! The plugin's root context, on any host: loads the configuration, builds the gate and the
//! policy of the local function, runs their tick, takes the probes' answers, and makes one
//! [`Call`] per request.

use crate::host::call::{Call, RequestStats};
use crate::host::gate::Gate;
use crate::host::policy::Enforcer;
use crate::host::startup::{self, Vm};
use crate::host::{Host, Stat};
use crate::metrics;
use crate::plan::Plan;
use proxy_wasm::types::MetricType;
use std::rc::Rc;

/// The root context of one plugin on one worker.
pub struct Root<H: Host + Clone> {
    host: H,
    vm: Rc<Vm>,
    plan: Option<Rc<Plan>>,
    gate: Option<Rc<Gate<H>>>,
    /// Present when the local function's policy has rules and is not `off`.
    enforcer: Option<Rc<Enforcer<H>>>,
    stats: RequestStats,
}

impl<H: Host + Clone> Root<H> {
    /// A root context in this VM (see [`startup::this_vm`]).
    pub fn new(host: H) -> Root<H> {
        Root::in_vm(host, startup::this_vm())
    }

    /// A root context in the VM `vm` (shared by the root contexts of one VM).
    pub fn in_vm(host: H, vm: Rc<Vm>) -> Root<H> {
        Root {
            host,
            vm,
            plan: None,
            gate: None,
            enforcer: None,
            stats: RequestStats::default(),
        }
    }

    /// Reads the plugin configuration from the host and compiles it; false: refused (logged,
    /// counted in config_rejected), the host keeps its last good configuration.
    pub fn on_configure(&mut self) -> bool {
        match startup::configure(&self.host) {
            Ok(plan) => {
                self.start(plan);
                true
            }
            Err(problem) => {
                // Envoy rejects the plugin; the sidecar keeps its last good configuration.
                log::error!("invalid configuration: {problem}");
                self.count(metrics::CONFIG_REJECTED);
                false
            }
        }
    }

    /// Takes a configuration that loaded: the gate, the policy, the stats and the tick.
    #[inline(never)]
    fn start(&mut self, plan: Plan) {
        startup::report(&self.host, &plan);
        let function = plan.function_or_empty();
        self.gate = plan.readiness.as_ref().map(|settings| {
            let owner = self.vm.id(&self.host);
            let header = &plan.headers.call_id;
            Gate::new(self.host.clone(), settings.clone(), function, header, owner)
        });
        self.enforcer = plan.policy.is_active().then(|| {
            let owner = self.vm.owner.clone();
            Rc::new(Enforcer::new(
                self.host.clone(),
                owner,
                &plan.policy,
                function,
            ))
        });
        self.stats = RequestStats::define(&self.host, function);
        self.count(metrics::CONFIG_LOADED);
        // The gate's tick (at most 1 s) also serves the enforcer's heartbeat.
        let tick = (self.gate.as_ref().map(|g| g.tick_ms()))
            .or(self.enforcer.as_ref().map(|e| e.tick_ms()))
            .unwrap_or(0);
        let period = u32::try_from(tick).unwrap_or(50);
        if let Err(e) = self.host.set_tick_period_ms(period) {
            log::warn!("readiness: no timer from the host ({e:?}); held requests wait for probes");
        }
        self.plan = Some(Rc::new(plan));
    }

    fn count(&self, name: &str) {
        Stat::define(&self.host, MetricType::Counter, name).add(&self.host, 1);
    }

    pub fn on_tick(&mut self) {
        if let Some(gate) = &self.gate {
            gate.on_tick();
        }
        if let Some(enforcer) = &self.enforcer {
            enforcer.on_tick();
        }
    }

    /// The answer to a call made with `Host::dispatch_get` (its headers readable through
    /// `header(MapType::HttpCallResponseHeaders, ..)`).
    pub fn on_http_call_response(&mut self, token: u32) {
        if let Some(gate) = &self.gate {
            gate.on_probe_answer(token);
        }
    }

    /// A call made with `Host::dispatch_get` that the host dropped unanswered (the native build:
    /// the stream it went out on ended first).
    pub fn on_http_call_lost(&mut self, token: u32) {
        if let Some(gate) = &self.gate {
            gate.on_probe_lost(token);
        }
    }

    /// The filter's side of a new request.
    #[inline]
    pub fn new_call(&self, context_id: u32) -> Call<H> {
        Call::new(
            self.host.clone(),
            self.plan.clone(),
            self.gate.clone(),
            self.enforcer.clone(),
            self.stats,
            context_id,
        )
    }
}
