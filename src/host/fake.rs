//! An in-memory [`Host`] for native tests of the adapters.
//!
//! A [`Pod`] is what Envoy shares between its workers (shared data with compare-and-swap,
//! metrics by name, the clock); each [`Fake`] made from it is one worker's VM, with what Envoy
//! keeps per VM (the tick period, the effective context, dispatched calls and their answers,
//! local replies, resumed requests, properties, the plugin configuration, the header maps of the
//! request being handled) and a log of every call it made.

use super::{Host, HostError};
use proxy_wasm::types::{MapType, MetricType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// `NOT_FOUND` and friends, as the ABI numbers them.
pub const BAD_ARGUMENT: HostError = HostError(2);

#[derive(Debug, Default)]
struct PodState {
    now_nanos: u64,
    /// key → (value, cas token); a write bumps the token.
    shared: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    metrics: Vec<(String, MetricType, i64)>,
    /// Clusters `dispatch_get` accepts (others: `BadArgument`, as Envoy says).
    clusters: Vec<String>,
    /// How many shared-data writes to fail with a CAS mismatch before accepting (contention).
    cas_conflicts: u32,
}

/// The state every worker of one Envoy shares.
#[derive(Debug, Clone, Default)]
pub struct Pod(Rc<RefCell<PodState>>);

impl Pod {
    pub fn new() -> Pod {
        let pod = Pod::default();
        pod.0.borrow_mut().now_nanos = 1_700_000_000_000_000_000;
        pod
    }

    /// A worker's VM in this pod.
    pub fn worker(&self) -> Fake {
        Fake {
            pod: self.clone(),
            vm: Rc::new(RefCell::new(VmState::default())),
        }
    }

    pub fn advance_ms(&self, ms: u64) {
        self.0.borrow_mut().now_nanos += ms * 1_000_000;
    }

    pub fn add_cluster(&self, name: &str) {
        self.0.borrow_mut().clusters.push(name.to_string());
    }

    /// The next `n` compare-and-swap writes fail as if another worker wrote first.
    pub fn conflict_next_writes(&self, n: u32) {
        self.0.borrow_mut().cas_conflicts = n;
    }

    pub fn shared(&self, key: &str) -> Option<Vec<u8>> {
        self.0.borrow().shared.get(key).map(|(v, _)| v.clone())
    }

    /// A metric's value by name (counters and gauges alike), 0 if never defined.
    pub fn metric(&self, name: &str) -> i64 {
        self.0
            .borrow()
            .metrics
            .iter()
            .find(|(n, _, _)| n == name)
            .map_or(0, |(_, _, v)| *v)
    }
}

/// A local reply as the host received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub context_id: u32,
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct VmState {
    tick_ms: u32,
    effective: u32,
    resumed: Vec<u32>,
    sent: Vec<Sent>,
    /// (token, cluster, authority, path)
    dispatched: Vec<(u32, String, String, String)>,
    next_token: u32,
    /// The header maps of the request being handled (and `HttpCallResponseHeaders`: the
    /// dispatched call being answered), in order.
    maps: HashMap<MapType, Vec<(String, Vec<u8>)>>,
    plugin_configuration: Option<Vec<u8>>,
    properties: HashMap<Vec<u8>, Vec<u8>>,
    entropy: u8,
    calls: Vec<String>,
}

/// One worker's VM in a [`Pod`].
#[derive(Debug, Clone)]
pub struct Fake {
    pod: Pod,
    vm: Rc<RefCell<VmState>>,
}

impl Fake {
    fn log(&self, call: String) {
        self.vm.borrow_mut().calls.push(call);
    }

    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Every host call this VM made, in order (`"set_shared_data key"`, `"dispatch_get /path"`…).
    pub fn calls(&self) -> Vec<String> {
        self.vm.borrow().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.vm.borrow_mut().calls.clear();
    }

    pub fn tick_ms(&self) -> u32 {
        self.vm.borrow().tick_ms
    }

    pub fn resumed(&self) -> Vec<u32> {
        self.vm.borrow().resumed.clone()
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.vm.borrow().sent.clone()
    }

    /// The calls dispatched so far: (token, path).
    pub fn dispatched(&self) -> Vec<(u32, String)> {
        self.vm
            .borrow()
            .dispatched
            .iter()
            .map(|(t, _, _, p)| (*t, p.clone()))
            .collect()
    }

    /// Sets the headers the next `header(HttpCallResponseHeaders, …)` reads (an answer to a
    /// dispatched call; an empty list is a call that failed).
    pub fn answer_with(&self, headers: &[(&str, &str)]) {
        self.set_map(MapType::HttpCallResponseHeaders, headers);
    }

    /// Replaces a header map (the request's or the response's headers as Envoy hands them over).
    pub fn set_map(&self, map: MapType, headers: &[(&str, &str)]) {
        let pairs = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        self.vm.borrow_mut().maps.insert(map, pairs);
    }

    /// A header map as the filter left it.
    pub fn map(&self, map: MapType) -> Vec<(String, String)> {
        self.vm
            .borrow()
            .maps
            .get(&map)
            .map(|pairs| {
                pairs
                    .iter()
                    .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The plugin configuration the next `plugin_configuration()` hands over.
    pub fn set_plugin_configuration(&self, json: &str) {
        self.vm.borrow_mut().plugin_configuration = Some(json.as_bytes().to_vec());
    }

    pub fn set_property(&self, path: &[u8], value: &[u8]) {
        self.vm
            .borrow_mut()
            .properties
            .insert(path.to_vec(), value.to_vec());
    }
}

impl Host for Fake {
    fn now_nanos(&self) -> Result<u64, HostError> {
        self.log("now_nanos".to_string());
        Ok(self.pod.0.borrow().now_nanos)
    }

    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        self.log(format!("random_bytes {}", buf.len()));
        let mut vm = self.vm.borrow_mut();
        for b in buf.iter_mut() {
            vm.entropy = vm.entropy.wrapping_add(37);
            *b = vm.entropy;
        }
        Ok(())
    }

    fn property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        self.log(format!("property {}", String::from_utf8_lossy(path)));
        Ok(self.vm.borrow().properties.get(path).cloned())
    }

    fn header(&self, map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.log(format!("header {name}"));
        let vm = self.vm.borrow();
        let found = vm.maps.get(&map).and_then(|pairs| {
            pairs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        });
        Ok(found)
    }

    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, HostError> {
        self.log("plugin_configuration".to_string());
        Ok(self.vm.borrow().plugin_configuration.clone())
    }

    fn header_map(&self, map: MapType) -> Result<Vec<u8>, HostError> {
        self.log(format!("header_map {map:?}"));
        let vm = self.vm.borrow();
        let pairs: Vec<(&str, &str)> = vm
            .maps
            .get(&map)
            .into_iter()
            .flatten()
            .map(|(n, v)| (n.as_str(), std::str::from_utf8(v).unwrap_or("")))
            .collect();
        Ok(crate::header_map::serialize(&pairs))
    }

    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.log(format!("set_header {name}"));
        let mut vm = self.vm.borrow_mut();
        let pairs = vm.maps.entry(map).or_default();
        pairs.retain(|(n, _)| n != name);
        pairs.push((name.to_string(), value.to_vec()));
        Ok(())
    }

    fn add_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.log(format!("add_header {name}"));
        let mut vm = self.vm.borrow_mut();
        vm.maps
            .entry(map)
            .or_default()
            .push((name.to_string(), value.to_vec()));
        Ok(())
    }

    fn remove_header(&self, map: MapType, name: &str) -> Result<(), HostError> {
        self.log(format!("remove_header {name}"));
        let mut vm = self.vm.borrow_mut();
        vm.maps.entry(map).or_default().retain(|(n, _)| n != name);
        Ok(())
    }

    fn shared_data(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
        self.log(format!("shared_data {key}"));
        Ok(match self.pod.0.borrow().shared.get(key) {
            Some((value, cas)) => (Some(value.clone()), *cas),
            None => (None, 0),
        })
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> Result<bool, HostError> {
        self.log(format!("set_shared_data {key}"));
        let mut pod = self.pod.0.borrow_mut();
        if cas != 0 && pod.cas_conflicts > 0 {
            pod.cas_conflicts -= 1;
            // Another worker wrote meanwhile: the record changes under this one.
            pod.next_cas += 1;
            let bumped = pod.next_cas;
            if let Some(entry) = pod.shared.get_mut(key) {
                entry.1 = bumped;
            }
            return Ok(false);
        }
        let current = pod.shared.get(key).map(|(_, c)| *c);
        if cas != 0 && current.is_some_and(|c| c != cas) {
            return Ok(false);
        }
        pod.next_cas += 1;
        let next = pod.next_cas;
        pod.shared.insert(key.to_string(), (value.to_vec(), next));
        Ok(true)
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, HostError> {
        let mut pod = self.pod.0.borrow_mut();
        if let Some(i) = pod.metrics.iter().position(|(n, _, _)| n == name) {
            return Ok(i as u32);
        }
        pod.metrics.push((name.to_string(), kind, 0));
        Ok(pod.metrics.len() as u32 - 1)
    }

    fn increment_metric(&self, id: u32, by: i64) -> Result<(), HostError> {
        let mut pod = self.pod.0.borrow_mut();
        let metric = pod.metrics.get_mut(id as usize).ok_or(BAD_ARGUMENT)?;
        metric.2 += by;
        Ok(())
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        let mut pod = self.pod.0.borrow_mut();
        let metric = pod.metrics.get_mut(id as usize).ok_or(BAD_ARGUMENT)?;
        match metric.1 {
            // A histogram counts its samples here.
            MetricType::Histogram => metric.2 += 1,
            _ => metric.2 = value as i64,
        }
        Ok(())
    }

    fn set_tick_period_ms(&self, period_ms: u32) -> Result<(), HostError> {
        self.log(format!("set_tick_period_ms {period_ms}"));
        self.vm.borrow_mut().tick_ms = period_ms;
        Ok(())
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        self.vm.borrow_mut().effective = context_id;
        Ok(())
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.log("resume_request".to_string());
        let mut vm = self.vm.borrow_mut();
        let context = vm.effective;
        vm.resumed.push(context);
        Ok(())
    }

    fn send_local_response(
        &self,
        status_code: u32,
        details: &str,
        body: &[u8],
        headers: &[u8],
    ) -> Result<(), HostError> {
        self.log(format!("send_local_response {status_code}"));
        let mut vm = self.vm.borrow_mut();
        let context_id = vm.effective;
        vm.sent.push(Sent {
            context_id,
            status: status_code,
            details: details.to_string(),
            body: body.to_vec(),
            headers: crate::header_map::pairs(headers)
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(n).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect(),
        });
        Ok(())
    }

    fn dispatch_get(
        &self,
        cluster: &str,
        authority: &str,
        path: &str,
        _timeout_ms: u64,
    ) -> Result<u32, HostError> {
        self.log(format!("dispatch_get {path}"));
        if !self.pod.0.borrow().clusters.iter().any(|c| c == cluster) {
            return Err(BAD_ARGUMENT);
        }
        let mut vm = self.vm.borrow_mut();
        vm.next_token += 1;
        let token = vm.next_token;
        vm.dispatched
            .push((token, cluster.into(), authority.into(), path.into()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_records_and_compare_and_swap_like_envoy() {
        let pod = Pod::new();
        let (a, b) = (pod.worker(), pod.worker());
        a.create_shared_data("k", b"0");
        b.create_shared_data("k", b"9"); // exists: left alone
        let (value, cas) = a.shared_data("k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"0"[..]));
        assert!(b.set_shared_data("k", b"1", cas).unwrap());
        assert!(!a.set_shared_data("k", b"2", cas).unwrap(), "stale token");
        let n = a.update_shared_data("k", 4, |v| {
            let n: u32 = std::str::from_utf8(v.unwrap()).unwrap().parse().unwrap();
            (Some((n + 1).to_string().into_bytes()), n + 1)
        });
        assert_eq!(n, Some(2));
        pod.conflict_next_writes(3);
        assert_eq!(
            a.update_shared_data("k", 3, |_| (Some(b"x".to_vec()), ())),
            None
        );
        assert_eq!(pod.shared("k").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn metrics_are_one_per_name_across_workers() {
        let pod = Pod::new();
        let (a, b) = (pod.worker(), pod.worker());
        let id = a.define_metric(MetricType::Counter, "c").unwrap();
        assert_eq!(b.define_metric(MetricType::Counter, "c").unwrap(), id);
        a.increment_metric(id, 2).unwrap();
        b.increment_metric(id, 1).unwrap();
        assert_eq!(pod.metric("c"), 3);
    }
}
