//! Host calls palisade makes, declared against the proxy-wasm ABI directly.
//!
//! The SDK's wrappers `panic!` on any status they do not expect and decode
//! header maps with `unwrap`, so one odd header value or host hiccup would
//! abort the VM and every stream on its worker. These wrappers turn every
//! status into a `Result` and leave decoding to the core.

use palisade_core::core::hosts::HostKind;
use palisade_core::core::metrics::{Counter, CounterBatch, Metrics};
use palisade_core::core::names::Names;
use palisade_core::state::host::{cas_zero_overwrites, Clock, SharedStore, StoreError, Versioned};
use std::collections::HashMap;
use std::ptr::{null, null_mut};
use std::rc::Rc;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

pub const MAP_REQUEST_HEADERS: u32 = 0;
pub const MAP_RESPONSE_HEADERS: u32 = 2;
pub const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const BUFFER_HTTP_REQUEST_BODY: u32 = 0;
const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
const BUFFER_GRPC_RECEIVE: u32 = 5;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const METRIC_COUNTER: u32 = 0;
const METRIC_GAUGE: u32 = 1;

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

/// Takes ownership of a buffer the host allocated through the SDK's
/// `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes).
///
/// # Safety
/// `data` must be null or come from the host for this call with `size` bytes.
unsafe fn take_host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

pub fn log(level: u32, message: &str) {
    // SAFETY: pointer and length describe a live &str.
    unsafe {
        proxy_log(level, message.as_ptr(), message.len());
    }
}

pub fn now_ms() -> Option<u64> {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64 to a valid pointer.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    (status == OK).then_some(nanos / 1_000_000)
}

fn buffer_bytes(buffer_type: u32, max_size: usize) -> Result<Vec<u8>, u32> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: out-pointers are valid; the returned buffer is taken over once.
    unsafe {
        match proxy_get_buffer_bytes(buffer_type, 0, max_size, &mut data, &mut size) {
            OK => Ok(take_host_buffer(data, size)),
            NOT_FOUND => Ok(Vec::new()),
            status => Err(status),
        }
    }
}

pub fn plugin_configuration() -> Result<Vec<u8>, u32> {
    buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, usize::MAX)
}

/// The request body buffered so far, up to `max_size` bytes.
pub fn request_body(max_size: usize) -> Result<Vec<u8>, u32> {
    buffer_bytes(BUFFER_HTTP_REQUEST_BODY, max_size)
}

/// The serialized header map (proxy-wasm map format), decoded by the core.
pub fn header_map_bytes(map_type: u32) -> Result<Vec<u8>, u32> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: as above.
    unsafe {
        match proxy_get_header_map_pairs(map_type, &mut data, &mut size) {
            OK => Ok(take_host_buffer(data, size)),
            status => Err(status),
        }
    }
}

/// One header's value (the first, on a header sent several times); `None`
/// when absent or on a host error.
pub fn header_value(map_type: u32, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: as above; the key is a live &str.
    unsafe {
        match proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), &mut data, &mut size)
        {
            OK => Some(take_host_buffer(data, size)),
            _ => None,
        }
    }
}

type HeaderValueCall = unsafe extern "C" fn(u32, *const u8, usize, *const u8, usize) -> u32;

fn header_value_call(
    call: HeaderValueCall,
    map_type: u32,
    name: &str,
    value: &str,
) -> Result<(), u32> {
    // SAFETY: pointers and lengths describe live &strs.
    match unsafe {
        call(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    } {
        OK => Ok(()),
        status => Err(status),
    }
}

pub fn add_header(map_type: u32, name: &str, value: &str) -> Result<(), u32> {
    header_value_call(proxy_add_header_map_value, map_type, name, value)
}

/// Sets a header, replacing any value it had.
pub fn replace_header(map_type: u32, name: &str, value: &str) -> Result<(), u32> {
    header_value_call(proxy_replace_header_map_value, map_type, name, value)
}

pub fn remove_header(map_type: u32, name: &str) -> Result<(), u32> {
    // SAFETY: pointer and length describe a live &str.
    match unsafe { proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()) } {
        OK => Ok(()),
        status => Err(status),
    }
}

pub fn set_tick_period_ms(period: u32) -> Result<(), u32> {
    // SAFETY: no pointers.
    match unsafe { proxy_set_tick_period_milliseconds(period) } {
        OK => Ok(()),
        status => Err(status),
    }
}

/// The body of an HTTP call's response, up to `max_size` bytes.
pub fn http_call_response_body(max_size: usize) -> Result<Vec<u8>, u32> {
    buffer_bytes(BUFFER_HTTP_CALL_RESPONSE_BODY, max_size)
}

/// The message of a gRPC call's response, up to `max_size` bytes.
pub fn grpc_response_body(max_size: usize) -> Result<Vec<u8>, u32> {
    buffer_bytes(BUFFER_GRPC_RECEIVE, max_size)
}

/// A property by path segments (e.g. `["source", "address"]`).
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let joined = path.join("\0");
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: as above.
    unsafe {
        match proxy_get_property(joined.as_ptr(), joined.len(), &mut data, &mut size) {
            OK => Some(take_host_buffer(data, size)),
            _ => None,
        }
    }
}

pub fn send_local_response(status: u16, headers: &[u8], body: &str) -> Result<(), u32> {
    const DETAILS: &str = "palisade";
    // SAFETY: pointers and lengths describe live buffers.
    match unsafe {
        proxy_send_local_response(
            u32::from(status),
            DETAILS.as_ptr(),
            DETAILS.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    } {
        OK => Ok(()),
        status => Err(status),
    }
}

/// proxy-wasm shared data: one process-wide store for all worker VMs.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: as above.
        unsafe {
            match proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) {
                OK => Ok(Some((take_host_buffer(data, size), cas))),
                NOT_FOUND => Ok(None),
                status => Err(StoreError::Host(status)),
            }
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let value_ptr = if value.is_empty() {
            null()
        } else {
            value.as_ptr()
        };
        // SAFETY: as above.
        match unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value_ptr, value.len(), cas) }
        {
            OK => Ok(()),
            CAS_MISMATCH => Err(StoreError::CasMismatch),
            status => Err(StoreError::Host(status)),
        }
    }
}

pub struct HostClock;

impl Clock for HostClock {
    fn now_ms(&self) -> Option<u64> {
        now_ms()
    }
}

/// Which proxy runs the filter, found without a host call either proxy
/// logs or traps on (ngx_wasm_module logs `plugin_vm_id` at alert level and
/// crashes on `plugin_name` outside a request): a write with CAS 0
/// overwrites on Envoy and only creates on ngx_wasm_module. `None` when the
/// store refuses the probe.
pub fn detect_host() -> Option<HostKind> {
    match cas_zero_overwrites(&HostStore) {
        Ok(true) => Some(HostKind::Envoy),
        Ok(false) => Some(HostKind::NgxWasm),
        Err(_) => None,
    }
}

/// Counts held in the VM ([`CounterBatch`]) until the root context's tick
/// flushes them, so a request makes no metric host call. On a host
/// without metrics nothing is held (the security log still records every
/// finding).
pub struct HostMetrics {
    pub batch: Rc<CounterBatch>,
    pub enabled: bool,
}

impl Metrics for HostMetrics {
    fn increment(&self, counter: Counter) {
        if self.enabled {
            self.batch.increment(counter);
        }
    }
}

/// Defines a metric of `kind` named `name`; its host id, or `None` when
/// the host refuses it.
fn define_metric(kind: u32, name: &str) -> Option<u32> {
    let mut id: u32 = 0;
    // SAFETY: the name is a valid buffer; the host writes one u32.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id)
}

/// Hands `batch`'s counts to the host: one increment per counter, each
/// defined on first use and remembered in `ids` (per VM).
pub fn flush_metrics(batch: &CounterBatch, ids: &mut HashMap<Counter, u32>, names: &dyn Names) {
    for (counter, n) in batch.drain() {
        let id = match ids.get(&counter) {
            Some(id) => *id,
            None => {
                let Some(id) = define_metric(METRIC_COUNTER, &counter.stat_name(names)) else {
                    continue;
                };
                ids.insert(counter, id);
                id
            }
        };
        // SAFETY: no pointers.
        unsafe {
            proxy_increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Sets gauges (stat name, value), each defined on first use and
/// remembered in `ids` (per VM).
pub fn record_gauges(gauges: &[(String, u64)], ids: &mut HashMap<String, u32>) {
    for (name, value) in gauges {
        let id = match ids.get(name) {
            Some(id) => *id,
            None => {
                let Some(id) = define_metric(METRIC_GAUGE, name) else {
                    continue;
                };
                ids.insert(name.clone(), id);
                id
            }
        };
        // SAFETY: no pointers.
        unsafe {
            proxy_record_metric(id, *value);
        }
    }
}
