//! palisade-ratelimit: Envoy's rate-limit service protocol over Limitador
//! and Redis, for palisade's global mode. See README.md.

pub mod config;
pub mod descriptor;
mod health;
pub mod log;
pub mod service;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

pub use config::Config;

/// A running service: its two listeners, the Redis connector and a switch
/// that stops them.
pub struct Handle {
    pub grpc_addr: SocketAddr,
    pub health_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds both listeners and starts serving; Redis is reached in the
/// background (requests get UNAVAILABLE until then). Fails only when an
/// address cannot be bound.
pub async fn start(config: Config) -> Result<Handle, String> {
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", config.listen))?;
    let health = TcpListener::bind(config.health_listen)
        .await
        .map_err(|e| format!("--health-listen {}: {e}", config.health_listen))?;
    let grpc_addr = grpc.local_addr().map_err(|e| e.to_string())?;
    let health_addr = health.local_addr().map_err(|e| e.to_string())?;

    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let state = service::State::new(config.redis_timeout);

    let connector = {
        let state = state.clone();
        let stop = until_stopped();
        let info = config.redis.clone();
        tokio::spawn(async move { state.connect(info, stop).await })
    };
    let sweeper = {
        let state = state.clone();
        let stop = until_stopped();
        let every = config.sweep_interval;
        tokio::spawn(async move { state.sweep(every, stop).await })
    };
    let grpc_server = {
        let service = RateLimitServiceServer::new(service::RateLimiter::new(state.clone()));
        let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
        let stop = until_stopped();
        tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop)
                .await
            {
                log::error(format_args!("gRPC server: {e}"));
            }
        })
    };
    let health_server = {
        let router = health::router(state);
        let stop = until_stopped();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(health, router)
                .with_graceful_shutdown(stop)
                .await
            {
                log::error(format_args!("health server: {e}"));
            }
        })
    };
    Ok(Handle {
        grpc_addr,
        health_addr,
        stop,
        tasks: vec![connector, sweeper, grpc_server, health_server],
    })
}

impl Handle {
    /// Stops accepting, lets requests in flight finish for up to `grace`,
    /// then drops what is left.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let aborts: Vec<_> = self.tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for task in self.tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            for abort in aborts {
                abort.abort();
            }
        }
    }
}
