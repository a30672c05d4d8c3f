//! `refmaster serve`: the mastering studio as a web page on the user's own machine.
//!
//! One page (every asset embedded in the binary, no network) and the JSON API it uses, which
//! scripts can use too. Every job runs [`crate::job::run`], the function the command line runs,
//! so a job's master is bit-identical to the command line's with the same inputs and options.
//!
//! Safe by default, because a local web server is reachable from every page the user's browser
//! opens:
//! - it listens on 127.0.0.1 unless `--host` says otherwise;
//! - a request whose `Host` is not the served address is refused (a DNS-rebinding page would
//!   send its own name), and so is a state-changing request from another site's page
//!   (`Origin`, `Sec-Fetch-Site`);
//! - job ids are 128 random bits from the operating system, so a job's URL cannot be guessed;
//! - no file path is ever taken from the client: uploads are saved under names the server
//!   chooses, in a private (0700) temporary folder removed on exit and after a retention time;
//! - an upload over `--max-upload-mb` is refused with 413 while it streams to disk, and what was
//!   written of it is removed;
//! - at most `--jobs` jobs run at once (each within the per-job memory budget); the rest queue.

mod api;
mod guard;
mod jobs;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use jobs::JobId;

/// How the server is started (the `serve` subcommand's options).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on (default 127.0.0.1).
    pub host: IpAddr,
    /// Port (0: any free port; the address printed says which).
    pub port: u16,
    /// Largest request body (all uploads of one job together), bytes.
    pub max_upload_bytes: u64,
    /// Jobs run at once; more wait in a queue.
    pub jobs: usize,
    /// Memory budget of each job, MiB (the `--memory-budget` every job runs with, at most).
    pub job_memory_mib: u64,
    /// How long a job's files are kept after it finishes.
    pub retention: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8440,
            max_upload_bytes: 1024 << 20,
            jobs: 1,
            job_memory_mib: crate::job::DEFAULT_MEMORY_BUDGET_MIB,
            retention: Duration::from_secs(2 * 3600),
        }
    }
}

/// The server's shared state.
pub(crate) struct AppState {
    pub config: ServeConfig,
    /// The address actually served (with the port chosen when `port` was 0).
    pub addr: SocketAddr,
    pub jobs: jobs::JobStore,
}

/// Starts the server, calls `ready` with its URL once it listens, and serves until Ctrl-C or
/// SIGTERM; the temporary folder (uploads and results) is removed before it returns.
pub fn serve(config: ServeConfig, ready: impl FnOnce(&str)) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(config.jobs.max(1) + 4)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.host, config.port)).await?;
        let addr = listener.local_addr()?;
        let store = jobs::JobStore::new(config.jobs)?;
        let state = Arc::new(AppState { config, addr, jobs: store });
        let app = api::router(state.clone());
        let url = format!("http://{}/", display_host(addr));
        ready(&url);
        let sweeper = tokio::spawn(jobs::sweep_expired(state.clone()));
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await;
        sweeper.abort();
        state.jobs.remove_all();
        served
    })
}

/// `127.0.0.1:8440`, `[::1]:8440`.
fn display_host(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
