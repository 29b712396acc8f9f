//! `GET /healthz` and `GET /readyz`: 200 `ok` while Redis answers a PING
//! within the deadline, 503 otherwise (also before Redis was first reached).

use crate::service::State;
use axum::extract::State as Shared;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(check))
        .route("/readyz", get(check))
        .with_state(state)
}

async fn check(Shared(state): Shared<Arc<State>>) -> (StatusCode, &'static str) {
    if state.redis_answers().await {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable")
    }
}
