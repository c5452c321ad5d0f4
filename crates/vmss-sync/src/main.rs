//! `vmss-sync`: thin main. Parses the command line, loads the configuration, sets up
//! logging and hands over to the library.

// As in the library: failures become exit codes and messages, never panics.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vmss_sync::azure::auth::Env;
use vmss_sync::cli;
use vmss_sync::config;
use vmss_sync::daemon::{self, Daemon, DaemonError};
use vmss_sync::reconcile::Mode;

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "vmss-sync",
    version,
    about = "Keeps NGINX Plus, HAProxy and open-source NGINX upstreams, Azure Route Server \
             peerings and Azure Load Balancer backend pools in sync with Azure Virtual Machine \
             Scale Sets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: reconcile every sync_interval until SIGTERM.
    Run(Common),
    /// One full reconcile of every upstream, then exit (0 in sync, 1 failed, 2 bad config).
    Once(Common),
    /// Show what a reconcile would add, remove and update; write nothing.
    Plan(Common),
    /// Check the configuration file without network access.
    Validate(Common),
    /// Write the man page or a shell completion script to standard output (packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generated,
    },
}

#[derive(Subcommand, Debug)]
enum Generated {
    /// The man page, vmss-sync(1), in roff.
    Man,
    /// The completion script for a shell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args, Debug)]
struct Common {
    /// Configuration file (nginx-asg-sync's format).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "/etc/nginx/config.yaml"
    )]
    config: PathBuf,
    /// Also append logs to this file (as nginx-asg-sync's -log_path).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = cli::translate_legacy_args(std::env::args_os().collect());
    let cli = Cli::parse_from(args);
    let (kind, common) = match &cli.command {
        Command::Run(c) => ("run", c),
        Command::Once(c) => ("once", c),
        Command::Plan(c) => ("plan", c),
        Command::Validate(c) => ("validate", c),
        Command::Generate { what } => return generate(what),
    };
    let env = Env::from_process();
    let cfg = match config::load(&common.config, &|k| env.get(k).map(str::to_string)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("vmss-sync: the configuration is invalid; nothing was changed.");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if kind == "validate" {
        println!(
            "{}: configuration is valid ({} upstream{}).",
            common.config.display(),
            cfg.upstreams.len(),
            if cfg.upstreams.len() == 1 { "" } else { "s" }
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = cli::init_logging(&cfg, common.log_file.as_deref()) {
        eprintln!("vmss-sync: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match vmss_sync::daemon::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmss-sync: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match kind {
            "run" => run(common.config.clone(), env).await,
            "once" => once(&cfg, &env, Mode::Apply).await,
            _ => once(&cfg, &env, Mode::DryRun).await,
        }
    })
}

/// Writes the man page or a completion script, both made from the clap definition above.
fn generate(what: &Generated) -> ExitCode {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    let written = match what {
        Generated::Man => vmss_sync::man::render(cmd, &mut out),
        Generated::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "vmss-sync", &mut out);
            Ok(())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmss-sync: cannot write: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn once(cfg: &config::Config, env: &Env, mode: Mode) -> ExitCode {
    let reconciler = match daemon::build(cfg, env) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmss-sync: {e}");
            return ExitCode::FAILURE;
        }
    };
    let problems = reconciler.startup_check().await;
    if mode == Mode::Apply && !problems.is_empty() {
        eprintln!("{}", daemon::format_problems(&problems));
        return ExitCode::FAILURE;
    }
    let report = reconciler.reconcile(mode).await;
    if mode == Mode::DryRun {
        print!("{}", cli::render_plan(&report, &problems));
    } else {
        print!("{}", cli::render_summary(&report));
    }
    if report.all_in_sync() && problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(path: PathBuf, env: Env) -> ExitCode {
    // Signal handlers first: start-up reads ARM and may wait out its Retry-After for a
    // long time, and a SIGTERM or SIGHUP then must not kill the process.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    if let Err(e) = cli::forward_signals(tx) {
        tracing::error!("Cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let daemon = match Daemon::start_interruptible(path, env, &mut rx).await {
        Ok(Some(d)) => d,
        Ok(None) => return ExitCode::SUCCESS,
        Err(DaemonError::Config(e)) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            tracing::error!("Cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Type=notify: ready once the configuration is loaded and checked and SIGHUP is
    // handled (no-op outside systemd: NOTIFY_SOCKET unset).
    daemon::notify_systemd(&[sd_notify::NotifyState::Ready]);
    daemon.run(rx).await;
    ExitCode::SUCCESS
}
