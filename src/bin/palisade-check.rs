//! `palisade-check FILE...`: validates palisade configuration documents the
//! way the filter's `on_configure` does, without starting a proxy. Exits 1
//! and prints the JSON path of the first error of each invalid file; `-`
//! reads standard input. Useful in CI pipelines that render configurations.

use palisade::config::Policy;
use std::io::Read;
use std::process::ExitCode;

fn read(path: &str) -> std::io::Result<Vec<u8>> {
    if path == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(path)
    }
}

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: palisade-check FILE... (- for standard input)");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for path in &paths {
        match read(path) {
            Err(e) => {
                eprintln!("{path}: cannot read: {e}");
                failed = true;
            }
            Ok(bytes) => match Policy::from_json(&bytes) {
                Ok(_) => println!("{path}: ok"),
                Err(e) => {
                    println!("{path}: {e}");
                    failed = true;
                }
            },
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
