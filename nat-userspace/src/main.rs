//! natd: loads the XDP programs on the LAN and WAN interfaces, allocates
//! external ports when the fast path misses, ages mappings out, and answers
//! `status`, `sessions`, `stats`, `forwards`, `proxies` and `reload` from other
//! processes.

use std::process::ExitCode;

use clap::Parser as _;
use nat_userspace::{
    cli::{self, Cli, Cmd},
    serve,
};

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(serve::run(*args))),
        Cmd::Status { json } => cli::status(json),
        Cmd::Sessions { json, proto, inside, external } => nat_userspace::control::SessionFilter::new(proto.as_deref(), inside.as_deref(), external.as_deref())
            .and_then(|filter| cli::sessions(json, filter)),
        Cmd::Stats { json } => cli::stats(json),
        Cmd::Forwards { json } => cli::forwards(json),
        Cmd::Proxies { json } => cli::proxies(json),
        Cmd::Reload => cli::reload(),
        Cmd::Check { config } => cli::check(&config),
        Cmd::Down(args) => cli::down(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
