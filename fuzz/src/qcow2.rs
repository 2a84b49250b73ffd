//! The `qcow2` target: the mock's qcow2 header parser
//! (`mock_qemu::image::parse_qcow2`), which reads files a QMP client names
//! in `blockdev-add` (and the backing files their headers name), so its
//! input is as untrusted as the QMP stream.
//!
//! Input: the first bytes of a file (what `read_qcow2` reads), parsed as
//! the image `/images/disk.qcow2`. Properties:
//! 1. no panic (debug assertions and overflow checks on);
//! 2. fewer than 72 bytes, or a wrong magic, is `NotQcow2`; a version
//!    other than 2 or 3 is an error;
//! 3. on success: `version` is 2 or 3, `size` is the header's, the cluster
//!    size and refcount width are powers of two (at most 2^30 and 64);
//! 4. a backing file name is reported exactly when the header's offset and
//!    length lie inside the buffer (length > 0, offset > 0), and it is those
//!    bytes; its `full_backing` is the name itself when absolute or
//!    protocol-prefixed (`:`), else the name next to the image.
//! 5. rewriting the backing file (`image::set_qcow2_backing`, what a
//!    finished stream/commit job does; run on a scratch file) of a header
//!    that parses does not panic, and when it succeeds the header parses
//!    again with the new name and format and the same version, size and
//!    cluster size; removing the backing file leaves none.

use std::path::Path;

use mock_qemu::image::{parse_qcow2, ImageError};

use crate::memhost::rewrite_backing;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// The image's path.
pub const PATH: &str = "/images/disk.qcow2";

/// Runs one input through every property; panics on a violation.
pub fn run(buf: &[u8]) {
    let result = parse_qcow2(buf, Path::new(PATH));
    if buf.len() < 72 || be32(buf, 0) != 0x5146_49FB {
        assert!(
            matches!(result, Err(ImageError::NotQcow2)),
            "not a qcow2 header, parsed as {result:?}"
        );
        return;
    }
    let version = be32(buf, 4);
    let facts = match result {
        Ok(f) => f,
        Err(e) => {
            // A v2/v3 header is refused only for what QEMU refuses too.
            let cluster_bits = be32(buf, 20);
            let malformed = (version == 3 && (buf.len() < 104 || (be32(buf, 100) as usize) < 104))
                || !(9..=21).contains(&cluster_bits)
                || (version == 3
                    && buf.len() >= 104
                    && (be32(buf, 100) as u64) > (1u64 << cluster_bits.min(63)));
            assert!(
                !(2..=3).contains(&version) || malformed,
                "version {version} header refused: {e}"
            );
            return;
        }
    };
    assert!((2..=3).contains(&version), "version {version} accepted");
    assert_eq!(facts.version, version);
    assert_eq!(facts.size, be64(buf, 24), "size");
    assert!(
        facts.cluster_size.is_power_of_two() && facts.cluster_size <= 1 << 30,
        "cluster size {}",
        facts.cluster_size
    );
    assert!(
        facts.refcount_bits.is_power_of_two() && facts.refcount_bits <= 64,
        "refcount bits {}",
        facts.refcount_bits
    );

    let (offset, len) = (be64(buf, 8), u64::from(be32(buf, 16)));
    let inside = offset != 0
        && len > 0
        && offset
            .checked_add(len)
            .is_some_and(|end| end <= buf.len() as u64);
    match &facts.backing_file {
        None => assert!(!inside, "backing file at {offset}+{len} not reported"),
        Some(name) => {
            assert!(inside, "backing file {name:?} reported from {offset}+{len}");
            let (o, l) = (offset as usize, len as usize);
            assert_eq!(*name, String::from_utf8_lossy(&buf[o..o + l]));
            let want = if name.starts_with('/') || name.contains(':') {
                name.clone()
            } else {
                format!("/images/{name}")
            };
            assert_eq!(facts.full_backing.as_deref(), Some(want.as_str()));
        }
    }
    if facts.backing_file.is_none() {
        assert_eq!(facts.full_backing, None);
    }

    for backing in [Some(("/images/new-base.qcow2", "qcow2")), None] {
        let Ok(head) = rewrite_backing(buf, backing) else {
            continue;
        };
        let after = parse_qcow2(&head, Path::new(PATH))
            .unwrap_or_else(|e| panic!("rewritten header ({backing:?}) does not parse: {e}"));
        assert_eq!(
            (after.version, after.size, after.cluster_size),
            (facts.version, facts.size, facts.cluster_size),
            "rewriting the backing file ({backing:?}) changed the header"
        );
        assert_eq!(after.backing_file.as_deref(), backing.map(|b| b.0));
        assert_eq!(after.backing_format.as_deref(), backing.map(|b| b.1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memhost::qcow2_image;

    #[test]
    fn generated_headers_pass() {
        run(&qcow2_image(1 << 30, None).head);
        run(&qcow2_image(1, Some(("base.img", "raw"))).head);
        run(&qcow2_image(1, Some(("/abs/base.qcow2", "qcow2"))).head);
        run(&qcow2_image(1, Some(("nbd:unix:/s", "raw"))).head);
        run(b"QFI\xfb");
        run(&[0; 200]);
    }
}
