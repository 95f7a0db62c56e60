//! The `seckill` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

// glibc's malloc was a quarter of the server's instructions per purchase
// under callgrind (a request allocates and frees on different worker
// threads); mimalloc's thread-local free lists cost a fraction of that.
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
