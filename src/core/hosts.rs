//! The proxies palisade runs in, and where they differ in ways the policy
//! must know. Found out once per configuration by the glue (see
//! [`crate::state::host::cas_zero_overwrites`]); everything else about the
//! host stays behind the traits in [`crate::state::host`].

/// The proxy running the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKind {
    #[default]
    Envoy,
    /// NGINX or Kong through ngx_wasm_module.
    NgxWasm,
}

impl HostKind {
    /// ngx_wasm_module implements no proxy-wasm metric it can be relied on
    /// for (its `define_metric` traps on a long name or a full zone).
    pub fn has_metrics(self) -> bool {
        self == HostKind::Envoy
    }

    /// Removing a request header takes it out of the upstream request on
    /// Envoy. ngx_wasm_module only marks the header, and nginx's proxy
    /// module forwards it anyway: a client's copy of an identity header
    /// would reach the upstream, so such requests are refused instead.
    pub fn removes_request_headers(self) -> bool {
        self == HostKind::Envoy
    }

    /// ngx_wasm_module reports `:authority` as nginx's `server_name` (or
    /// host name) and port, not what the client asked for: the `Host`
    /// header stands in for it there.
    pub fn authority_from_host_header(self) -> bool {
        self == HostKind::NgxWasm
    }

    /// Envoy streams the body after the headers, with end of stream on the
    /// last part, and holds a paused request until then. ngx_wasm_module
    /// never signals end of stream with the headers and resumes a request
    /// paused there only after an HTTP call: it reads the whole body itself
    /// and hands it over once, after the headers step has let the request
    /// go on (and not at all for an empty body, so whether one follows must
    /// be settled from the headers: [`crate::core::request::BodyFraming`]).
    pub fn delivers_body_whole(self) -> bool {
        self == HostKind::NgxWasm
    }

    /// ngx_wasm_module does not implement `proxy_dispatch_grpc_call` (the
    /// VM traps on it): the global mode's calls to the rate-limit service
    /// cannot be made there.
    pub fn dispatches_grpc(self) -> bool {
        self == HostKind::Envoy
    }

    /// ngx_wasm_module answers the client-certificate properties
    /// (`connection.uri_san_peer_certificate`, `..._subject_...`,
    /// `..._sha256_peer_certificate_digest`) with "not yet implemented":
    /// a device identity cannot be read there.
    pub fn reads_peer_certificates(self) -> bool {
        self == HostKind::Envoy
    }
}
