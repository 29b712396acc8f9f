//! The cheapest proxy-wasm HTTP filter there is: without a plugin
//! configuration, every callback keeps the SDK's default (continue) and makes
//! no host call. What Envoy spends on it over bare Envoy is the floor of any
//! wasm filter, palisade included.
//!
//! With a configuration `<kind> <n>` (read once, in `on_configure`) it makes
//! one kind of host call `n` times per request, so that the bench can measure
//! what one call of that kind costs: (cost with it − cost without) / n. The
//! kinds are the calls palisade makes:
//!
//! * `headers`: read the whole request header map;
//! * `header`: read one request header (`x-forwarded-for`);
//! * `property`: read the `source.address` property;
//! * `clock`: read the clock;
//! * `get`: read a shared-data entry (written at configure);
//! * `cas`: a shared-data read then a compare-and-swap write with the
//!   version it returned (subtract `get` for the write alone);
//! * `metric`: increment a counter (defined at configure);
//! * `log`: log at info level, which Envoy's `-l warn` filters out;
//! * `replace`: replace a request header;
//! * `resp-add`: add a response header;
//! * `body`: read the whole request body (once it is all there).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::rc::Rc;

const SHARED_KEY: &str = "bench-unit";
const SHARED_VALUE: &[u8] = b"0123456789abcdef0123456789abcdef";

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(EmptyRoot::default()));
}}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Headers,
    Header,
    Property,
    Clock,
    Get,
    Cas,
    Metric,
    Log,
    Replace,
    RespAdd,
    Body,
}

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "headers" => Kind::Headers,
            "header" => Kind::Header,
            "property" => Kind::Property,
            "clock" => Kind::Clock,
            "get" => Kind::Get,
            "cas" => Kind::Cas,
            "metric" => Kind::Metric,
            "log" => Kind::Log,
            "replace" => Kind::Replace,
            "resp-add" => Kind::RespAdd,
            "body" => Kind::Body,
            _ => return None,
        })
    }
}

struct Unit {
    kind: Kind,
    n: u32,
    metric: u32,
}

#[derive(Default)]
struct EmptyRoot {
    unit: Option<Rc<Unit>>,
}

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(text) = self.get_plugin_configuration() else {
            return true;
        };
        let text = String::from_utf8_lossy(&text);
        let mut words = text.split_whitespace();
        let (Some(kind), Some(n), None) = (words.next(), words.next(), words.next()) else {
            return text.trim().is_empty();
        };
        let (Some(kind), Ok(n)) = (Kind::parse(kind), n.parse::<u32>()) else {
            return false;
        };
        let metric = match kind {
            Kind::Metric => match hostcalls::define_metric(MetricType::Counter, "bench_unit_calls")
            {
                Ok(id) => id,
                Err(_) => return false,
            },
            _ => 0,
        };
        let shared = matches!(kind, Kind::Get | Kind::Cas);
        if shared && hostcalls::set_shared_data(SHARED_KEY, Some(SHARED_VALUE), None).is_err() {
            return false;
        }
        self.unit = Some(Rc::new(Unit { kind, n, metric }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match &self.unit {
            None => Some(Box::new(EmptyStream)),
            Some(unit) => Some(Box::new(UnitStream(unit.clone()))),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct EmptyStream;

impl Context for EmptyStream {}

impl HttpContext for EmptyStream {}

/// A call's result is not looked at.
fn ignore<T>(_result: T) {}

/// Makes the configured call `n` times per request; results are dropped
/// (a failed call costs the crossing all the same).
struct UnitStream(Rc<Unit>);

impl Context for UnitStream {}

impl HttpContext for UnitStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let unit = &self.0;
        for _ in 0..unit.n {
            match unit.kind {
                Kind::Headers => ignore(hostcalls::get_map_bytes(MapType::HttpRequestHeaders)),
                Kind::Header => ignore(hostcalls::get_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    "x-forwarded-for",
                )),
                Kind::Property => ignore(hostcalls::get_property(vec!["source", "address"])),
                Kind::Clock => ignore(hostcalls::get_current_time()),
                Kind::Get => ignore(hostcalls::get_shared_data(SHARED_KEY)),
                Kind::Cas => {
                    if let Ok((_, cas)) = hostcalls::get_shared_data(SHARED_KEY) {
                        ignore(hostcalls::set_shared_data(
                            SHARED_KEY,
                            Some(SHARED_VALUE),
                            cas,
                        ));
                    }
                }
                Kind::Metric => ignore(hostcalls::increment_metric(unit.metric, 1)),
                Kind::Log => ignore(hostcalls::log(LogLevel::Info, "bench unit: filtered out")),
                Kind::Replace => ignore(hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    "x-bench-unit",
                    Some("1"),
                )),
                Kind::RespAdd | Kind::Body => return Action::Continue,
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.0.kind != Kind::Body {
            return Action::Continue;
        }
        if !end_of_stream {
            // Buffer until the whole body is here, as palisade does.
            return Action::Pause;
        }
        for _ in 0..self.0.n {
            ignore(hostcalls::get_buffer(
                BufferType::HttpRequestBody,
                0,
                body_size,
            ));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.0.kind == Kind::RespAdd {
            for _ in 0..self.0.n {
                ignore(hostcalls::add_map_value(
                    MapType::HttpResponseHeaders,
                    "x-bench-unit",
                    "1",
                ));
            }
        }
        Action::Continue
    }
}
