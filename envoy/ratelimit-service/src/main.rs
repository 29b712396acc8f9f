use palisade_ratelimit::config::{self, Command, USAGE};
use palisade_ratelimit::log;
use std::process::ExitCode;
use std::time::Duration;

/// How long requests in flight may take to finish after SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let command = config::parse(std::env::args().skip(1), |name| std::env::var(name).ok());
    let config = match command {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => return print(USAGE),
        Ok(Command::Version) => {
            return print(&format!(
                "palisade-ratelimit {}\n",
                env!("CARGO_PKG_VERSION")
            ))
        }
        Err(e) => {
            log::error(format_args!("{e}"));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error(format_args!("starting the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let handle = match palisade_ratelimit::start(config.clone()).await {
            Ok(handle) => handle,
            Err(e) => {
                log::error(e);
                return ExitCode::FAILURE;
            }
        };
        log::info(format_args!(
            "palisade-ratelimit {}: gRPC on {}, health on {}, Redis at {} (deadline {} ms)",
            env!("CARGO_PKG_VERSION"),
            handle.grpc_addr,
            handle.health_addr,
            config.redis_display(),
            config.redis_timeout.as_millis()
        ));
        match wait_for_signal().await {
            Ok(signal) => log::info(format_args!("{signal}: shutting down")),
            Err(e) => log::error(format_args!("listening for signals: {e}; shutting down")),
        }
        handle.shutdown(GRACE).await;
        ExitCode::SUCCESS
    })
}

fn print(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
