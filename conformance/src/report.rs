//! Run results and the reports written from them: the human report (on
//! stdout, by the CLI), JUnit XML and JSON.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

/// A case's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Matches the golden transcript.
    Pass,
    /// Differs, or could not run.
    Fail(String),
    /// Differs, and is listed as a known divergence (with its reason).
    KnownFail(String),
    /// Listed as a known divergence but passes: the list must shrink.
    UnexpectedPass(String),
    /// Not exercised (a client check whose situation never arose): why.
    Skipped(String),
}

impl Verdict {
    /// Whether the run fails because of this case.
    pub fn fails_run(&self) -> bool {
        matches!(self, Verdict::Fail(_) | Verdict::UnexpectedPass(_))
    }
}

/// One case against one target.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// `qemu-10.0/qsd`.
    pub profile: String,
    /// `protocol/nesting-limit`.
    pub id: String,
    /// The scenario's one-line description.
    pub description: String,
    /// What QEMU behaviour it checks.
    pub checks: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Wall time.
    pub time: Duration,
}

/// Writes a JUnit XML report: one suite per profile, one case per scenario.
pub fn write_junit(path: &Path, target: &str, results: &[CaseResult]) -> Result<()> {
    let mut report = Report::new(format!("qmp-conform {target}"));
    let mut profiles: Vec<&str> = results.iter().map(|r| r.profile.as_str()).collect();
    profiles.dedup();
    for p in profiles {
        let mut suite = TestSuite::new(p);
        for r in results.iter().filter(|r| r.profile == p) {
            let status = match &r.verdict {
                Verdict::Pass => TestCaseStatus::success(),
                Verdict::Fail(d) | Verdict::UnexpectedPass(d) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(r.description.clone());
                    s.set_description(d.clone());
                    s
                }
                Verdict::KnownFail(reason) => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(format!("known divergence: {reason}"));
                    s
                }
                Verdict::Skipped(reason) => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(reason.clone());
                    s
                }
            };
            let mut case = TestCase::new(r.id.clone(), status);
            case.set_classname(format!("{p}.{}", r.id.split('/').next().unwrap_or("")));
            case.set_time(r.time);
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    let xml = report.to_string().context("writing JUnit XML")?;
    std::fs::write(path, xml).with_context(|| format!("writing {}", path.display()))
}

/// Writes a JSON report: `{"target", "passed", "failed", "skipped", "cases": [...]}`.
pub fn write_json(path: &Path, target: &str, results: &[CaseResult]) -> Result<()> {
    let cases: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let (verdict, detail) = match &r.verdict {
                Verdict::Pass => ("pass", None),
                Verdict::Fail(d) => ("fail", Some(d.clone())),
                Verdict::KnownFail(d) => ("known-divergence", Some(d.clone())),
                Verdict::UnexpectedPass(d) => ("unexpected-pass", Some(d.clone())),
                Verdict::Skipped(d) => ("skipped", Some(d.clone())),
            };
            serde_json::json!({
                "profile": r.profile, "id": r.id, "description": r.description, "checks": r.checks,
                "verdict": verdict, "detail": detail, "seconds": r.time.as_secs_f64(),
            })
        })
        .collect();
    let failed = results.iter().filter(|r| r.verdict.fails_run()).count();
    let skipped = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Skipped(_)))
        .count();
    let v = serde_json::json!({
        "target": target,
        "passed": results.len() - failed - skipped,
        "failed": failed,
        "skipped": skipped,
        "cases": cases,
    });
    let text = serde_json::to_string_pretty(&v)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Known divergences of one kind of target: `fixtures/known-divergences/<kind>.txt`,
/// one `profile/flavor/suite/case  reason` per line (`#` comments).
#[derive(Debug, Default)]
pub struct KnownDivergences {
    entries: Vec<(String, String)>,
}

impl KnownDivergences {
    /// Loads the list for `kind` (`mock` or `qemu`); a missing file is an empty list.
    pub fn load(fixtures: &Path, kind: &str) -> Result<Self> {
        let path = fixtures
            .join("known-divergences")
            .join(format!("{kind}.txt"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(Self::default());
        };
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (case, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            if reason.trim().is_empty() {
                anyhow::bail!(
                    "{}:{}: a known divergence needs a reason",
                    path.display(),
                    n + 1
                );
            }
            entries.push((case.to_owned(), reason.trim().to_owned()));
        }
        Ok(KnownDivergences { entries })
    }

    /// The reason a case (`qemu-10.0/qsd/protocol/x`) is listed, if it is.
    pub fn reason(&self, case: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(c, _)| c == case)
            .map(|(_, r)| r.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_written_with_every_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let r = |id: &str, verdict: Verdict| CaseResult {
            profile: "qemu-10.0/qsd".into(),
            id: id.into(),
            description: "d".into(),
            checks: "c".into(),
            verdict,
            time: Duration::from_millis(3),
        };
        let results = vec![
            r("protocol/a", Verdict::Pass),
            r("protocol/b", Verdict::Fail("diff".into())),
            r("protocol/c", Verdict::KnownFail("why".into())),
            r("client/d", Verdict::Skipped("not exercised".into())),
        ];
        write_junit(&dir.path().join("j.xml"), "mock", &results).unwrap();
        let xml = std::fs::read_to_string(dir.path().join("j.xml")).unwrap();
        assert!(
            xml.contains("<failure") && xml.contains("<skipped") && xml.contains("protocol/a"),
            "{xml}"
        );
        write_json(&dir.path().join("r.json"), "mock", &results).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap())
                .unwrap();
        assert_eq!(v["failed"], 1);
        assert_eq!(v["skipped"], 1);
        assert_eq!(v["passed"], 2, "a pass and a known divergence");
        assert_eq!(v["cases"][2]["verdict"], "known-divergence");
        assert_eq!(v["cases"][3]["verdict"], "skipped");
    }

    /// The JUnit file a CI server reads: parsed with an XML parser, it has
    /// one testsuite with every case, a failure element for each failing
    /// case and the counts agreeing (the shape Jenkins, GitLab and GitHub
    /// read).
    #[test]
    fn junit_output_is_well_formed_junit_xml() {
        use quick_xml::events::Event;
        let dir = tempfile::tempdir().unwrap();
        let r = |id: &str, verdict| CaseResult {
            profile: "qemu-10.0/qsd".into(),
            id: id.into(),
            description: "d <&> \"q\"".into(),
            checks: "c".into(),
            verdict,
            time: Duration::from_millis(3),
        };
        let results = vec![
            r("protocol/a", Verdict::Pass),
            r(
                "protocol/b",
                Verdict::Fail("diff with <angle> & \u{1b}[31m".into()),
            ),
            r("protocol/c", Verdict::KnownFail("why".into())),
        ];
        let path = dir.path().join("j.xml");
        write_junit(&path, "mock", &results).unwrap();
        let xml = std::fs::read_to_string(&path).unwrap();
        let mut reader = quick_xml::Reader::from_str(&xml);
        let (mut suites, mut cases, mut failures) = (0, 0, 0);
        let mut declared_tests = None;
        loop {
            match reader
                .read_event()
                .unwrap_or_else(|e| panic!("not XML: {e}\n{xml}"))
            {
                Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                    b"testsuite" => {
                        suites += 1;
                        declared_tests = e
                            .try_get_attribute("tests")
                            .unwrap()
                            .map(|a| String::from_utf8_lossy(&a.value).into_owned());
                    }
                    b"testcase" => cases += 1,
                    b"failure" => failures += 1,
                    _ => {}
                },
                Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!((suites, cases, failures), (1, 3, 1), "{xml}");
        assert_eq!(declared_tests.as_deref(), Some("3"), "{xml}");
    }

    #[test]
    fn a_known_divergence_needs_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("known-divergences")).unwrap();
        std::fs::write(
            dir.path().join("known-divergences/mock.txt"),
            "# c\nqemu-10.0/qsd/x/y  the mock lacks z\n",
        )
        .unwrap();
        let k = KnownDivergences::load(dir.path(), "mock").unwrap();
        assert_eq!(k.reason("qemu-10.0/qsd/x/y"), Some("the mock lacks z"));
        std::fs::write(
            dir.path().join("known-divergences/mock.txt"),
            "qemu-10.0/qsd/x/y\n",
        )
        .unwrap();
        assert!(KnownDivergences::load(dir.path(), "mock").is_err());
    }
}
