//! A proxy-wasm host small enough to read: the calls palisade imports, with
//! Envoy's semantics where they matter to the filter (a shared-data write
//! with CAS 0 overwrites, a stale CAS is refused; buffers are handed over
//! through the module's `proxy_on_memory_allocate`), and a count of every
//! call by import name.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use wasmi::{Caller, Extern, Val};

/// proxy-wasm status codes.
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const CAS_MISMATCH: i32 = 8;

/// proxy-wasm map and buffer types.
const MAP_REQUEST_HEADERS: i32 = 0;
const MAP_RESPONSE_HEADERS: i32 = 2;
const BUFFER_REQUEST_BODY: i32 = 0;
const BUFFER_PLUGIN_CONFIGURATION: i32 = 7;

#[derive(Default)]
pub struct Host {
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub plugin_configuration: Vec<u8>,
    pub peer_address: String,
    pub now_ns: u64,
    pub shared: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    /// Calls by import name while `counting`.
    pub calls: BTreeMap<String, u64>,
    pub counting: bool,
    /// What the filter logged (shown when it refuses its configuration).
    pub logs: Vec<String>,
    /// The status of a local response the filter sent, if any.
    pub local_response: Option<i32>,
    pub metrics_defined: u32,
}

pub type SharedHost = Rc<RefCell<Host>>;

type HostCaller<'a> = Caller<'a, SharedHost>;

/// Serves one import: its proxy-wasm status (for imports that return one).
pub fn call(name: &str, caller: &mut HostCaller<'_>, params: &[Val]) -> Result<i32, String> {
    let host = caller.data().clone();
    if host.borrow().counting {
        *host.borrow_mut().calls.entry(name.to_string()).or_default() += 1;
    }
    let arg = |n: usize| match params.get(n) {
        Some(Val::I32(v)) => Ok(*v),
        Some(Val::I64(v)) => {
            i32::try_from(*v).map_err(|_| format!("{name}: argument {n} too large"))
        }
        _ => Err(format!("{name}: argument {n} missing")),
    };
    match name {
        "proxy_log" => {
            let message = read(caller, arg(1)?, arg(2)?)?;
            let line = format!("[{}] {}", arg(0)?, String::from_utf8_lossy(&message));
            host.borrow_mut().logs.push(line);
            Ok(OK)
        }
        "proxy_get_header_map_pairs" => {
            let bytes = match arg(0)? {
                MAP_REQUEST_HEADERS => encode_map(&host.borrow().request_headers),
                MAP_RESPONSE_HEADERS => encode_map(&host.borrow().response_headers),
                _ => return Ok(BAD_ARGUMENT),
            };
            give(caller, &bytes, arg(1)?, arg(2)?)
        }
        "proxy_get_header_map_value" => {
            let key = read(caller, arg(1)?, arg(2)?)?;
            let value = {
                let h = host.borrow();
                let map = match arg(0)? {
                    MAP_REQUEST_HEADERS => &h.request_headers,
                    MAP_RESPONSE_HEADERS => &h.response_headers,
                    _ => return Ok(BAD_ARGUMENT),
                };
                map.iter()
                    .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(&key))
                    .map(|(_, v)| v.clone())
            };
            match value {
                Some(value) => give(caller, value.as_bytes(), arg(3)?, arg(4)?),
                None => Ok(NOT_FOUND),
            }
        }
        "proxy_get_property" => {
            let path = read(caller, arg(0)?, arg(1)?)?;
            let segments: Vec<&[u8]> = path.split(|b| *b == 0).filter(|s| !s.is_empty()).collect();
            let value = match segments.as_slice() {
                [b"source", b"address"] => host.borrow().peer_address.clone().into_bytes(),
                [b"request", b"protocol"] => b"HTTP/1.1".to_vec(),
                _ => return Ok(NOT_FOUND),
            };
            give(caller, &value, arg(2)?, arg(3)?)
        }
        "proxy_get_shared_data" => {
            let key = read(caller, arg(0)?, arg(1)?)?;
            let entry = host.borrow().shared.get(&key).cloned();
            match entry {
                Some((value, cas)) => {
                    write(caller, arg(4)?, &cas.to_le_bytes())?;
                    give(caller, &value, arg(2)?, arg(3)?)
                }
                None => Ok(NOT_FOUND),
            }
        }
        "proxy_set_shared_data" => {
            let key = read(caller, arg(0)?, arg(1)?)?;
            let value = read(caller, arg(2)?, arg(3)?)?;
            let cas = arg(4)? as u32;
            let mut h = host.borrow_mut();
            let entry = h.shared.entry(key).or_insert((Vec::new(), 0));
            // Envoy: CAS 0 writes whatever is there.
            if cas != 0 && cas != entry.1 {
                return Ok(CAS_MISMATCH);
            }
            entry.0 = value;
            entry.1 = entry.1.wrapping_add(1).max(1);
            Ok(OK)
        }
        "proxy_get_buffer_bytes" => {
            let bytes = match arg(0)? {
                BUFFER_REQUEST_BODY => host.borrow().body.clone(),
                BUFFER_PLUGIN_CONFIGURATION => host.borrow().plugin_configuration.clone(),
                _ => return Ok(NOT_FOUND),
            };
            // Offsets are unsigned (a module may ask for u32::MAX bytes).
            let start = (arg(1)? as u32 as usize).min(bytes.len());
            let end = start
                .saturating_add(arg(2)? as u32 as usize)
                .min(bytes.len());
            give(caller, &bytes[start..end], arg(3)?, arg(4)?)
        }
        "proxy_get_current_time_nanoseconds" => {
            let now = host.borrow().now_ns;
            write(caller, arg(0)?, &now.to_le_bytes())?;
            Ok(OK)
        }
        "proxy_define_metric" => {
            let id = {
                let mut h = host.borrow_mut();
                h.metrics_defined += 1;
                h.metrics_defined
            };
            write(caller, arg(3)?, &id.to_le_bytes())?;
            Ok(OK)
        }
        "proxy_send_local_response" => {
            host.borrow_mut().local_response = Some(arg(0)?);
            Ok(OK)
        }
        "random_get" => {
            let len = usize::try_from(arg(1)?).unwrap_or(0);
            let bytes: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(151).wrapping_add(7))
                .collect();
            write(caller, arg(0)?, &bytes)?;
            Ok(OK)
        }
        "environ_sizes_get" => {
            write(caller, arg(0)?, &0u32.to_le_bytes())?;
            write(caller, arg(1)?, &0u32.to_le_bytes())?;
            Ok(OK)
        }
        "fd_write" => {
            // Written nowhere, but reported as written.
            let iovs = read(caller, arg(1)?, arg(2)?.saturating_mul(8))?;
            let written: u32 = iovs
                .chunks_exact(8)
                .map(|iov| u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]))
                .sum();
            write(caller, arg(3)?, &written.to_le_bytes())?;
            Ok(OK)
        }
        "proc_exit" => Err("the module called proc_exit".to_string()),
        // Header writes, metric increments, the tick period, ...: accepted.
        _ => Ok(OK),
    }
}

/// The proxy-wasm map format: a count, (name length, value length) pairs,
/// then each name and value followed by a NUL.
pub fn encode_map(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend((pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend((name.len() as u32).to_le_bytes());
        out.extend((value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend(name.as_bytes());
        out.push(0);
        out.extend(value.as_bytes());
        out.push(0);
    }
    out
}

fn memory(caller: &HostCaller<'_>) -> Result<wasmi::Memory, String> {
    caller
        .get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or_else(|| "the module exports no memory".to_string())
}

fn read(caller: &HostCaller<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| "negative length")?];
    memory(caller)?
        .read(caller, ptr as u32 as usize, &mut buf)
        .map_err(|e| format!("reading guest memory: {e}"))?;
    Ok(buf)
}

fn write(caller: &mut HostCaller<'_>, ptr: i32, bytes: &[u8]) -> Result<(), String> {
    memory(caller)?
        .write(&mut *caller, ptr as u32 as usize, bytes)
        .map_err(|e| format!("writing guest memory: {e}"))
}

/// Hands `bytes` to the module as proxy-wasm hosts do: in memory the module
/// allocates (`proxy_on_memory_allocate`), pointer and size written to
/// `ret_ptr` and `ret_size`.
fn give(
    caller: &mut HostCaller<'_>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_size: i32,
) -> Result<i32, String> {
    let ptr = if bytes.is_empty() {
        0
    } else {
        let allocate = caller
            .get_export("proxy_on_memory_allocate")
            .and_then(Extern::into_func)
            .ok_or("the module exports no proxy_on_memory_allocate")?
            .typed::<i32, i32>(&*caller)
            .map_err(|e| format!("proxy_on_memory_allocate: {e}"))?;
        let len = i32::try_from(bytes.len()).map_err(|_| "buffer too large")?;
        let ptr = allocate
            .call(&mut *caller, len)
            .map_err(|e| format!("proxy_on_memory_allocate: {e}"))?;
        write(caller, ptr, bytes)?;
        ptr
    };
    write(caller, ret_ptr, &ptr.to_le_bytes())?;
    write(caller, ret_size, &(bytes.len() as u32).to_le_bytes())?;
    Ok(OK)
}
