//! Finding scenarios and golden transcripts under `fixtures/`.
//!
//! ```text
//! fixtures/scenarios/<suite>/<name>.qmp                       inputs (version-neutral)
//! fixtures/qemu-<v>/<flavor>/transcripts/<suite>/<name>.out   golden outputs, recorded
//! fixtures/qemu-<v>/<flavor>/profile/*.json                   recorded profile data
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mock_qemu::profile::{Flavor, Version};

use crate::scenario::Scenario;

/// The fixtures folder: `$QMP_CONFORM_FIXTURES`, else the repository's.
pub fn fixtures_dir() -> PathBuf {
    if let Ok(d) = std::env::var("QMP_CONFORM_FIXTURES") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The folder of one profile's recordings.
pub fn profile_dir(fixtures: &Path, version: Version, flavor: Flavor) -> PathBuf {
    fixtures.join(version.name()).join(flavor.name())
}

fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::path);
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            walk(&p, ext, out)?;
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    Ok(())
}

fn rel_id(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .with_extension("")
        .to_string_lossy()
        .replace('\\', "/")
}

/// Every scenario, sorted by id.
pub fn scenarios(fixtures: &Path) -> Result<Vec<Scenario>> {
    let root = fixtures.join("scenarios");
    let mut files = Vec::new();
    walk(&root, "qmp", &mut files)?;
    files
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let mut s = Scenario::parse(&text, &rel_id(&root, p))
                .with_context(|| format!("parsing {}", p.display()))?;
            s.file = format!("scenarios/{}.qmp", rel_id(&root, p));
            Ok(s)
        })
        .collect()
}

/// Golden transcripts of a profile: (scenario id, path), sorted.
pub fn goldens(
    fixtures: &Path,
    version: Version,
    flavor: Flavor,
) -> Result<Vec<(String, PathBuf)>> {
    let root = profile_dir(fixtures, version, flavor).join("transcripts");
    let mut files = Vec::new();
    walk(&root, "out", &mut files)?;
    Ok(files.into_iter().map(|p| (rel_id(&root, &p), p)).collect())
}

/// Every (version, flavor) that has recordings.
pub fn recorded_profiles(fixtures: &Path) -> Vec<(Version, Flavor)> {
    let mut v = Vec::new();
    for version in Version::ALL {
        for flavor in [Flavor::Qsd, Flavor::System] {
            if profile_dir(fixtures, version, flavor)
                .join("transcripts")
                .is_dir()
            {
                v.push((version, flavor));
            }
        }
    }
    v
}
