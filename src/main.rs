//! The `oddscache` binary: parse arguments, start telemetry, load and
//! validate the config (exit 64 on a bad one, before any port is bound),
//! then run until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use oddscache::config::{Config, ConfigError, Overrides, ADMIN_TOKEN_ENV, SHIPPED};
use oddscache::{shutdown, Listeners};
use tokio::net::TcpListener;

/// Sidecar reverse-proxy cache for live-odds APIs.
#[derive(Parser, Debug)]
#[command(name = "oddscache", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate the config, print the effective config, exit 0 (2 on errors).
    Check(RunArgs),
    /// Run the built-in odds API simulator with the sidecar in front of it.
    Demo(DemoArgs),
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Config file [default: config.toml].
    #[arg(long, env = "ODDSCACHE_CONFIG")]
    config: Option<PathBuf>,
    /// Proxy listen address [default: 0.0.0.0:8080].
    #[arg(long, env = "ODDSCACHE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Admin listen address [default: 127.0.0.1:9090].
    #[arg(long, env = "ODDSCACHE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Upstream odds API, http://host:port [default: http://127.0.0.1:8000].
    #[arg(long, env = "ODDSCACHE_UPSTREAM")]
    upstream: Option<String>,
    /// Redis URL; without it the sidecar runs local-only.
    #[arg(long, env = "ODDSCACHE_REDIS_URL")]
    redis_url: Option<String>,
    /// Names this replica in events [default: the hostname].
    #[arg(long, env = "ODDSCACHE_REPLICA_ID")]
    replica_id: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args, Debug, Clone)]
struct LogArgs {
    /// Log format [default: json when stdout is not a terminal, else text].
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
}

#[derive(Args, Debug, Clone)]
struct DemoArgs {
    /// Where the sidecar listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the admin port listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Where the simulator listens (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    sim_listen: SocketAddr,
    /// Where the example page that subscribes to change hints is served.
    #[arg(long, default_value = "127.0.0.1:8081")]
    page_listen: SocketAddr,
    /// Do not run the built-in browsing load (then nothing passes through
    /// the sidecar, and it notices no change, until you browse yourself).
    #[arg(long)]
    no_browse: bool,
    /// Optional Redis URL, to try the fleet features.
    #[arg(long, env = "ODDSCACHE_REDIS_URL")]
    redis_url: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

const EXIT_CONFIG: u8 = 64;
const EXIT_CHECK_FAILED: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check(args)) => check(&args),
        Some(Command::Demo(args)) => {
            init_logs(args.log.log_format);
            report(runtime().and_then(|rt| rt.block_on(demo(args))))
        }
        None => {
            init_logs(cli.run.log.log_format);
            let config = match load(&cli.run) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("oddscache: invalid configuration:\n{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            report(runtime().and_then(|rt| rt.block_on(serve(config))))
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oddscache: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One worker per CPU the process may use (cgroup quotas included). On a
/// single CPU, the usual sidecar budget, a current-thread runtime skips the
/// work-stealing machinery, as the benchmark's limit server does.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cpus);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

fn overrides(args: &RunArgs) -> Overrides {
    Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        upstream: args.upstream.clone(),
        redis_url: args.redis_url.clone(),
        replica_id: args.replica_id.clone(),
        admin_token: std::env::var(ADMIN_TOKEN_ENV).ok(),
    }
}

fn load(args: &RunArgs) -> Result<Config, ConfigError> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("config.toml"));
    Config::load(&path, args.config.is_some(), &overrides(args))
}

fn check(args: &RunArgs) -> ExitCode {
    match load(args) {
        Ok(config) => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CHECK_FAILED)
        }
    }
}

/// Serves both ports until SIGTERM or SIGINT, then drains.
async fn run_until_signal(
    config: Config,
    proxy: TcpListener,
    admin: TcpListener,
) -> anyhow::Result<()> {
    let listeners = Listeners {
        proxy,
        admin: Some(admin),
    };
    oddscache::run(config, listeners, shutdown::os_signal()).await?;
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let proxy = TcpListener::bind(config.proxy.listen)
        .await
        .with_context(|| format!("cannot listen on {} (proxy.listen)", config.proxy.listen))?;
    let admin = bind_admin(&config).await?;
    run_until_signal(config, proxy, admin).await?;
    Ok(())
}

async fn bind_admin(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))
}

/// The demo's built-in browsing load, pages per second: enough that every
/// game's odds pass through the sidecar every few seconds.
const BROWSE_PER_SECOND: u32 = 20;

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    use oddscache::demo::{SimConfig, Simulator};
    let sim_listener = TcpListener::bind(args.sim_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--sim-listen)", args.sim_listen))?;
    let sim_addr = sim_listener.local_addr()?;
    let overrides = Overrides {
        listen: Some(args.listen),
        admin_listen: Some(args.admin_listen),
        upstream: Some(format!("http://{sim_addr}")),
        redis_url: args.redis_url.clone(),
        admin_token: std::env::var(ADMIN_TOKEN_ENV).ok(),
        ..Overrides::default()
    };
    let mut config =
        Config::from_toml(SHIPPED, &overrides).context("the shipped config is invalid")?;
    let page_listener = TcpListener::bind(args.page_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--page-listen)", args.page_listen))?;
    let page_origin = format!("http://{}", page_listener.local_addr()?);
    // The example page is another origin: let its EventSource in.
    let push = config.push.get_or_insert_with(Default::default);
    push.allow_origins.push(page_origin.clone());
    let push_path = push.path.clone();
    let proxy = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (--listen); is another demo running?",
            args.listen
        )
    })?;
    let admin = bind_admin(&config).await?;
    let sim = Simulator::new(SimConfig::default());
    let (sim_trigger, sim_signal) = shutdown::channel();
    let sim_task = tokio::spawn(oddscache::demo::serve(
        sim.clone(),
        sim_listener,
        sim_signal.clone(),
    ));
    let base = format!("http://{}", proxy.local_addr()?);
    let games = sim.game_ids();
    let game = games.first().cloned().unwrap_or_else(|| "g-1001".into());
    let page_task = tokio::spawn(oddscache::demo::page::serve(
        page_listener,
        oddscache::demo::page::render(&base, &push_path),
        sim_signal.clone(),
    ));
    let browse_task = (!args.no_browse).then(|| {
        tokio::spawn(oddscache::demo::browse::run(
            base.clone(),
            games.clone(),
            BROWSE_PER_SECOND,
            sim_signal.clone(),
        ))
    });
    println!("oddscache demo: simulator on http://{sim_addr}, sidecar on {base}");
    println!("try:");
    println!("  curl -i {base}/api/v1/games/{game}/odds      # MISS, then HIT");
    println!("  curl -i '{base}/api/v1/games?sport_id=soccer'");
    println!("  curl -i {base}/api/v1/sidebar/soccer/epl");
    println!("  curl -i {base}/api/v1/sports");
    let admin_base = format!("http://{}", admin.local_addr()?);
    println!("admin port on {admin_base}:");
    println!("  curl {admin_base}/api/v1/shared/cache/stats");
    println!("  curl {admin_base}/api/v1/shared/cache/invalidation/stats");
    println!("  curl '{admin_base}/api/v1/shared/cache/invalidation/events?limit=10'");
    println!("  curl -N {admin_base}/api/v1/shared/cache/invalidation/events/stream");
    println!("  curl {admin_base}/metrics");
    println!("  curl {admin_base}/healthz {admin_base}/readyz");
    if config.admin.token.is_some() {
        println!("  curl -X POST -H \"Authorization: Bearer $ODDSCACHE_ADMIN_TOKEN\" \\");
        println!(
            "       -d '{{\"game_id\": \"{game}\"}}' {admin_base}/api/v1/shared/cache/invalidate"
        );
    } else {
        println!("  (set ODDSCACHE_ADMIN_TOKEN to enable POST {admin_base}/api/v1/shared/cache/invalidate)");
    }
    println!("  curl -N '{base}{push_path}?game_id={game}'   # change hints (SSE)");
    println!("live pages:");
    println!("  {admin_base}/          the SREs' page: events, rate, hit ratio, fleet");
    println!("  {page_origin}/          an odds page that refetches a game when its hint arrives");
    if args.no_browse {
        println!(
            "no browsing load (--no-browse): browse the URLs above to make changes pass through."
        );
    } else {
        println!(
            "a built-in browsing load asks the sidecar for {BROWSE_PER_SECOND} pages a second (--no-browse turns it off)."
        );
    }
    println!("statuses and odds move every few seconds; watch X-Cache and Age. Ctrl-C stops.");
    run_until_signal(config, proxy, admin).await?;
    sim_trigger.fire();
    let _ = sim_task.await;
    let _ = page_task.await;
    if let Some(browse) = browse_task {
        let _ = browse.await;
    }
    Ok(())
}

/// Without `RUST_LOG`: the sidecar's own lines from INFO, and the `redis`
/// crate's only from ERROR. During a node outage that crate warns once a
/// second per dead node, which floods the log pipeline just when people
/// read it; the sidecar's own state-change lines say what matters.
/// `RUST_LOG=info,redis=warn` turns them back on.
const DEFAULT_LOG_FILTER: &str = "info,redis=error";

fn init_logs(format: Option<LogFormat>) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
