//! `fairway-bench`: see the library's documentation, and
//! `docs/benchmarks.md` for what each scenario measures.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "fairway-bench", version, about = "Measure a Fairway broker process started here")]
struct Args {
    #[command(flatten)]
    bench: fairway_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut out = std::io::stdout();
    match fairway_bench::run(args.bench, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fairway-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
