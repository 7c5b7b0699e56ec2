//! `meter serve`: binds the listeners, prints the base URLs to export, runs until SIGTERM/SIGINT.

use std::net::SocketAddr;

use super::{Cli, Failure};
use crate::app::{self, Listeners};
use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Proxy address; overrides `server.listen` (port 0 picks a free port)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Metrics address; overrides `server.metrics_listen`
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

pub fn run(cli: &Cli, args: &ServeArgs) -> Result<(), Failure> {
    let mut config = cli.load_config()?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(listen) = args.metrics_listen {
        config.server.metrics_listen = listen;
    }
    if config.forward.enabled {
        // Before the banner: forward-proxy mode without its CA is a setup mistake, not a
        // runtime failure.
        let paths = crate::ca::CaPaths::in_dir(&config.ca_dir());
        for (path, file) in [
            (&paths.cert, crate::ca::CERT_FILE),
            (&paths.key, crate::ca::KEY_FILE),
        ] {
            if !path.is_file() {
                return Err(Failure::Usage(
                    crate::ca::CaError::Missing {
                        dir: paths.dir.display().to_string(),
                        file,
                    }
                    .into(),
                ));
            }
        }
        crate::ca::check_key_mode(&paths.key).map_err(|err| Failure::Usage(err.into()))?;
    }
    // One CPU (a container's share, taskset) or `worker_threads = 1`: a single-threaded runtime,
    // which spends about a third less CPU per call than the work-stealing one on one core.
    let threads = match config.server.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("meter")
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .thread_name("meter")
            .build()
    }
    .map_err(|err| Failure::Runtime(err.into()))?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(&config).await.map_err(Failure::Runtime)?;
        let proxy = listeners
            .proxy
            .local_addr()
            .map_err(|e| Failure::Runtime(e.into()))?;
        let metrics = listeners
            .metrics
            .local_addr()
            .map_err(|e| Failure::Runtime(e.into()))?;
        print_banner(&config, proxy, metrics);
        app::run(config, listeners, app::shutdown_signal())
            .await
            .map_err(Failure::Runtime)
    })
}

/// The first lines on stdout: where meter listens and what to export. Tests read the first line.
fn print_banner(config: &Config, proxy: SocketAddr, metrics: SocketAddr) {
    use std::io::Write;
    let base = format!("http://{proxy}");
    let mut out = String::new();
    out.push_str(&format!(
        "meter listening on {base} (metrics http://{metrics}/metrics), ledger {}\n",
        config.store.path.display()
    ));
    out.push_str("point your agents at meter:\n");
    for (var, suffix) in [
        ("OPENAI_BASE_URL", "/openai/v1"),
        ("ANTHROPIC_BASE_URL", "/anthropic"),
        ("GOOGLE_GEMINI_BASE_URL", "/gemini"),
        ("OPENROUTER_BASE_URL", "/openrouter/v1"),
    ] {
        out.push_str(&format!("  export {var}={base}{suffix}\n"));
    }
    let others: Vec<String> = config
        .providers
        .iter()
        .filter(|p| {
            !matches!(
                p.name.as_str(),
                "openai" | "anthropic" | "gemini" | "openrouter"
            )
        })
        .map(|p| format!("{base}/{}", p.name))
        .collect();
    out.push_str(&format!("  other providers: {}\n", others.join(" ")));
    if config.forward.enabled {
        let cert = crate::ca::CaPaths::in_dir(&config.ca_dir()).cert;
        out.push_str(&format!(
            "forward-proxy mode: export HTTPS_PROXY={base} and trust {} (meter ca path)\n",
            std::path::absolute(&cert).unwrap_or(cert).display()
        ));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
