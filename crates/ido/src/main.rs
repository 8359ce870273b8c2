//! `ido`: the image distribution operator and CLI. See `cli.rs` for the commands.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
