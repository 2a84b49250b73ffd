#!/usr/bin/env python3
"""Drives the seed's operations through python qemu.qmp's asyncio QMPClient.

Usage: qemu_qmp_client.py SOCKET   (for `qmp-conform client --exec`)

Negotiate (QMPClient does it, enabling oob when offered); add two 1 MiB
null-co nodes; blockdev-mirror with auto-dismiss false; wait for
BLOCK_JOB_READY; job-complete; wait for the job to conclude; job-dismiss.
When the connection breaks, connect again and ask QEMU where things stand
(events sent meanwhile are lost), then go on.
"""

import asyncio
import sys

from qemu.qmp import (
    ConnectError,
    ExecInterruptedError,
    QMPClient,
    Runstate,
    StateError,
)

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


async def call(qmp: QMPClient, cmd: str, args=None):
    try:
        return await asyncio.wait_for(qmp.execute(cmd, args or {}), TIMEOUT)
    except (ExecInterruptedError, StateError, EOFError, ConnectionError) as err:
        raise Disconnected(f"{cmd}: {err!r}") from err


async def until_disconnected(qmp: QMPClient) -> None:
    while qmp.runstate == Runstate.RUNNING:
        await qmp.runstate_changed()


async def news_of_job(qmp: QMPClient) -> None:
    """Waits for an event about the job, or for the connection to break."""
    while True:
        get = asyncio.ensure_future(qmp.events.get())
        gone = asyncio.ensure_future(until_disconnected(qmp))
        done, pending = await asyncio.wait(
            {get, gone}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if get in done:
            if about_job(get.result()):
                return
            continue
        if gone in done:
            raise Disconnected("while waiting for news of the job")
        raise TimeoutError(f"no news of job {JOB} in {TIMEOUT}s")


async def job_status(qmp: QMPClient):
    for job in await call(qmp, "query-jobs"):
        if job["id"] == JOB:
            return job
    return None


async def flow(qmp: QMPClient, state: dict) -> None:
    nodes = {n["node-name"] for n in await call(qmp, "query-named-block-nodes")}
    for name in NODES:
        if name not in nodes:
            await call(qmp, "blockdev-add",
                       {"driver": "null-co", "node-name": name, "size": 1048576})
    while True:
        job = await job_status(qmp)
        if job is None:
            if state["started"]:
                return  # dismissed on an earlier connection
            await call(qmp, "blockdev-mirror",
                       {"job-id": JOB, "device": "src", "target": "dst",
                        "sync": "full", "auto-dismiss": False})
            state["started"] = True
        elif job["status"] == "ready":
            await call(qmp, "job-complete", {"id": JOB})
        elif job["status"] == "concluded":
            await call(qmp, "job-dismiss", {"id": JOB})
            if "error" in job:
                raise RuntimeError(f"job {JOB} failed: {job['error']}")
            return
        elif job["status"] in ("paused", "standby"):
            raise RuntimeError(f"job {JOB} is {job['status']}")
        else:
            await news_of_job(qmp)


async def main(path: str) -> int:
    qmp = QMPClient("qmp-conform-check")
    state = {"started": False}
    for attempt in range(RECONNECTS + 1):
        try:
            await qmp.connect(path)
            await flow(qmp, state)
            await qmp.disconnect()
            return 0
        except (Disconnected, ConnectError) as err:
            print(f"qemu_qmp_client: {err}; connecting again "
                  f"({attempt + 1}/{RECONNECTS})", file=sys.stderr)
            try:
                await qmp.disconnect()
            except Exception:  # the reader's EOFError comes out here
                pass
    print("qemu_qmp_client: giving up", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
