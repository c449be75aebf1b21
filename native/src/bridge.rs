//! Envoy's HTTP-filter event hooks onto the core's [`Root`] and [`Call`].
//!
//! - A filter configuration ([`FilterConfig`]) is built on the main thread: the core's own
//!   configure step runs there once, with a host that defines the metrics (Envoy allows that
//!   only then) and refuses a malformed configuration with the core's messages.
//! - Each worker thread gets its own [`Worker`] per configuration the first time it sees a
//!   stream: a `Root` on a host of its own, like the wasm build's root context per worker VM.
//! - Each stream is a [`Stream`]: one `Call`.
//!
//! No panic crosses the ABI: the module is built with `panic = "abort"` (workspace release
//! profile), and the code here has no unwrap/expect/indexing.

use crate::abi::{self, ConfigPtr, EnvoyHeader, FilterPtr, SchedulerPtr};
use crate::host::{NativeHost, Shared};
use crate::pod::PodFiles;
use crate::ticker::{self, Ticks};
use faas_mesh_filter::host::call::Call;
use faas_mesh_filter::host::root::Root;
use faas_mesh_filter::host::startup::Vm;
use proxy_wasm::types::Action;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The module's side of one filter configuration.
pub struct FilterConfig {
    shared: Arc<Shared>,
    /// Cleared when Envoy destroys the configuration: workers drop their roots for it.
    alive: Arc<AtomicBool>,
}

/// One worker's root for one filter configuration.
pub struct Worker {
    host: NativeHost,
    root: RefCell<Root<NativeHost>>,
    next_context: Cell<u32>,
    ticks: Arc<Ticks>,
    alive: Arc<AtomicBool>,
}

/// One stream.
pub struct Stream {
    worker: Rc<Worker>,
    call: Call<NativeHost>,
    context_id: u32,
    filter: FilterPtr,
    /// This stream's scheduler while it carries the worker's tick.
    scheduler: Option<SchedulerPtr>,
    /// The response waits for the probe that checks its 5xx (sent on this stream).
    response_waits: bool,
}

thread_local! {
    /// This thread's roots, one per live filter configuration.
    static WORKERS: RefCell<Vec<Rc<Worker>>> = const { RefCell::new(Vec::new()) };
    /// This thread as a "VM" (an owner of in-flight slots, an id in the held record), shared by
    /// its roots of every configuration, as the wasm build's VM per worker.
    static VM: Rc<Vm> = Rc::new(Vm::default());
}

/// Builds a configuration: the core's configure step on the main thread, defining every
/// metric. `None`: refused (logged by the core, as the wasm build logs it).
pub fn config_new(envoy: ConfigPtr, raw: &[u8]) -> Option<Box<FilterConfig>> {
    crate::logger::init();
    let host = NativeHost::defining(envoy, raw, PodFiles::from_env());
    let mut root = Root::in_vm(host.clone(), Rc::new(Vm::default()));
    let loaded = root.on_configure();
    drop(root);
    if !loaded {
        return None;
    }
    let shared = host.into_shared(envoy)?;
    Some(Box::new(FilterConfig {
        shared: Arc::new(shared),
        alive: Arc::new(AtomicBool::new(true)),
    }))
}

pub fn config_destroy(config: FilterConfig) {
    config.alive.store(false, Ordering::Release);
}

/// This thread's worker for `config`, made (and configured) on first use.
fn worker(config: &FilterConfig) -> Option<Rc<Worker>> {
    WORKERS.with(|workers| {
        let mut workers = workers.try_borrow_mut().ok()?;
        if let Some(w) = workers
            .iter()
            .find(|w| Arc::ptr_eq(&w.alive, &config.alive))
        {
            return Some(w.clone());
        }
        // Roots of configurations Envoy has destroyed go now, on their own thread.
        workers.retain(|w| w.alive.load(Ordering::Acquire));
        let host = NativeHost::worker(config.shared.clone());
        let vm = VM.with(Rc::clone);
        let mut root = Root::in_vm(host.clone(), vm);
        if !root.on_configure() {
            return None;
        }
        let ticks = Ticks::new();
        ticks.ticked(host.0.tick_ms.get());
        let worker = Rc::new(Worker {
            host,
            root: RefCell::new(root),
            next_context: Cell::new(0),
            ticks,
            alive: config.alive.clone(),
        });
        workers.push(worker.clone());
        Some(worker)
    })
}

pub fn filter_new(config: &FilterConfig, filter: FilterPtr) -> Option<Box<Stream>> {
    let worker = worker(config)?;
    let context_id = worker.next_context.get().wrapping_add(1).max(1);
    worker.next_context.set(context_id);
    let call = worker.root.try_borrow().ok()?.new_call(context_id);
    Some(Box::new(Stream {
        worker,
        call,
        context_id,
        filter,
        scheduler: None,
        response_waits: false,
    }))
}

impl Worker {
    /// Runs the root's tick with `filter` as the current stream.
    fn tick(&self, filter: FilterPtr) {
        self.host.set_current(filter);
        if let Ok(mut root) = self.root.try_borrow_mut() {
            root.on_tick();
        }
        self.host.flush();
        self.ticks.ticked(self.host.0.tick_ms.get());
    }

    /// A tick that came due while no stream carried it runs at the next request.
    #[inline]
    fn catch_up(&self, filter: FilterPtr) {
        let period = self.host.0.tick_ms.get();
        if period > 0 && self.ticks.due(period) {
            self.tick(filter);
        }
    }
}

impl Stream {
    /// While the call holds state that needs ticks, this stream carries them.
    #[inline]
    fn settle(&mut self) {
        if self.scheduler.is_none() && self.call.needs_ticks() {
            self.carry();
        }
    }

    #[cold]
    fn carry(&mut self) {
        // SAFETY: the live stream of the current hook.
        let scheduler =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(self.filter) };
        if scheduler.is_null() {
            return;
        }
        self.scheduler = Some(scheduler);
        self.worker.host.track(self.context_id, self.filter);
        self.worker.ticks.add_carrier(self.context_id, scheduler);
    }

    #[inline]
    fn enter(&self, filter: FilterPtr) {
        self.worker.host.set_current(filter);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(scheduler) = self.scheduler.take() {
            let removed = self.worker.ticks.remove_carrier(self.context_id);
            // SAFETY: ours, and the ticker no longer sees it.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(
                    removed.unwrap_or(scheduler),
                )
            };
            self.worker.host.untrack(self.context_id);
        }
        // A probe that went out on this stream goes with it: the gate gives its lease back.
        let lost = self.worker.host.take_callouts(self.filter);
        if !lost.is_empty() {
            if let Ok(mut root) = self.worker.root.try_borrow_mut() {
                for token in lost {
                    root.on_http_call_lost(token);
                }
            }
        }
    }
}

fn headers_status(action: Action) -> u32 {
    match action {
        Action::Continue => 0,
        // StopIteration: Envoy keeps passing the body to this filter (the gate counts a held
        // request's body; the policy counts a body of unknown length).
        _ => 1,
    }
}

fn body_status(action: Action) -> u32 {
    match action {
        Action::Continue => 0,
        // StopIterationAndBuffer: the body waits in Envoy for the resume.
        _ => 1,
    }
}

/// Runs one hook's work on the stream, then what it asked of streams (local replies, resumes:
/// Envoy may call this module back synchronously for those, so no borrow of the stream is held
/// then), then lets the stream carry ticks if it must.
///
/// # Safety
/// `ptr` is a live stream of this thread (see [`stream`]).
#[inline]
unsafe fn run<T: Default>(
    ptr: *const c_void,
    filter: FilterPtr,
    f: impl FnOnce(&mut Stream) -> T,
) -> T {
    // SAFETY: the caller's contract.
    let Some(stream) = (unsafe { stream(ptr) }) else {
        return T::default();
    };
    stream.enter(filter);
    let out = f(stream);
    let worker = stream.worker.clone();
    worker.host.flush();
    // SAFETY: as above; the stream outlives this hook (Envoy destroys filters deferred).
    if let Some(stream) = unsafe { self::stream(ptr) } {
        stream.settle();
    }
    out
}

/// # Safety
/// `ptr` is a live stream of this thread.
pub unsafe fn request_headers(ptr: *const c_void, filter: FilterPtr, end_of_stream: bool) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        run(ptr, filter, |s| {
            s.worker.catch_up(filter);
            s.enter(filter);
            headers_status(s.call.on_request_headers(end_of_stream))
        })
    }
}

/// # Safety
/// `ptr` is a live stream of this thread.
pub unsafe fn request_body(ptr: *const c_void, filter: FilterPtr, end_of_stream: bool) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        run(ptr, filter, |s| {
            let size = s.worker.host.request_body_size();
            body_status(s.call.on_request_body(size, end_of_stream))
        })
    }
}

/// # Safety
/// `ptr` is a live stream of this thread.
pub unsafe fn request_trailers(ptr: *const c_void, filter: FilterPtr) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        run(ptr, filter, |s| {
            headers_status(s.call.on_request_trailers())
        })
    }
}

/// A 5xx the gate wants checked is checked at once, on this stream: the tick runs now, and if
/// it sent the probe from here, the response waits for the answer (at most the probe's
/// timeout) so the probe is not dropped with the stream. The wasm build sends it from the root
/// context's next tick instead, which needs no stream.
///
/// # Safety
/// `ptr` is a live stream of this thread.
pub unsafe fn response_headers(ptr: *const c_void, filter: FilterPtr, end_of_stream: bool) -> u32 {
    // SAFETY: the caller's contract.
    let status = unsafe {
        run(ptr, filter, |s| {
            headers_status(s.call.on_response_headers(end_of_stream))
        })
    };
    // SAFETY: as above.
    let Some(stream) = (unsafe { self::stream(ptr) }) else {
        return status;
    };
    if status != 0 || !stream.call.needs_ticks() {
        return status;
    }
    let worker = stream.worker.clone();
    let is_5xx = (worker.host.header_bytes(abi::RESPONSE_HEADER, b":status"))
        .is_some_and(|s| s.first() == Some(&b'5'));
    if !is_5xx {
        return status;
    }
    worker.tick(filter);
    if worker.host.has_callout(filter) {
        // SAFETY: as above.
        if let Some(stream) = unsafe { self::stream(ptr) } {
            stream.response_waits = true;
        }
        return 1; // StopIteration until the probe answers
    }
    status
}

/// # Safety
/// `ptr` is a live stream of this thread.
pub unsafe fn stream_complete(ptr: *const c_void, filter: FilterPtr) {
    // SAFETY: the caller's contract.
    let Some(stream) = (unsafe { stream(ptr) }) else {
        return;
    };
    stream.enter(filter);
    stream.call.on_done();
    // No carrying from here: the stream is about to go.
    let worker = stream.worker.clone();
    worker.host.flush();
}

/// # Safety
/// `ptr` is a live stream of this thread.
pub unsafe fn scheduled(ptr: *const c_void, filter: FilterPtr, event: u64) {
    if event != ticker::TICK {
        return;
    }
    // SAFETY: the caller's contract.
    let Some(worker) = (unsafe { stream(ptr) }).map(|s| s.worker.clone()) else {
        return;
    };
    worker.tick(filter);
}

/// # Safety
/// `ptr` is a live stream of this thread; `headers` Envoy's answer headers for this hook.
pub unsafe fn callout_done(
    ptr: *const c_void,
    filter: FilterPtr,
    id: u64,
    headers: &[EnvoyHeader],
) {
    // SAFETY: the caller's contract.
    let Some(worker) = (unsafe { stream(ptr) }).map(|s| s.worker.clone()) else {
        return;
    };
    let host = &worker.host;
    let Some(token) = host.callout_token(filter, id) else {
        // SAFETY: as above.
        unsafe { resume_response(ptr, filter) };
        return;
    };
    let answer = (headers.iter())
        .map(|h| {
            // SAFETY: Envoy keeps the headers until this hook returns.
            let (k, v) = unsafe { h.pair() };
            (k.to_vec(), v.to_vec())
        })
        .collect();
    host.set_current(filter);
    host.with_answer(answer, || {
        if let Ok(mut root) = worker.root.try_borrow_mut() {
            root.on_http_call_response(token);
        }
    });
    host.flush();
    // SAFETY: as above.
    if let Some(stream) = unsafe { stream(ptr) } {
        stream.settle();
    }
    // SAFETY: as above.
    unsafe { resume_response(ptr, filter) };
}

/// A response that waited for its probe goes on.
///
/// # Safety
/// `ptr` is a live stream of this thread.
unsafe fn resume_response(ptr: *const c_void, filter: FilterPtr) {
    // SAFETY: the caller's contract.
    if let Some(stream) = unsafe { stream(ptr) } {
        if std::mem::take(&mut stream.response_waits) {
            // SAFETY: the live stream, its response paused in its headers.
            unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_encoding(filter) };
        }
    }
}

/// The module pointer Envoy hands back, as the stream.
///
/// # Safety
/// `ptr` was returned by `on_http_filter_new` and not destroyed yet.
pub unsafe fn stream<'a>(ptr: *const c_void) -> Option<&'a mut Stream> {
    // SAFETY: the caller's contract; Envoy calls a stream's hooks on its worker, one at a time.
    unsafe { (ptr as *mut Stream).as_mut() }
}
