// go-qemu-client: a QMP session of DigitalOcean's go-qemu (Debian's
// golang-github-digitalocean-go-qemu-dev), as a Go management tool would
// run it: connect (greeting, qmp_capabilities), add two null-co nodes,
// mirror one onto the other, wait for BLOCK_JOB_READY, complete the job
// through the qemu package (BlockJob.Complete waits for
// BLOCK_JOB_COMPLETED), and decode replies with go-qemu's generated raw
// types (query-version, query-named-block-nodes, query-block-jobs).
//
// Usage: go-qemu-client SOCKET. Prints one line per step; exits 1 at the
// first failure. Built offline by ci/go-qemu.sh (GOPATH mode, Debian's
// /usr/share/gocode).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/digitalocean/go-qemu/qemu"
	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
)

const timeout = 10 * time.Second

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "go-qemu-client: "+format+"\n", a...)
	os.Exit(1)
}

func run(d *qemu.Domain, execute string, args interface{}) {
	if _, err := d.Run(qmp.Command{Execute: execute, Args: args}); err != nil {
		fail("%s: %v", execute, err)
	}
	fmt.Printf("%s: ok\n", execute)
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: go-qemu-client SOCKET")
	}
	mon, err := qmp.NewSocketMonitor("unix", os.Args[1], timeout)
	if err != nil {
		fail("connecting: %v", err)
	}
	if err := mon.Connect(); err != nil {
		fail("negotiating: %v", err)
	}
	defer mon.Disconnect()
	fmt.Printf("greeting: QEMU %s, capabilities %v\n", mon.Version, mon.Capabilities)

	d, err := qemu.NewDomain(mon, "mock")
	if err != nil {
		fail("domain: %v", err)
	}
	rm := raw.NewMonitor(mon)

	v, err := d.Version()
	if err != nil {
		fail("query-version: %v", err)
	}
	pkg, err := d.PackageVersion()
	if err != nil {
		fail("query-version (raw): %v", err)
	}
	fmt.Printf("query-version: %s (%s)\n", v, pkg)
	if ok, err := d.Supported("blockdev-mirror"); err != nil || !ok {
		fail("query-commands: blockdev-mirror not listed (%v)", err)
	}
	fmt.Println("query-commands: blockdev-mirror listed")

	for _, name := range []string{"src", "dst"} {
		run(d, "blockdev-add", map[string]interface{}{
			"driver": "null-co", "node-name": name, "size": 1048576,
		})
	}
	// A refused command comes back as the error's desc.
	_, err = d.Run(qmp.Command{Execute: "blockdev-add", Args: map[string]interface{}{
		"driver": "null-co", "node-name": "src",
	}})
	if err == nil {
		fail("a second node named src was accepted")
	}
	fmt.Printf("blockdev-add (duplicate): %v\n", err)

	nodes, err := rm.QueryNamedBlockNodes()
	if err != nil {
		fail("query-named-block-nodes (raw types): %v", err)
	}
	for _, n := range nodes {
		name := ""
		if n.NodeName != nil {
			name = *n.NodeName
		}
		fmt.Printf("node %s: %s, %d bytes, detect-zeroes %v\n", name, n.Drv, n.Image.VirtualSize, n.DetectZeroes)
	}

	stream, done, err := d.Events()
	if err != nil {
		fail("events: %v", err)
	}
	// The domain hands events over unbuffered, and the monitor's reader
	// waits for that before it reads the next reply: read them while the
	// command runs (as go-qemu's own waitForSignal does).
	events := make(chan qmp.Event, 64)
	go func() {
		for e := range stream {
			events <- e
		}
		close(events)
	}()
	job := "mirror0"
	if err := rm.BlockdevMirror(&job, "src", "dst", nil, raw.MirrorSyncModeFull,
		nil, nil, nil, nil, nil, nil); err != nil {
		fail("blockdev-mirror: %v", err)
	}
	fmt.Println("blockdev-mirror: ok")
	stalled := time.After(timeout)
wait:
	for {
		select {
		case e, ok := <-events:
			if !ok {
				fail("the event stream ended before BLOCK_JOB_READY")
			}
			if e.Event == "JOB_STATUS_CHANGE" {
				fmt.Printf("event JOB_STATUS_CHANGE %v\n", e.Data["status"])
			}
			if e.Event == "BLOCK_JOB_READY" {
				fmt.Printf("event BLOCK_JOB_READY len %v offset %v\n", e.Data["len"], e.Data["offset"])
				break wait
			}
		case <-stalled:
			fail("no BLOCK_JOB_READY within %v", timeout)
		}
	}
	close(done)

	infos, err := rm.QueryBlockJobs()
	if err != nil {
		fail("query-block-jobs (raw types): %v", err)
	}
	b, _ := json.Marshal(infos)
	fmt.Printf("query-block-jobs: %s\n", b)
	jobs, err := d.BlockJobs()
	if err != nil || len(jobs) != 1 || !jobs[0].Ready {
		fail("query-block-jobs: %v %+v", err, jobs)
	}
	if err := jobs[0].Complete(d, timeout); err != nil {
		fail("block-job-complete: %v", err)
	}
	fmt.Println("block-job-complete: BLOCK_JOB_COMPLETED")
	jobs, err = d.BlockJobs()
	if err != nil || len(jobs) != 0 {
		fail("query-block-jobs after completion: %v %+v", err, jobs)
	}
	fmt.Println("query-block-jobs: none left")
	run(d, "blockdev-del", map[string]interface{}{"node-name": "dst"})
	fmt.Println("done")
}
