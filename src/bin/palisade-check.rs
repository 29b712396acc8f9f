//! `palisade-check FILE...`: validates palisade configuration documents the
//! way the filter's `on_configure` does, without starting a proxy. Exits 1
//! and prints the JSON path of the first error of each invalid file; `-`
//! reads standard input. Useful in CI pipelines that render configurations.
//!
//! `palisade-check --schema` prints the configuration's JSON Schema
//! (draft 7), derived from the configuration types: what editors and
//! nginx/kong/palisade.meta.json (`make kong-schema`) are made from.

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

/// The schema as JSON text: two-space indents, keys sorted, a final newline.
fn schema_text() -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&palisade::config::json_schema()).map(|text| text + "\n")
}

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths == ["--schema"] {
        return match schema_text() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("palisade-check: cannot write the schema: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if paths.is_empty() {
        eprintln!(
            "usage: palisade-check FILE... (- for standard input)\n       palisade-check --schema"
        );
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
