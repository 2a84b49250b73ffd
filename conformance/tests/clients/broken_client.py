#!/usr/bin/env python3
"""A deliberately broken QMP client: the test fixture that `qmp-conform
client` must catch (conformance/tests/client.rs says exactly which checks
fail). Standard library only.

Usage: broken_client.py SOCKET

Its defects, each a bug seen in real clients:
1. it asks query-version before qmp_capabilities (and ignores the error);
2. it sends job-complete together with blockdev-mirror, before
   BLOCK_JOB_READY (then, refused, waits for READY and completes again);
3. it never dismisses its job, though it turned auto-dismiss off;
4. it takes the next non-job message for the reply, and gives up on any
   other event ("unexpected message");
5. it does not reconnect: a dropped connection ends it with status 1.
Messages carry no id. Everything else (splitting, coalescing, the oob
capability) it handles, reading lines from a buffered file.
"""

import json
import socket
import sys

JOB_EVENTS = ("JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED",
              "BLOCK_JOB_PENDING", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR")


def die(msg: str) -> None:
    print(f"broken_client: {msg}", file=sys.stderr)
    sys.exit(1)


class Client:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.events = []

    def read(self):
        line = self.file.readline()
        if not line:
            die("connection closed")
        return json.loads(line)

    def send(self, *commands):
        data = "".join(json.dumps(c) + "\n" for c in commands)
        self.sock.sendall(data.encode())

    def reply(self):
        while True:
            msg = self.read()
            if "event" not in msg:
                return msg
            if msg["event"] not in JOB_EVENTS:
                die(f"unexpected message: {msg}")
            self.events.append(msg)

    def wait_event(self, name, **data):
        while True:
            ev = self.events.pop(0) if self.events else self.read()
            if "event" not in ev:
                die(f"unexpected message: {ev}")
            if ev["event"] == name and all(ev.get("data", {}).get(k) == v
                                           for k, v in data.items()):
                return ev


def main(path: str) -> int:
    c = Client(path)
    c.read()  # greeting
    c.send({"execute": "query-version"})  # defect 1
    c.reply()
    c.send({"execute": "qmp_capabilities"})
    c.reply()
    for name in ("src", "dst"):
        c.send({"execute": "blockdev-add",
                "arguments": {"driver": "null-co", "node-name": name,
                              "size": 1048576}})
        if "error" in c.reply():
            die(f"blockdev-add {name} failed")
    c.send({"execute": "blockdev-mirror",
            "arguments": {"job-id": "mirror0", "device": "src",
                          "target": "dst", "sync": "full",
                          "auto-dismiss": False}},
           {"execute": "job-complete", "arguments": {"id": "mirror0"}})  # defect 2
    if "error" in c.reply():
        die("blockdev-mirror failed")
    if "error" in c.reply():
        c.wait_event("BLOCK_JOB_READY", device="mirror0")
        c.send({"execute": "job-complete", "arguments": {"id": "mirror0"}})
        if "error" in c.reply():
            die("job-complete failed")
    c.wait_event("JOB_STATUS_CHANGE", id="mirror0", status="concluded")
    return 0  # defect 3: no job-dismiss


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
