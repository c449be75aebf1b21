//! `faas-mesh-check <file> [--function <name>] [--namespace <ns>] [--stack <stack.yml>]`
//!
//! Checks a plugin configuration as the sidecar would, with the filter's own parser: the
//! operator's configuration file (JSON), or a rendered `envoyfilter.yaml` / `wasmplugin.yaml`.
//!
//! - refused: prints the line the sidecar logs (`invalid configuration: <key path>: <problem>`)
//!   on stderr and exits 1;
//! - accepted: prints `<file>: valid ...` and exits 0; with `--function`, the rules the sidecar of
//!   that function enforces (with `--stack`, narrowed by the function's `com.openfaas.mesh.*`
//!   annotations in that stack.yml, each shown applied or refused);
//! - a usage or I/O problem: exits 2.

use faas_mesh_tools::check::{
    compile, configuration_of, effective_rules, stack_annotations, summary,
};
use std::process::ExitCode;

const USAGE: &str = "usage: faas-mesh-check <config.json | envoyfilter.yaml | wasmplugin.yaml> \
                     [--function <name>] [--namespace <namespace>] [--stack <stack.yml>]";

fn main() -> ExitCode {
    let mut file = None;
    let mut function = None;
    let mut namespace = None;
    let mut stack = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--function" | "--namespace" | "--stack" => {
                let Some(value) = args.next() else {
                    eprintln!("faas-mesh-check: {arg} needs a value\n{USAGE}");
                    return ExitCode::from(2);
                };
                match arg.as_str() {
                    "--function" => function = Some(value),
                    "--namespace" => namespace = Some(value),
                    _ => stack = Some(value),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--version" => {
                // The release's version when built by `make release`, else the crate's.
                let version = option_env!("FAAS_MESH_VERSION").unwrap_or(env!("CARGO_PKG_VERSION"));
                println!("faas-mesh-check {version}");
                return ExitCode::SUCCESS;
            }
            other if file.is_none() && !other.starts_with("--") => file = Some(arg),
            other => {
                eprintln!("faas-mesh-check: unexpected argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(file) = file else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("faas-mesh-check: reading {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let configuration = match configuration_of(&file, &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("faas-mesh-check: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let annotations = match (&stack, &function) {
        (None, _) => Vec::new(),
        (Some(_), None) => {
            eprintln!("faas-mesh-check: --stack needs --function\n{USAGE}");
            return ExitCode::from(2);
        }
        (Some(path), Some(function)) => {
            let read = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| stack_annotations(&text, function));
            match read {
                Ok(annotations) => annotations,
                Err(e) => {
                    eprintln!("faas-mesh-check: {path}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    match compile(
        &configuration,
        function.as_deref(),
        namespace.as_deref(),
        &annotations,
    ) {
        Err(refusal) => {
            eprintln!("{refusal}");
            ExitCode::FAILURE
        }
        Ok((config, plan)) => {
            println!("{file}: {}", summary(&config));
            if function.is_some() {
                print!("{}", effective_rules(&config, &plan));
            }
            ExitCode::SUCCESS
        }
    }
}
