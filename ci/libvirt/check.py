#!/usr/bin/python3
"""libvirt end to end against mock-qemu (and, side by side, real QEMU).

Runs Debian's libvirt 9.0 with its embedded QEMU driver
(qemu:///embed?root=DIR: no daemon, everything in this process and the
virsh processes it starts) with mock-qemu as the emulator binary, through
virsh and through python3-libvirt, the binding OpenStack Nova uses.

    check.py --mock PATH [--real-7.2 PATH] [--real-10.0 PATH] [--profiles 7.2,10.0]
             [--only domcaps,domain,...] [--bench N]

Checks, per profile:
  domcaps   `virsh domcapabilities` with mock-qemu as the emulator prints what
            it prints for the real qemu-system-x86_64 of that version (the
            <path> line aside); the real one is run live when given.
  domain    a domain's life through python3-libvirt (domain_ops.py: start,
            disk-only snapshots, inactive and active commit, pull, copy with
            pivot / finish / abort, push full + incremental backups, pull
            backup over NBD, destroy): every step succeeds, and libvirt's view
            and the images on disk after each step are the real QEMU's.
  virsh     the same operations typed as virsh commands in one virsh run:
            its output is the real QEMU's.

Every libvirt call runs with a timeout: libvirt waits forever for an event
that never comes, so a missing event fails the check instead of hanging it.
Exit status 0 when every check passed. Must run with Debian's python3 (the
one python3-libvirt is built for): /usr/bin/python3.
"""

import argparse
import difflib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import DOMAIN_XML, QEMU_CONF


VIRSH_TIMEOUT = 120


class Failed(Exception):
    pass


def wrapper(folder, name, program, args=(), env=None, after=()):
    """An executable script libvirt can be given as its emulator."""
    path = os.path.join(folder, name)
    lines = ["#!/bin/sh"]
    prefix = "".join(f"{k}={v} " for k, v in (env or {}).items())
    quoted = " ".join(f"'{a}'" for a in args)
    tail = " ".join(f"'{a}'" for a in after)
    lines.append(f'{prefix}exec \'{program}\' {quoted} "$@" {tail}')
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o755)
    return path


def mock_emulator(folder, mock, version):
    return wrapper(folder, f"mock-{version}", mock, ["--profile", version, "--flavor", "system"])


def real_emulator(folder, program, version):
    """The unpacked real build, with the environment an installed one would
    not need: its libraries and modules live in the unpacked tree."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(program))))
    lib = os.path.join(root, "usr/lib/x86_64-linux-gnu")
    env = {}
    after = []
    if root != "/" and os.path.isdir(lib):
        env = {"LD_LIBRARY_PATH": lib, "QEMU_MODULE_DIR": os.path.join(lib, "qemu")}
        # firmware (SeaBIOS for -M pc): the tree's own data, Debian's seabios
        for d in (os.path.join(root, "usr/share/qemu"), "/usr/share/seabios"):
            if os.path.isdir(d):
                after += ["-L", d]
    return wrapper(folder, f"real-{version}", program, [], env, after)


class Embed:
    """A fresh embedded-driver root (no capability cache, no domains)."""

    def __init__(self, base):
        self.root = tempfile.mkdtemp(prefix="embed-", dir=base)
        os.makedirs(os.path.join(self.root, "etc"), exist_ok=True)
        with open(os.path.join(self.root, "etc", "qemu.conf"), "w") as f:
            f.write(QEMU_CONF)
        self.uri = f"qemu:///embed?root={self.root}"

    def virsh(self, *commands, timeout=VIRSH_TIMEOUT):
        """Runs `virsh -c URI 'cmd; cmd'` (one embedded driver for all)."""
        argv = ["virsh", "-q", "-c", self.uri, "; ".join(commands)]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise Failed(f"virsh {'; '.join(commands)}: no answer in {timeout} s (a missing event?)") from e
        if p.returncode != 0:
            err = "\n".join(l for l in p.stderr.splitlines() if " : " not in l or "error :" in l)
            raise Failed(f"virsh {'; '.join(commands)}: exit {p.returncode}\n{err}")
        return p.stdout

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)


def domcaps(base, emulator):
    e = Embed(base)
    try:
        t0 = time.monotonic()
        out = e.virsh(f"domcapabilities --emulatorbin {emulator} --virttype qemu")
        return out, time.monotonic() - t0
    finally:
        e.cleanup()


def without_path(xml):
    return [l for l in xml.splitlines() if not l.strip().startswith("<path>")]


def check_domcaps(base, version, mock_emu, real_emu):
    mock_xml, _ = domcaps(base, mock_emu)
    if "<domainCapabilities>" not in mock_xml:
        raise Failed(f"domcapabilities printed no capabilities:\n{mock_xml[:500]}")
    if real_emu is None:
        return f"{len(mock_xml)} bytes (no real {version} given: not compared)"
    real_xml, _ = domcaps(base, real_emu)
    a, b = without_path(real_xml), without_path(mock_xml)
    if a != b:
        diff = "\n".join(difflib.unified_diff(a, b, f"real {version}", f"mock-qemu {version}", lineterm=""))
        raise Failed(f"domcapabilities differ:\n{diff}")
    return f"identical to real {version} ({len(a)} lines)"


def ops(base, emulator):
    """domain_ops.py's observations with this emulator (a fresh folder)."""
    work = tempfile.mkdtemp(prefix="ops-", dir=base)
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, os.path.join(here, "domain_ops.py"), emulator, work],
                           capture_output=True, text=True, timeout=600)
        took = time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        raise Failed(f"domain_ops.py with {emulator}: no end in 600 s") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if p.returncode != 0:
        raise Failed(f"domain_ops.py with {emulator}: exit {p.returncode}\n{p.stderr[-2000:]}")
    return p.stdout.splitlines(), took


def check_domain(base, version, mock_emu, real_emu):
    mock, took = ops(base, mock_emu)
    errors = [l for l in mock if '"error"' in l]
    steps = len(mock)
    if real_emu is None:
        if errors:
            raise Failed("steps failed with mock-qemu:\n" + "\n".join(errors))
        return f"{steps} steps, no error in {took:.1f} s (no real {version} given: not compared)"
    real, real_took = ops(base, real_emu)
    if mock != real:
        diff = "\n".join(difflib.unified_diff(real, mock, f"real {version}", f"mock-qemu {version}", lineterm=""))
        raise Failed(f"libvirt saw different outcomes:\n{diff}")
    if errors:
        raise Failed("steps failed (with real QEMU too):\n" + "\n".join(errors))
    return f"{steps} steps, same outcome as real {version} (mock {took:.1f} s, real {real_took:.1f} s)"


VIRSH_OPS = [
    "define {dir}/dom.xml", "start ops",
    "snapshot-create-as ops s1 --disk-only --no-metadata --diskspec vda,file={dir}/s1.qcow2",
    "snapshot-create-as ops s2 --disk-only --no-metadata --diskspec vda,file={dir}/s2.qcow2",
    "domblklist ops",
    "blockcommit ops vda --top {dir}/s1.qcow2 --wait", "domblklist ops",
    "blockcommit ops vda --active --pivot --wait", "domblklist ops",
    "snapshot-create-as ops s3 --disk-only --no-metadata --diskspec vda,file={dir}/s3.qcow2",
    "blockpull ops vda --wait", "domblklist ops",
    "blockcopy ops vda {dir}/copy.qcow2 --format qcow2 --transient-job --wait --pivot", "domblklist ops",
    "blockcopy ops vda {dir}/copy2.qcow2 --format qcow2 --transient-job --wait --finish", "domblklist ops",
    "blockcopy ops vda {dir}/copy3.qcow2 --format qcow2 --transient-job",
    "blockjob ops vda --abort", "domblklist ops",
    # (when the backup ends is timing: python3-libvirt's run waits for it)
    "backup-begin ops {dir}/backup.xml",
    "destroy ops", "undefine ops --checkpoints-metadata",
]


def check_virsh(base, version, mock_emu, real_emu):
    def run(emulator):
        work = tempfile.mkdtemp(prefix="virsh-", dir=base)
        try:
            for name, size in (("disk", "64M"), ("data", "32M")):
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", f"{work}/{name}.qcow2", size], check=True)
            with open(f"{work}/dom.xml", "w") as f:
                f.write(DOMAIN_XML.format(emulator=emulator, dir=work))
            with open(f"{work}/backup.xml", "w") as f:
                f.write(f"<domainbackup><disks><disk name='vda' type='file'><target file='{work}/backup.qcow2'/>"
                        "<driver type='qcow2'/></disk></disks></domainbackup>")
            e = Embed(work)
            t0 = time.monotonic()
            out = e.virsh(*[c.format(dir=work) for c in VIRSH_OPS], timeout=300)
            took = time.monotonic() - t0
            # what varies between runs: the work folder, job timings
            lines = [l.replace(work, "DIR").rstrip() for l in out.splitlines()]
            keep = [l for l in lines if l and not l.startswith(("Time ", "Operation:", "Job type:"))
                    and "Block " not in l]
            return keep, took
        finally:
            shutil.rmtree(work, ignore_errors=True)
    mock, took = run(mock_emu)
    if real_emu is None:
        return f"{len(mock)} lines in {took:.1f} s (no real {version} given: not compared)"
    real, real_took = run(real_emu)
    if mock != real:
        diff = "\n".join(difflib.unified_diff(real, mock, f"real {version}", f"mock-qemu {version}", lineterm=""))
        raise Failed(f"virsh printed different things:\n{diff}")
    return f"{len(VIRSH_OPS)} virsh commands, same output as real {version} (mock {took:.1f} s, real {real_took:.1f} s)"




def start_time(base, emulator):
    """Seconds libvirt's virDomainCreate takes (capabilities cached)."""
    work = tempfile.mkdtemp(prefix="start-", dir=base)
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        p = subprocess.run([sys.executable, os.path.join(here, "domain_ops.py"), emulator, work,
                            "--steps", "start,destroy,start,destroy", "--timing"],
                           capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    starts = [float(l.split()[2]) for l in p.stderr.splitlines() if l.startswith("timing start ")]
    if len(starts) < 2:
        raise Failed(f"no start timing from domain_ops.py:\n{p.stdout}{p.stderr[-1000:]}")
    return starts[1]  # the second start: the first one probes capabilities


def bench(base, version, mock_emu, real_emu, n):
    rows = []
    for name, emu in (("mock-qemu", mock_emu), (f"real {version}", real_emu)):
        if emu is None:
            continue
        probe = statistics.median([domcaps(base, emu)[1] for _ in range(n)])
        start = statistics.median([start_time(base, emu) for _ in range(n)])
        rows.append((name, probe, start))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mock", required=True)
    ap.add_argument("--real-7.2", dest="real72")
    ap.add_argument("--real-10.0", dest="real100")
    ap.add_argument("--profiles", default="7.2,10.0")
    ap.add_argument("--only", default="domcaps,domain,virsh")
    ap.add_argument("--bench", type=int, default=0, help="also time the probe and a domain start N times each")
    a = ap.parse_args()
    if shutil.which("virsh") is None:
        print("virsh is not installed: run ci/libvirt/setup.sh", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="libvirt-check-")
    only = set(a.only.split(","))
    failures = 0
    try:
        for version in a.profiles.split(","):
            real = {"7.2": a.real72, "10.0": a.real100}.get(version)
            mock_emu = mock_emulator(base, os.path.abspath(a.mock), version)
            real_emu = real_emulator(base, real, version) if real else None
            checks = [("domcaps", check_domcaps), ("domain", check_domain), ("virsh", check_virsh)]
            for name, fn in checks:
                if name not in only:
                    continue
                t0 = time.monotonic()
                try:
                    detail = fn(base, version, mock_emu, real_emu)
                    print(f"ok   {version} {name}: {detail} ({time.monotonic() - t0:.1f} s)")
                except Failed as e:
                    failures += 1
                    print(f"FAIL {version} {name}: {e}")
            if a.bench:
                rows = bench(base, version, mock_emu, real_emu, a.bench)
                for who, probe, start in rows:
                    print(f"bench {version} {who}: probe (virsh domcapabilities, empty cache) {probe:.3f} s, "
                          f"domain start (virDomainCreate) {start:.3f} s; medians of {a.bench}")
                if len(rows) == 2:
                    (_, mp, ms), (_, rp, rs) = rows
                    print(f"bench {version} real/mock: probe {rp / mp:.2f}x, start {rs / ms:.2f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
