//! The stand-in OpenFaaS function on its own, for manual runs and benchmarks:
//! `stand-in-function [port]` (default 8080). Ctrl-C stops it.

use faas_mesh_integration::stand_in::StandInFunction;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let port = match std::env::args().nth(1).map(|p| p.parse::<u16>()) {
        None => 8080,
        Some(Ok(port)) => port,
        Some(Err(e)) => {
            eprintln!("usage: stand-in-function [port] ({e})");
            return ExitCode::from(2);
        }
    };
    let function = match StandInFunction::start_on(port).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("stand-in-function: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "stand-in function on {} (GET /_/health, /_/ready; anything else is echoed)",
        function.addr()
    );
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
