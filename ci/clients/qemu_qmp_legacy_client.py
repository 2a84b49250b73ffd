#!/usr/bin/env python3
"""Drives the seed's operations through python qemu.qmp's legacy, synchronous
QEMUMonitorProtocol (the interface QEMU's iotests and many scripts use).

Usage: qemu_qmp_legacy_client.py SOCKET   (for `qmp-conform client --exec`)

Same flow as qemu_qmp_client.py. The legacy interface cannot wait for "an
event or a disconnect", so it waits for events a fifth of a second at a time
and asks query-jobs in between, which also notices a broken connection.
"""

import sys
import time

from qemu.qmp import ExecInterruptedError, StateError
from qemu.qmp.legacy import QEMUMonitorProtocol

JOB = "mirror0"
NODES = ("src", "dst")
TIMEOUT = 20.0
RECONNECTS = 3


class Disconnected(Exception):
    """The connection broke: worth reconnecting."""


def about_job(event) -> bool:
    data = event.get("data", {})
    key = "id" if event["event"] == "JOB_STATUS_CHANGE" else "device"
    return data.get(key) == JOB


def call(mon: QEMUMonitorProtocol, cmd: str, **args):
    try:
        return mon.cmd(cmd, **args)
    except (ExecInterruptedError, StateError, EOFError, OSError) as err:
        raise Disconnected(f"{cmd}: {err!r}") from err


def news_of_job(mon: QEMUMonitorProtocol) -> None:
    """Waits a little for an event about the job (the caller re-queries)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            event = mon.pull_event(wait=0.2)
        except TimeoutError:
            return
        if event is not None and about_job(event):
            return
    raise TimeoutError(f"no news of job {JOB} in {TIMEOUT}s")


def job_status(mon: QEMUMonitorProtocol):
    for job in call(mon, "query-jobs"):
        if job["id"] == JOB:
            return job
    return None


def flow(mon: QEMUMonitorProtocol, state: dict) -> None:
    nodes = {n["node-name"] for n in call(mon, "query-named-block-nodes")}
    for name in NODES:
        if name not in nodes:
            call(mon, "blockdev-add", driver="null-co", size=1048576,
                 **{"node-name": name})
    while True:
        job = job_status(mon)
        if job is None:
            if state["started"]:
                return  # dismissed on an earlier connection
            call(mon, "blockdev-mirror", device="src", target="dst",
                 sync="full", **{"job-id": JOB, "auto-dismiss": False})
            state["started"] = True
        elif job["status"] == "ready":
            call(mon, "job-complete", id=JOB)
        elif job["status"] == "concluded":
            call(mon, "job-dismiss", id=JOB)
            if "error" in job:
                raise RuntimeError(f"job {JOB} failed: {job['error']}")
            return
        elif job["status"] in ("paused", "standby"):
            raise RuntimeError(f"job {JOB} is {job['status']}")
        else:
            news_of_job(mon)


def main(path: str) -> int:
    state = {"started": False}
    for attempt in range(RECONNECTS + 1):
        mon = QEMUMonitorProtocol(path)
        try:
            mon.connect()
            flow(mon, state)
            mon.close()
            return 0
        except (Disconnected, EOFError, OSError) as err:
            print(f"qemu_qmp_legacy_client: {err}; connecting again "
                  f"({attempt + 1}/{RECONNECTS})", file=sys.stderr)
            try:
                mon.close()
            except Exception:  # the reader's EOFError comes out here
                pass
    print("qemu_qmp_legacy_client: giving up", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
