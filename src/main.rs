//! `apscore`: rank LLM preference pairs by alignment potential.
//!
//! This file parses the command line, sets up logging and hands each subcommand to the
//! library that owns it; see `apscore --help`.

mod args;
mod cli;
mod commands;
mod embedded;
mod exit_code;
mod job_file;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    tune_allocator();
    let argv = match job_file::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit_code::BAD_INPUT);
        }
    };
    let cli = Cli::parse_from(argv);
    init_logging(cli.log_format, cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => interruptible(commands::run::run(args)).await,
            Command::Rank(args) => interruptible(commands::rank::run(args)).await,
            Command::Coordinator(args) => interruptible(commands::coordinator::run(args)).await,
            Command::Worker(args) => commands::worker::run(args).await,
            Command::Status(args) => commands::status::run(args).await,
            // Without a handler of their own, a signal ends these at once.
            Command::Select(args) => commands::select::run(args).await,
            Command::Report(args) => commands::report::run(args).await,
            Command::Sample(args) => commands::sample::run(args).await,
            Command::Demo(args) => commands::demo::run(args).await,
            Command::InspectModel(args) => commands::inspect::run(args).await,
        }
    });
    // A task still busy (an interrupted job's CPU-bound step) must not hold the exit back.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::from(exit_code::of(&e))
        }
    }
}

/// Runs a job until it ends or SIGINT/SIGTERM arrives; interrupted, the job keeps what it
/// finished (its manifest) and the same command resumes it. The job runs as a task of its own,
/// so a signal is heard even while the job computes without yielding.
async fn interruptible(
    job: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) -> anyhow::Result<()> {
    let mut job = tokio::spawn(job);
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        done = &mut job => done?,
        _ = tokio::signal::ctrl_c() => {
            job.abort();
            Err(exit_code::Interrupted.into())
        }
        _ = terminate => {
            job.abort();
            Err(exit_code::Interrupted.into())
        }
    }
}

/// The error and its causes on one line, each said once: many library errors repeat their
/// source's message in their own.
fn render_error(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !parts.iter().any(|earlier| earlier.contains(&message)) {
            parts.push(message);
        }
    }
    parts.join(": ")
}

/// glibc's allocator, tuned for jobs that build and drop batches of tens of MiB:
/// - glibc gives each thread that allocates its own arena and keeps freed memory in it. A
///   job's big buffers are allocated on one runtime thread and freed on another, so with many
///   arenas the freed memory is rarely reused: two arenas cut the peak memory of a
///   10-million-row `rank` by about 15 % at no cost in speed;
/// - by default every block over 128 KiB to 32 MiB is mapped afresh and every freed one
///   unmapped, and the heap's free top is handed back over 128 KiB: the kernel then clears
///   each new page again. Blocks up to 32 MiB from the heap, and up to 256 MiB of free heap
///   kept for reuse, take a fifth off the system time of that `rank` (see docs/performance.md).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn init_logging(format: LogFormat, verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // RUST_LOG, when set, wins over -v/-q.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,apscore={default},apscore_core={default},apscore_worker={default},apscore_coordinator={default}"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
