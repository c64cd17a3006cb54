//! The `concord` binary: `serve` (the default), `bench`, `repair`, `migrate`, `worker`.

mod dist;
mod layers;
mod runtime;
mod settings;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use settings::{LogFormat, ServeArgs};
use std::path::PathBuf;
use std::time::Duration;

/// Concord: a real-time collaboration and event-sync server.
///
/// Without a subcommand, `concord` runs `serve` with its defaults: embedded mode, listening on
/// 127.0.0.1:7400, with a SQLite database under ./concord-data.
#[derive(Parser)]
#[command(name = "concord", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket clients and the HTTP API (embedded mode: one process, SQLite).
    Serve(Box<ServeArgs>),
    /// Run an open-loop load benchmark against a running server.
    Bench(concord_bench::BenchArgs),
    /// Rebuild a doc room's document from its op log and save it as a fresh snapshot (for a
    /// room whose document cannot be loaded). Run it with the server stopped.
    Repair(RepairArgs),
    /// Apply the distributed mode's PostgreSQL schema (sqlx migrations; idempotent).
    Migrate(dist::MigrateArgs),
    /// Run a persistence worker of the distributed mode: Redis work streams into PostgreSQL.
    Worker(Box<dist::WorkerArgs>),
}

#[derive(Args)]
struct RepairArgs {
    /// Directory of the embedded SQLite database.
    #[arg(long, env = "CONCORD_DATA_DIR", default_value_os_t = settings::Deployment::default().data_dir)]
    data_dir: PathBuf,
    /// The doc room to repair.
    #[arg(long)]
    room: String,
}

/// `concord repair`: replays the room's whole op log (leaving out the lists that do not decode
/// or apply), saves the result as a snapshot at the room's head, and says what it did.
async fn repair(args: RepairArgs) -> anyhow::Result<()> {
    init_logs(LogFormat::Text);
    let room = concord_core::RoomId::new(&args.room)
        .map_err(|e| anyhow::anyhow!("bad room name {:?}: {e}", args.room))?;
    let path = args.data_dir.join("concord.db");
    if !path.exists() {
        anyhow::bail!("no database at {}", path.display());
    }
    let store = concord_server::store::SqliteStore::open(
        &path,
        true,
        64,
        concord_server::metrics::Metrics::new(),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let result = concord_server::room::doc::repair(&store, &room).await;
    concord_server::store::Store::close(&store).await;
    let done = result.map_err(|e| anyhow::anyhow!("repairing {room}: {e}"))?;
    println!(
        "repaired {room}: state rebuilt up to seq {} ({} bytes), {} op list(s) left out",
        done.seq, done.bytes, done.skipped
    );
    Ok(())
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCORD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves at the first SIGTERM or ctrl-c (graceful shutdown, bounded by
/// --shutdown-timeout); a second one exits the process at once with status 1.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let (first, rx) = tokio::sync::oneshot::channel();
    let mut term = terminate_signals();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutdown requested: draining (send the signal again to exit at once)");
        let _ = first.send(());
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::error!("second shutdown signal: exiting at once");
        std::process::exit(1);
    });
    async move {
        let _ = rx.await;
    }
}

/// SIGTERM as a stream (never fires where there is no SIGTERM, or it cannot be installed).
struct Terminate(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Terminate {
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.0 {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

fn terminate_signals() -> Terminate {
    #[cfg(unix)]
    return Terminate(
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
    );
    #[cfg(not(unix))]
    Terminate()
}

async fn serve(settings: layers::Settings) -> anyhow::Result<()> {
    let deployment = &settings.deployment;
    init_logs(deployment.log_format);
    // Every connection is a file descriptor: use the hard open-file limit, not the soft one.
    match concord_bench::raise_nofile_limit() {
        Ok((soft, _)) => tracing::debug!(open_files = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let config = runtime::config(&settings)?;
    tracing::info!(max_conns = config.conn_limit(), "connection limit");
    let listener = tokio::net::TcpListener::bind(deployment.listen)
        .await
        .with_context(|| format!("binding {}", deployment.listen))?;
    if !config.auth.enabled() {
        tracing::warn!(
            "authentication is off (--auth none): every client may do everything; development only"
        );
    }
    let data_dir = deployment.data_dir.display().to_string();
    let mut env = concord_server::Env::system();
    let mode = match &deployment.redis {
        Some(url) => {
            env.backend = Some(runtime::gateway_backend(&settings, url, &config).await?);
            "distributed mode (gateway)"
        }
        None => "embedded mode",
    };
    concord_server::run_with_ready(config, listener, shutdown_signal(), env, move |ready| {
        tracing::info!(addr = %ready.addr, data_dir, mode);
        if let Some(m) = ready.metrics_addr {
            println!("concord metrics listening on {m}");
        }
        // One line on stdout that scripts (and the tests) wait for: printed once the store is
        // open and connections are served.
        println!("concord listening on {}", ready.addr);
    })
    .await?;
    Ok(())
}

/// The `concord` command, with `serve`'s defaults filled in (see `layers::with_defaults`).
fn command() -> clap::Command {
    Cli::command().mut_subcommand("serve", layers::with_defaults)
}

/// `serve`'s settings from its matches (`concord` alone: from its defaults, the config file
/// named by `CONCORD_CONFIG` and the `CONCORD_*` variables); `None` once `--print-config` has
/// printed them.
fn serve_settings(matches: Option<&clap::ArgMatches>) -> anyhow::Result<Option<layers::Settings>> {
    let alone;
    let matches = match matches {
        Some(m) => m,
        None => {
            alone = layers::with_defaults(ServeArgs::augment_args(clap::Command::new("serve")))
                .get_matches_from(["serve"]);
            &alone
        }
    };
    let (args, settings) = layers::settings(matches)?;
    if args.print_config {
        print!("{}", layers::print(&settings));
        return Ok(None);
    }
    Ok(Some(settings))
}

fn main() -> anyhow::Result<()> {
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let serve_matches = matches.subcommand_matches("serve");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = match cli.command {
        None | Some(Command::Serve(_)) => match serve_settings(serve_matches)? {
            Some(settings) => runtime.block_on(serve(settings)),
            None => Ok(()),
        },
        Some(Command::Bench(args)) => runtime.block_on(concord_bench::run(args)),
        Some(Command::Repair(args)) => runtime.block_on(repair(args)),
        Some(Command::Migrate(args)) => runtime.block_on(dist::migrate(args)),
        Some(Command::Worker(args)) => runtime.block_on(dist::worker(*args)),
    };
    // After a shutdown deadline, tasks may still hang: do not wait for them again.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
