//! Scenario expectations (`<-` patterns, matchers, `expect-statuses`,
//! `await-event … timeout=`), data-driven: each `tests/expectations/*.qmp`
//! is played against the in-process mock (qemu-10.0, qsd) and says what
//! must come of it in its header:
//!
//! ```text
//! # verdict: pass | unmet | error
//! # unmet: LINE: TEXT      (verdict unmet; one per expectation not met, in order:
//!                           the failure names scenario line LINE and says TEXT)
//! # error: TEXT            (verdict error: the case could not be played; the error says TEXT)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use conformance::play::{play, PlayOptions};
use conformance::scenario::Scenario;
use conformance::target::InProcess;
use libtest_mimic::{Arguments, Failed, Trial};
use mock_qemu::profile::{Flavor, Version};

fn header<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# ")?.strip_prefix(key)?.strip_prefix(": "))
        .map(str::trim)
        .collect()
}

fn check(path: &Path) -> Result<(), Failed> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut scenario = Scenario::parse(&text, &name).map_err(|e| format!("{e:#}"))?;
    scenario.file = format!("tests/expectations/{name}");
    let verdict = header(&text, "verdict");
    let verdict = *verdict.first().ok_or("no '# verdict:' line")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(async {
        let mut target = InProcess::new(Version::V10_0, Flavor::Qsd)?;
        let opts = PlayOptions {
            timeout: Duration::from_secs(1),
            drop_duplicate_greeting: false,
        };
        play(&scenario, &mut target, &opts).await
    });
    match (verdict, result) {
        ("pass", Ok(p)) if p.unmet.is_empty() => Ok(()),
        ("unmet", Ok(p)) => {
            let want = header(&text, "unmet");
            let got: Vec<String> = p.unmet.iter().map(ToString::to_string).collect();
            if want.len() != got.len() {
                return Err(format!(
                    "expected {} unmet expectations, got {}:\n{}",
                    want.len(),
                    got.len(),
                    got.join("\n")
                )
                .into());
            }
            for (w, (u, g)) in want.iter().zip(p.unmet.iter().zip(&got)) {
                let (line, text) = w.split_once(": ").ok_or("# unmet: LINE: TEXT")?;
                if !u.at.ends_with(&format!(".qmp:{line}")) || !g.contains(text) {
                    return Err(format!("expected line {line} and {text:?}, got:\n{g}").into());
                }
            }
            Ok(())
        }
        ("error", Err(e)) => {
            let e = format!("{e:#}");
            let want = header(&text, "error");
            match want.iter().find(|w| !e.contains(*w)) {
                None => Ok(()),
                Some(w) => Err(format!("expected an error saying {w:?}, got: {e}").into()),
            }
        }
        (v, Ok(p)) => Err(format!(
            "expected {v}, got a played case with {} unmet expectations:\n{}",
            p.unmet.len(),
            p.unmet
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
        .into()),
        (v, Err(e)) => Err(format!("expected {v}, got an error: {e:#}").into()),
    }
}

fn main() {
    let args = Arguments::from_args();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expectations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("reading tests/expectations")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "qmp"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());
    let trials = files
        .into_iter()
        .map(|p| {
            let name = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            Trial::test(name, move || check(&p))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
