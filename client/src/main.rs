//! `kvmisolate`: the command line of kvmisolate, a thin layer over the D-Bus proxies of
//! `kvmisolate-dbus`. See `kvmisolate --help` and docs/ARCHITECTURE.md (the CLI contract).

mod agent;
mod bench;
mod bus;
mod check;
mod cli;
mod cmd;
mod failure;
mod generate;
mod hook;
mod libvirt;
mod monitor;
mod output;
mod plan;
mod request;
mod status;
mod top;
mod topology;
mod words;

use crate::bus::Context;
use crate::cli::{Cli, Command, Invocation};
use crate::failure::Failure;

async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Context {
        address: cli.address.as_deref(),
        interactive: !cli.no_ask_password,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Isolate(a) => cmd::isolate::cmd(&ctx, a).await,
        Command::Release(a) => cmd::release::cmd(&ctx, a).await,
        Command::Status(a) => cmd::status::cmd(&ctx, a.json).await,
        Command::Run(a) => cmd::run::cmd(&ctx, a).await,
        Command::Monitor => cmd::monitor::cmd(&ctx).await,
        Command::Plan(a) => plan::run::run(&a, cli.quiet).map(|out| output::emit(&out)),
        Command::Check(a) => cmd::check::cmd(&ctx, a).await,
        Command::Bench(a) => bench::args::cmd_bench(a, ctx.quiet),
        Command::BenchLoad(a) => bench::args::cmd_bench_load(a),
        Command::Top(a) => cmd::top::cmd(&ctx, *a).await,
        Command::LibvirtHook(a) => hook::run::cmd(&ctx, a).await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let result = match cli::parse() {
        Invocation::Cli(cli) => run(cli).await,
        other => generate::run(other),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            // An empty message: the command has said everything (check's exit status 8/9).
            if !f.message.is_empty() {
                eprintln!("kvmisolate: {}", f.message);
            }
            std::process::ExitCode::from(f.code as u8)
        }
    }
}
