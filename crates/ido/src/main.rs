//! `ido`: the image distribution operator and CLI. See `cli.rs` for the commands.

mod build;
mod cache;
mod cli;
mod import;
mod kubelet;
mod progress;
mod signals;
mod sync;
mod upload;

fn main() -> std::process::ExitCode {
    cli::main()
}
