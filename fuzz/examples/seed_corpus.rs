//! Writes the seed corpora of both fuzz targets from the conformance
//! scenarios:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus -- \
//!     fixtures/scenarios fuzz/corpus
//! ```
//!
//! creates `<corpus>/codec/seed-<scenario>` and
//! `<corpus>/session/seed-<scenario>-<profile>` (plus a few hand-written
//! session inputs), `<corpus>/qcow2/seed-*` (generated image headers) and
//! `<corpus>/blockops/seed-<job type>-<profile>-<mode>` (block operations).
//! Existing files are overwritten; others are kept.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mock_qemu_fuzz::blockops;
use mock_qemu_fuzz::seed::{
    codec_seed, encode_session, extra_session_inputs, parse_scenario, profiles_for, qcow2_seeds,
    session_ops,
};
use mock_qemu_fuzz::session::SessionInput;

fn scenario_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            scenario_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "qmp") {
            out.push(path);
        }
    }
    Ok(())
}

fn run(scenarios: &Path, corpus: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    scenario_files(scenarios, &mut files)
        .map_err(|e| format!("reading {}: {e}", scenarios.display()))?;
    files.sort();
    if files.is_empty() {
        return Err(format!("no *.qmp under {}", scenarios.display()));
    }
    let codec_dir = corpus.join("codec");
    let session_dir = corpus.join("session");
    let qcow2_dir = corpus.join("qcow2");
    let blockops_dir = corpus.join("blockops");
    for d in [&codec_dir, &session_dir, &qcow2_dir, &blockops_dir] {
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let write = |path: PathBuf, bytes: &[u8]| {
        fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
    };

    let (mut n_codec, mut n_session, mut longest) = (0, 0, 0);
    for file in &files {
        let rel = file
            .strip_prefix(scenarios)
            .unwrap_or(file)
            .with_extension("");
        let name = rel.to_string_lossy().replace(['/', '\\'], "-");
        let text =
            fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        let client = parse_scenario(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        for step in &client.unknown {
            eprintln!(
                "seed-corpus: {}: skipped unknown step {step}",
                file.display()
            );
        }
        let seed = codec_seed(&client);
        longest = longest.max(seed.len());
        write(codec_dir.join(format!("seed-{name}")), &seed)?;
        n_codec += 1;
        for profile in profiles_for(&client.flavor) {
            let input = SessionInput {
                profile,
                start_paused: false,
                ops: session_ops(&client),
            };
            let bytes = encode_session(&input)?;
            longest = longest.max(bytes.len());
            write(session_dir.join(format!("seed-{name}-{profile:?}")), &bytes)?;
            n_session += 1;
        }
    }
    for (n, (name, input)) in extra_session_inputs().into_iter().enumerate() {
        let bytes = encode_session(&input)?;
        write(session_dir.join(format!("seed-extra-{n}-{name}")), &bytes)?;
        n_session += 1;
    }
    let qcow2 = qcow2_seeds();
    for (name, bytes) in &qcow2 {
        write(qcow2_dir.join(format!("seed-{name}")), bytes)?;
    }
    let block = blockops::seed_inputs();
    for (name, input) in &block {
        let bytes = blockops::encode_seed(input)?;
        write(blockops_dir.join(format!("seed-{name}")), &bytes)?;
    }
    println!(
        "seed-corpus: {} scenarios -> {n_codec} codec seeds, {n_session} session seeds \
         (longest {longest} bytes); {} qcow2 seeds; {} blockops seeds; in {}",
        files.len(),
        qcow2.len(),
        block.len(),
        corpus.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [scenarios, corpus] = args.as_slice() else {
        eprintln!("usage: seed_corpus <scenarios dir> <corpus dir>");
        return ExitCode::from(2);
    };
    match run(Path::new(scenarios), Path::new(corpus)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seed-corpus: {e}");
            ExitCode::FAILURE
        }
    }
}
