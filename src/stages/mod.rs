//! The stages, one module (or folder) each: its configuration section
//! (raw serde types, defaults, validation naming the JSON path, compile)
//! beside its check. A stage uses `core` and `state`, never another stage;
//! the pipeline puts them in order.

pub mod account;
pub mod anomaly;
pub mod auth;
pub mod bot;
pub mod client_ip;
pub mod geo;
pub mod global;
pub mod integrity;
pub mod limits;
pub mod mtls;
pub mod openapi;
pub mod reputation;
pub mod routes;
pub mod transport;
pub mod user;
pub mod validation;
