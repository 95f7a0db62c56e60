//! The `seckill` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

// glibc's malloc and free were a quarter of the server's instructions per
// purchase under callgrind; with mimalloc a purchase takes 16% fewer (bench/results/
// 2026-11-27-cost/README.md, "The allocator, `lua-batch`'s writes, and
// Redis's floor").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = seckill::cli::Cli::parse();
    match seckill::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line: the cause a user needs.
            eprintln!("seckill: {err:#}");
            ExitCode::FAILURE
        }
    }
}
