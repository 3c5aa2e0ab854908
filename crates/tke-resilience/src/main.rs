//! `tke-resilience`: one binary, one subcommand per component.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tke-resilience",
    version,
    about = "Burst pending pods to serverless cloud containers through a virtual node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version of this binary.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("tke-resilience {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
