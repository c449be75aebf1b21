//! `make demo`: the filter in a local Envoy in front of a stand-in function, for an operator to
//! curl. Ctrl-C stops both.
//!
//!     demo [--config <plugin-config.json>] [--port 10000] [--admin-port 9901] [--function-port 0]
//!          [--label faas_function=env]

use faas_mesh_integration::envoy::{ConfigOutcome, Envoy, EnvoyOptions};
use faas_mesh_integration::stand_in::StandInFunction;
use std::process::ExitCode;

struct Args {
    config: Option<String>,
    port: u16,
    admin_port: u16,
    function_port: u16,
    label: Option<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        port: 10000,
        admin_port: 9901,
        function_port: 0,
        label: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => {
                let path = value()?;
                args.config = Some(
                    std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?,
                );
            }
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--admin-port" => {
                args.admin_port = value()?.parse().map_err(|e| format!("--admin-port: {e}"))?
            }
            "--function-port" => {
                args.function_port = value()?
                    .parse()
                    .map_err(|e| format!("--function-port: {e}"))?
            }
            "--label" => {
                let pair = value()?;
                let (k, v) = pair
                    .split_once('=')
                    .ok_or("--label expects key=value (for example faas_function=env)")?;
                args.label = Some((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => {
                return Err(
                    "usage: demo [--config FILE] [--port 10000] [--admin-port 9901] \
                            [--function-port 0] [--label faas_function=env]"
                        .to_string(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let function = StandInFunction::start_on(args.function_port)
        .await
        .map_err(|e| format!("starting the stand-in function: {e}"))?;
    let mut options = EnvoyOptions::for_function(function.port());
    options.listener_port = args.port;
    options.admin_port = args.admin_port;
    if let Some(config) = args.config {
        options.plugin_config = config;
    }
    if let Some((k, v)) = args.label {
        options.labels = vec![(k, v)];
    }
    let name = options
        .labels
        .first()
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let envoy = Envoy::start(options)
        .await
        .map_err(|e| format!("starting Envoy: {e}"))?;
    if envoy.initial_config() == ConfigOutcome::Rejected {
        let log = envoy.log();
        let reason = log
            .lines()
            .rfind(|l| l.contains("invalid configuration"))
            .unwrap_or("see the Envoy log");
        return Err(format!("the filter refused its configuration: {reason}"));
    }
    let port = envoy.addr().port();
    println!(
        "faas-mesh-filter is running in Envoy on 127.0.0.1:{port} (admin 127.0.0.1:{admin}), \
         in front of a stand-in function {name:?} on 127.0.0.1:{fport}.\n\
         Try:\n  \
           curl -i 'localhost:{port}/function/{name}/a/b?x=1'     # rewritten to /a/b?x=1, call id and timing added\n  \
           curl -i localhost:{port}/function/other/               # another function: 404 from the filter\n  \
           curl -i -H 'X-Call-Id: my-id-1' localhost:{port}/     # a caller's call id is kept\n  \
           curl -s localhost:{admin}/stats | grep faas-mesh       # the filter's configuration counters\n\
         Ctrl-C stops.",
        admin = envoy.admin_addr().port(),
        fport = function.port(),
    );
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("waiting for Ctrl-C: {e}"))?;
    println!("stopping");
    drop(envoy);
    drop(function);
    Ok(())
}
