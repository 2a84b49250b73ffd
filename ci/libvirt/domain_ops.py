#!/usr/bin/python3
"""One domain's life through python3-libvirt (the binding Nova uses), with
an emulator given on the command line (mock-qemu or a real QEMU), in
libvirt's embedded driver. Prints one JSON line per observation; check.py
runs it for mock-qemu and for the real QEMU and compares the lines.

    domain_ops.py EMULATOR WORKDIR [--steps a,b,c]

Steps (each observation says what libvirt reports and what the images on
disk are, with paths relative to WORKDIR):
  start        define and start a domain with one qcow2 disk (vda)
  snapshot     two external disk-only snapshots (blockdev-create jobs,
               transaction + blockdev-snapshot)
  commit       inactive commit of the middle image (block-commit job)
  active       active commit with pivot (ready, then job-complete)
  pull         block pull of the whole chain into the top (block-stream)
  copy         block copy to a new image and pivot (blockdev-mirror)
  copy-finish  block copy ended without pivot (the copy stays a copy)
  abort        a copy aborted before it ends
  backup       push backups: full, a checkpoint, incremental; then a pull
               backup served over NBD (nbd-server-start, block-export-add)
  destroy      destroy the domain

Every wait has a deadline: a missing event fails the step ("timeout")
instead of hanging.
"""

import json
import os
import subprocess
import sys
import threading
import time

import libvirt

from common import DOMAIN_XML, QEMU_CONF

DEADLINE = 60.0


def say(step, **what):
    print(json.dumps({"step": step, **what}, sort_keys=True), flush=True)


def chain(workdir, path):
    """The backing chain on disk, as qemu-img sees it (names relative)."""
    p = subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
        capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        return ["error: " + p.stderr.strip().splitlines()[-1]]
    out = []
    for img in json.loads(p.stdout):
        name = os.path.relpath(img["filename"], workdir)
        out.append(f"{name} ({img['format']}, {img['virtual-size']})")
    return out


def disk_source(dom, workdir, target="vda"):
    import xml.etree.ElementTree as ET
    x = ET.fromstring(dom.XMLDesc(0))
    node = next((d for d in x.findall("./devices/disk")
                 if d.find("target") is not None and d.find("target").get("dev") == target), None)
    src = node.find("source") if node is not None else None
    f = src.get("file") if src is not None else None
    names = []
    while node is not None:
        s = node.find("source")
        if s is None:
            break
        names.append(os.path.relpath(s.get("file") or s.get("name") or "?", workdir))
        node = node.find("backingStore")
    return f, names


def wait(cond, what):
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        r = cond()
        if r:
            return r
        time.sleep(0.02)
    raise TimeoutError(f"timeout waiting for {what}")


def job_gone(dom, disk="vda"):
    return lambda: not dom.blockJobInfo(disk, 0)


# Block job events as libvirt reports them (VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2),
# per disk target: the newest status.
EVENTS = {}
EVENTS_LOCK = threading.Lock()


def on_block_job(conn, dom, disk, kind, status, opaque):
    with EVENTS_LOCK:
        EVENTS[disk] = status


def job_ready(dom, disk="vda"):
    """libvirt reported the job READY (virsh blockcopy --wait waits so)."""
    def f():
        with EVENTS_LOCK:
            return EVENTS.get(disk) == libvirt.VIR_DOMAIN_BLOCK_JOB_READY
    return f


def forget_events():
    with EVENTS_LOCK:
        EVENTS.clear()


def observe(step, dom, workdir, extra=None):
    top, libvirt_chain = disk_source(dom, workdir)
    data_top, data_chain = disk_source(dom, workdir, "vdb")
    say(step, libvirt=libvirt_chain, disk=chain(workdir, top),
        vdb=data_chain, vdb_disk=chain(workdir, data_top),
        state=dom.state()[0], **(extra or {}))


def main():
    emulator, workdir = sys.argv[1], os.path.abspath(sys.argv[2])
    steps = ["start", "snapshot", "commit", "active", "pull", "copy", "copy-finish",
             "abort", "backup", "destroy"]
    if "--steps" in sys.argv:
        steps = sys.argv[sys.argv.index("--steps") + 1].split(",")
    timing = "--timing" in sys.argv
    root = os.path.join(workdir, "embed")
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    with open(os.path.join(root, "etc", "qemu.conf"), "w") as f:
        f.write(QEMU_CONF)
    img = os.path.join(workdir, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(workdir, "data.qcow2"), "32M"],
                   check=True)

    libvirt.virEventRegisterDefaultImpl()
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=loop, daemon=True).start()
    conn = libvirt.open(f"qemu:///embed?root={root}")
    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, on_block_job, None)
    dom = None
    xml = DOMAIN_XML.format(emulator=emulator, dir=workdir)
    try:
        for step in steps:
            try:
                t0 = time.monotonic()
                run_step(step, conn, workdir, xml, lambda: dom)
                if timing:
                    print(f"timing {step} {time.monotonic() - t0:.3f}", file=sys.stderr, flush=True)
                if step == "start":
                    dom = conn.lookupByName("ops")
            except (libvirt.libvirtError, TimeoutError) as e:
                say(step, error=str(e).replace(workdir, "WORKDIR"))
                if step == "start":
                    break
    finally:
        try:
            d = conn.lookupByName("ops")
            if d.isActive():
                d.destroy()
            d.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        except libvirt.libvirtError:
            pass
        conn.close()
        stop.set()


def run_step(step, conn, workdir, xml, get_dom):
    dom = get_dom()
    forget_events()
    p = lambda name: os.path.join(workdir, name)
    if step == "start":
        d = dom or conn.defineXML(xml)
        d.create()
        observe(step, d, workdir)
    elif step == "snapshot":
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
        for name in ("s1", "s2"):
            dom.snapshotCreateXML(
                f"<domainsnapshot><name>{name}</name><disks><disk name='vda' snapshot='external'>"
                f"<source file='{p(name + '.qcow2')}'/></disk></disks></domainsnapshot>", flags)
        observe(step, dom, workdir)
    elif step == "commit":
        dom.blockCommit("vda", None, p("s1.qcow2"), 0, 0)
        wait(job_gone(dom), "the commit job to end")
        observe(step, dom, workdir)
    elif step == "active":
        dom.blockCommit("vda", None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
        wait(job_ready(dom), "the active commit to be ready")
        dom.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        wait(job_gone(dom), "the pivot to finish")
        observe(step, dom, workdir)
    elif step == "pull":
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
        dom.snapshotCreateXML(
            f"<domainsnapshot><name>s3</name><disks><disk name='vda' snapshot='external'>"
            f"<source file='{p('s3.qcow2')}'/></disk></disks></domainsnapshot>", flags)
        dom.blockPull("vda", 0, 0)
        wait(job_gone(dom), "the pull to end")
        observe(step, dom, workdir)
    elif step in ("copy", "copy-finish", "abort"):
        dest = p({"copy": "copy.qcow2", "copy-finish": "copy2.qcow2", "abort": "copy3.qcow2"}[step])
        dom.blockCopy("vda", f"<disk type='file'><source file='{dest}'/><driver type='qcow2'/></disk>",
                      None, libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
        if step == "abort":
            dom.blockJobAbort("vda", 0)
        else:
            wait(job_ready(dom), "the copy to be ready")
            dom.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT if step == "copy" else 0)
        wait(job_gone(dom), "the copy job to end")
        observe(step, dom, workdir, {"copy": chain(workdir, dest) if os.path.exists(dest) else "absent"})
    elif step == "backup":
        full = p("backup-full.qcow2")
        dom.backupBegin(
            f"<domainbackup><disks><disk name='vda' type='file'><target file='{full}'/>"
            f"<driver type='qcow2'/></disk></disks></domainbackup>",
            "<domaincheckpoint><name>c1</name></domaincheckpoint>", 0)
        wait(lambda: dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE, "the full backup to end")
        inc = p("backup-inc.qcow2")
        dom.backupBegin(
            f"<domainbackup><incremental>c1</incremental><disks><disk name='vda' type='file'>"
            f"<target file='{inc}'/><driver type='qcow2'/></disk></disks></domainbackup>", None, 0)
        wait(lambda: dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE, "the incremental backup to end")
        sock = p("nbd.sock")
        scratch = p("scratch.qcow2")
        dom.backupBegin(
            f"<domainbackup mode='pull'><server transport='unix' socket='{sock}'/><disks>"
            f"<disk name='vda' type='file'><scratch file='{scratch}'/><driver type='qcow2'/></disk>"
            f"</disks></domainbackup>", None, 0)
        listed = subprocess.run(["qemu-nbd", "--list", "-k", sock], capture_output=True, text=True, timeout=30)
        exports = [l.split(":", 1)[1].strip() for l in listed.stdout.splitlines() if l.startswith("export=")] \
            if "export=" in listed.stdout else [l.strip() for l in listed.stdout.splitlines() if "export" in l]
        dom.abortJob()
        wait(lambda: dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE, "the pull backup to end")
        observe(step, dom, workdir, {
            "full": chain(workdir, full), "incremental": chain(workdir, inc),
            "pull-exports": exports, "checkpoints": sorted(c.getName() for c in dom.listAllCheckpoints()),
        })
    elif step == "destroy":
        dom.destroy()
        say(step, state=dom.state()[0], active=dom.isActive())
    else:
        raise SystemExit(f"unknown step {step}")


if __name__ == "__main__":
    main()
