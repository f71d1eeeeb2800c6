package guest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/guest/guesttest"
	"github.com/sandfleet/sandfleet/internal/poll"
)

// emulatedVM starts an Azure emulator with one scale set of one VM and
// returns the emulator and the VM's address once its agent answers.
func emulatedVM(t *testing.T, analysis string) (*azemu.Emulator, string) {
	t.Helper()
	e, err := azemu.New(azemu.Options{
		StateDir:         t.TempDir(),
		AgentPort:        20000 + rand.IntN(30000),
		AnalysisDuration: analysis,
		Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })

	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.CertPool()}}}
	req, _ := http.NewRequest(http.MethodPut,
		e.URL()+"/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/guest?api-version=2024-07-01",
		strings.NewReader(`{"location": "westeurope", "sku": {"name": "Standard_D2s_v3", "capacity": 1}}`))
	req.Header.Set("Authorization", "Bearer "+azemu.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create scale set: %s", resp.Status)
	}
	var ip string
	poll.Until(t, 10*time.Second, "the VM's agent", func() bool {
		for _, s := range e.ScaleSets() {
			for _, v := range s.VMs {
				if v.Agent == "up" {
					ip = v.IP
					return true
				}
			}
		}
		return false
	})
	return e, ip
}

func client(e *azemu.Emulator, timeout time.Duration) *guest.Client {
	c := guest.NewClient(e.AgentPort(), timeout)
	c.RetryInterval = 50 * time.Millisecond
	c.MaxStatusFailures = 3
	return c
}

func analysis(t *testing.T, rs *guesttest.ResultServer, sample []byte) guest.Analysis {
	t.Helper()
	analyzer, err := guest.LoadAnalyzer("")
	if err != nil {
		t.Fatal(err)
	}
	return guest.Analysis{
		ID: 42, Category: "file", Target: "invoice.exe", FileName: "invoice.exe", FileType: "PE32 executable",
		Package: "exe", Options: "free=yes", Timeout: 200 * time.Second,
		Sample: bytes.NewReader(sample), SampleSize: int64(len(sample)), Analyzer: analyzer,
		ResultServerIP: rs.IP, ResultServerPort: rs.Port, Platform: "windows",
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// The whole host sequence against an emulated VM: the analysis.conf and the
// sample land where the analyzer looks, the analyzer reports to the result
// server from the VM's own address, and Wait sees it complete.
func TestAnalysisOnAnEmulatedVM(t *testing.T) {
	e, ip := emulatedVM(t, "300ms")
	rs := guesttest.NewResultServer(t)
	c := client(e, 2*time.Second)
	ctx := ctxFor(t, 30*time.Second)
	info, err := c.WaitReady(ctx, ip)
	if err != nil || !info.Has("subdir_upload") {
		t.Fatalf("WaitReady: %+v %v", info, err)
	}
	sample := []byte("MZ\x90\x00\r\n\x00 a sample")
	if err := c.Start(ctx, ip, analysis(t, rs, sample)); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx, ip); err != nil {
		t.Fatal(err)
	}

	poll.Until(t, 5*time.Second, "LOG, FILE 2 and BSON", func() bool {
		n := 0
		for _, s := range rs.Streams() {
			if s.Closed {
				n++
			}
		}
		return n == 3
	})
	for _, s := range rs.Streams() {
		if s.PeerIP != ip {
			t.Errorf("%s came from %s, not the VM at %s", s.Command, s.PeerIP, ip)
		}
	}
	log, _ := rs.Find("LOG")
	sum := sha256.Sum256(sample)
	for _, want := range []string{
		"task 42: category file, target invoice.exe, package exe, options free=yes",
		fmt.Sprintf(`sample C:\Users\cape\AppData\Local\Temp\42\invoice.exe: %d bytes, sha256 %s`, len(sample), hex.EncodeToString(sum[:])),
		"analysis completed",
	} {
		if !strings.Contains(string(log.Data), want) {
			t.Errorf("LOG lacks %q:\n%s", want, log.Data)
		}
	}
	fs, _ := rs.Find("FILE 2")
	if f, err := fs.File(); err != nil || !strings.HasPrefix(f.Path, "files/") {
		t.Errorf("FILE 2: %+v %v", f, err)
	}
	if b, ok := rs.Find("BSON "); !ok || len(b.Data) == 0 {
		t.Errorf("BSON: %+v", b)
	}
}

func TestAgentDownIsNotReady(t *testing.T) {
	e, ip := emulatedVM(t, "1s")
	if _, err := e.SetAgentState("guest", "", "0", "down"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := client(e, time.Second).WaitReady(ctxFor(t, time.Second), ip)
	if err == nil || !strings.HasPrefix(err.Error(), "agent "+ip+": not ready") || !errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("WaitReady on a down agent: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("WaitReady took %s for a 1s deadline", d)
	}
}

// A hung agent holds no call longer than the client's timeout.
func TestHungAgentBoundsEveryCall(t *testing.T) {
	e, ip := emulatedVM(t, "1s")
	rs := guesttest.NewResultServer(t)
	if _, err := e.SetAgentState("guest", "", "0", "hang"); err != nil {
		t.Fatal(err)
	}
	c := client(e, 300*time.Millisecond)
	ctx := ctxFor(t, 30*time.Second)
	for name, call := range map[string]func() error{
		"Ping":  func() error { return c.Ping(ctx, ip) },
		"Start": func() error { return c.Start(ctx, ip, analysis(t, rs, []byte("MZ"))) },
		"Wait":  func() error { return c.Wait(ctx, ip) },
	} {
		start := time.Now()
		err := call()
		d := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "no answer within 300ms") {
			t.Errorf("%s on a hung agent: %v", name, err)
		}
		if name == "Wait" && !errors.Is(err, guest.ErrAgentLost) {
			t.Errorf("Wait on a hung agent: %v", err)
		}
		if d > 3*time.Second {
			t.Errorf("%s took %s", name, d)
		}
	}
}

func TestAnalyzerFailureIsNeverSuccess(t *testing.T) {
	e, ip := emulatedVM(t, "1s")
	rs := guesttest.NewResultServer(t)
	if _, err := e.SetAgentState("guest", "", "0", "fail"); err != nil {
		t.Fatal(err)
	}
	c := client(e, 2*time.Second)
	ctx := ctxFor(t, 30*time.Second)
	if err := c.Start(ctx, ip, analysis(t, rs, []byte("MZ"))); err != nil {
		t.Fatal(err)
	}
	err := c.Wait(ctx, ip)
	var ae *guest.AnalyzerError
	if !errors.As(err, &ae) || ae.Status != "failed" || ae.Description != "Exited with exit code 1" || ae.ExitCode == nil || *ae.ExitCode != 1 {
		t.Fatalf("Wait: %v", err)
	}
	if err.Error() != "agent "+ip+": analyzer failed: Exited with exit code 1" {
		t.Errorf("error text: %v", err)
	}
}

// The VM vanishes (eviction, manual delete) or hangs mid-analysis: Wait
// gives up after the failed polls it tolerates, naming the cause.
func TestAgentLostMidAnalysis(t *testing.T) {
	for _, c := range []struct {
		name, want string
		lose       func(e *azemu.Emulator) error
	}{
		{"deleted", "connection refused", func(e *azemu.Emulator) error { _, err := e.RemoveVM("guest", "", "0"); return err }},
		{"hung", "no answer within", func(e *azemu.Emulator) error { _, err := e.SetAgentState("guest", "", "0", "hang"); return err }},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, ip := emulatedVM(t, "1h")
			rs := guesttest.NewResultServer(t)
			cl := client(e, 300*time.Millisecond)
			ctx := ctxFor(t, 30*time.Second)
			if err := cl.Start(ctx, ip, analysis(t, rs, []byte("MZ"))); err != nil {
				t.Fatal(err)
			}
			poll.Until(t, 5*time.Second, "the analyzer's log", func() bool { _, ok := rs.Find("LOG"); return ok })
			if err := c.lose(e); err != nil {
				t.Fatal(err)
			}
			err := cl.Wait(ctx, ip)
			if !errors.Is(err, guest.ErrAgentLost) || !strings.Contains(err.Error(), "3 polls in a row failed") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Wait: %v", err)
			}
		})
	}
}
