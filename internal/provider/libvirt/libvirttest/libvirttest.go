// Package libvirttest boots real guests under this host's libvirt daemon,
// for the tests of the libvirt provider and of what runs on it. A guest is
// the host's own kernel (/boot/vmlinuz-*) and an initramfs made at test
// time around a static Go binary (guestinit) that answers as CAPE's agent
// on port 8000 and, told to run the analyzer, reports to the result server.
// Its network is QEMU's user networking: the agent is forwarded to a
// loopback address of this host (127.x.y.z:8000), and the guest reaches the
// host's loopback as 10.0.2.2 — no bridge, no address outside loopback.
// KVM when /dev/kvm can be opened, TCG otherwise.
//
// Without a libvirt daemon at qemu:///system the tests fail, not skip:
// .ci/run installs and starts one.
package libvirttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
)

// URI is the libvirt connection the guests are defined on.
const URI = "qemu:///system"

// Guest is one booted domain.
type Guest struct {
	Name string // the domain's name: a machine's label
	IP   string // the loopback address its agent is forwarded to (port 8000)
}

// Image is a bootable guest: a kernel and an initramfs, in a folder the
// hypervisor's user can read.
type Image struct {
	Dir    string
	Kernel string
	Initrd string
	// Virt is the domain type: kvm, or qemu (TCG) without /dev/kvm.
	Virt string
}

var (
	imageOnce sync.Once
	image     Image
	imageErr  error
)

// NewImage builds the guest image once per test binary, for all its tests:
// a TestMain removes it with RemoveImage.
func NewImage(tb testing.TB) Image {
	tb.Helper()
	imageOnce.Do(func() { image, imageErr = build() })
	if imageErr != nil {
		tb.Fatalf("libvirttest: guest image: %v", imageErr)
	}
	return image
}

// RemoveImage deletes the image's folder, if it was built.
func RemoveImage() {
	if image.Dir != "" {
		_ = os.RemoveAll(image.Dir)
	}
}

func build() (Image, error) {
	if out, err := exec.Command("virsh", "-c", URI, "version").CombinedOutput(); err != nil {
		return Image{}, fmt.Errorf("no libvirt daemon answers at %s (.ci/run installs and starts one): %v: %s", URI, err, out)
	}
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(kernels) == 0 {
		return Image{}, fmt.Errorf("no kernel in /boot (.ci/run installs linux-image-amd64)")
	}
	sort.Strings(kernels)
	kernel := kernels[len(kernels)-1]
	version := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	nic := filepath.Join("/lib/modules", version, "kernel/drivers/net/ethernet/intel/e1000/e1000.ko")
	nicMod, err := os.ReadFile(nic)
	if err != nil {
		return Image{}, fmt.Errorf("the guest's NIC driver: %w", err)
	}
	dir, err := os.MkdirTemp("", "sandfleet-libvirt-")
	if err != nil {
		return Image{}, err
	}
	// The hypervisor runs as its own user: it must reach the files.
	if err := os.Chmod(dir, 0o755); err != nil {
		return Image{}, err
	}
	im := Image{Dir: dir, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd")}
	k, err := os.ReadFile(kernel)
	if err != nil {
		return Image{}, err
	}
	if err := os.WriteFile(im.Kernel, k, 0o644); err != nil {
		return Image{}, err
	}
	im.Virt = virt(im.Kernel)
	initBin := filepath.Join(dir, "init")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", initBin,
		"github.com/sandfleet/sandfleet/internal/provider/libvirt/libvirttest/guestinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Image{}, fmt.Errorf("build guestinit: %v: %s", err, out)
	}
	initData, err := os.ReadFile(initBin)
	if err != nil {
		return Image{}, err
	}
	var cpio bytes.Buffer
	w := newCpio(&cpio)
	for _, d := range []string{"dev", "proc", "sys", "tmp"} {
		w.dir(d)
	}
	w.char("dev/console", 5, 1)
	w.file("init", 0o755, initData)
	w.file("e1000.ko", 0o644, nicMod)
	w.close()
	if err := os.WriteFile(im.Initrd, cpio.Bytes(), 0o644); err != nil {
		return Image{}, err
	}
	return im, nil
}

// virt chooses the domain type: $SANDFLEET_LIBVIRT_VIRT if set, else kvm
// when a kernel starts under KVM here, else qemu (TCG). /dev/kvm opening is
// not enough: a nested KVM may take the guest and never run it.
func virt(kernel string) string {
	if v := os.Getenv("SANDFLEET_LIBVIRT_VIRT"); v != "" {
		return v
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "qemu"
	}
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	var out syncBuffer
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-enable-kvm", "-m", "128", "-kernel", kernel,
		"-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "qemu"
	}
	defer func() { _ = cmd.Wait() }()
	defer cancel()
	for ctx.Err() == nil {
		if strings.Contains(out.String(), "Linux version") {
			return "kvm"
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "qemu"
}

// syncBuffer is a bytes.Buffer a process writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Host boots guests from an image and removes them when the test ends.
type Host struct {
	tb     testing.TB
	im     Image
	prefix string
}

// NewHost returns a host whose guests are named with a prefix of their own,
// so that tests running at once never share a domain. It holds the host's
// libvirt daemon for the test: tests of several packages (go test runs
// packages at once) take turns, so that one that stops and starts the
// daemon never cuts another's calls short.
func NewHost(tb testing.TB) *Host {
	tb.Helper()
	im := NewImage(tb)
	hold(tb)
	var b [3]byte
	_, _ = rand.Read(b[:])
	return &Host{tb: tb, im: im, prefix: "sf" + hex.EncodeToString(b[:])}
}

// Boot defines and starts n guests, waits for their agents, and takes the
// running snapshot named snapshot of each (none when snapshot is empty).
// Their analyzers run for analysis.
func (h *Host) Boot(n int, snapshot string, analysis time.Duration) []Guest {
	h.tb.Helper()
	guests := make([]Guest, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range guests {
		guests[i] = Guest{Name: fmt.Sprintf("%s-%d", h.prefix, i)}
		ip, err := freeLoopback()
		if err != nil {
			h.tb.Fatal(err)
		}
		guests[i].IP = ip
		h.tb.Cleanup(func() { h.Remove(guests[i].Name) })
		wg.Go(func() { errs[i] = h.boot(guests[i], snapshot, analysis) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			h.tb.Fatal(err)
		}
	}
	return guests
}

// boot defines, starts and snapshots one guest.
func (h *Host) boot(g Guest, snapshot string, analysis time.Duration) error {
	disk := filepath.Join(h.im.Dir, g.Name+".qcow2")
	// A running snapshot keeps the guest's memory inside a qcow2 disk; the
	// guest itself never reads it.
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "16M").CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create: %v: %s", err, out)
	}
	xml := filepath.Join(h.im.Dir, g.Name+".xml")
	if err := os.WriteFile(xml, []byte(h.domainXML(g, disk, analysis)), 0o644); err != nil {
		return err
	}
	if _, err := Virsh("define", xml); err != nil {
		return err
	}
	if _, err := Virsh("start", g.Name); err != nil {
		return err
	}
	if err := WaitAgent(g.IP, 2*time.Minute); err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	if snapshot == "" {
		return nil
	}
	_, err := Virsh("snapshot-create-as", g.Name, snapshot)
	return err
}

// Remove destroys and undefines a domain, with its snapshots' metadata;
// one that is not there is fine.
func (h *Host) Remove(name string) {
	_, _ = Virsh("destroy", name)
	_, _ = Virsh("undefine", name, "--snapshots-metadata")
}

func (h *Host) domainXML(g Guest, disk string, analysis time.Duration) string {
	return fmt.Sprintf(`<domain type='%s' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>%s</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 rdinit=/init sandfleet.name=%s sandfleet.analysis=%s</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='%s'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=sf0,restrict=off,hostfwd=tcp:%s:8000-:8000'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='e1000,netdev=sf0,addr=0x10'/>
  </qemu:commandline>
</domain>
`, h.im.Virt, g.Name, h.im.Kernel, h.im.Initrd, g.Name, analysis, disk,
		filepath.Join(h.im.Dir, g.Name+".console"), g.IP)
}

// Virsh runs virsh on URI. A daemon that is restarting is waited for (30 s
// at most); other failures are returned with virsh's words.
func Virsh(args ...string) (string, error) {
	var out []byte
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err = exec.Command("virsh", append([]string{"-q", "-c", URI}, args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "ailed to connect") || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// WaitAgent waits until the agent at ip:8000 answers GET /.
func WaitAgent(ip string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	c := &http.Client{Timeout: 2 * time.Second}
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(ip, "8000")+"/", nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /: %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent at %s:8000 silent for %s: %v", ip, within, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// freeLoopback picks a loopback address whose port 8000 is free.
func freeLoopback() (string, error) {
	for range 50 {
		n, _ := rand.Int(rand.Reader, big.NewInt(200*250*250))
		v := int(n.Int64())
		ip := fmt.Sprintf("127.%d.%d.%d", 20+v/62500, v/250%250, 2+v%250)
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "8000"))
		if err == nil {
			l.Close()
			return ip, nil
		}
	}
	return "", fmt.Errorf("no free loopback address for a guest's agent")
}

// lockFile is the lock by which test processes take turns with the daemon.
var lockFile = filepath.Join(os.TempDir(), "sandfleet-libvirttest.lock")

// hold waits for the daemon to be the test's alone, and keeps it so until
// the test ends (after its guests are removed: cleanups run last first).
func hold(tb testing.TB) {
	tb.Helper()
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		tb.Fatalf("libvirttest: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		tb.Fatalf("libvirttest: lock %s: %v", lockFile, err)
	}
	tb.Cleanup(func() { f.Close() }) // closing releases the lock
}

// Daemon is the libvirt daemon running on this host: libvirtd, or
// virtqemud in a modular setup.
type Daemon struct {
	Name    string // libvirtd or virtqemud
	PIDFile string
}

// FindDaemon finds the running daemon by its pid file.
func FindDaemon(tb testing.TB) Daemon {
	tb.Helper()
	for _, d := range []Daemon{{"virtqemud", "/run/virtqemud.pid"}, {"libvirtd", "/run/libvirtd.pid"}} {
		if pid, err := d.PID(); err == nil && syscall.Kill(pid, 0) == nil {
			return d
		}
	}
	tb.Fatal("libvirttest: no running libvirtd or virtqemud (no live pid in /run/libvirtd.pid or /run/virtqemud.pid)")
	return Daemon{}
}

// PID reads the daemon's pid file.
func (d Daemon) PID() (int, error) {
	b, err := os.ReadFile(d.PIDFile)
	if err != nil {
		return 0, err
	}
	var pid int
	_, err = fmt.Sscan(string(b), &pid)
	return pid, err
}

// Stop ends the daemon (SIGTERM, as a service manager stops it) and waits
// until it is gone. Its guests keep running.
func (d Daemon) Stop(tb testing.TB) {
	tb.Helper()
	pid, err := d.PID()
	if err != nil {
		tb.Fatalf("%s: %v", d.Name, err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		tb.Fatalf("stop %s (pid %d): %v", d.Name, pid, err)
	}
	poll.Until(tb, 30*time.Second, d.Name+" stopped", func() bool { return syscall.Kill(pid, 0) != nil })
}

// Start starts the daemon again, as .ci/run does, and waits until it answers.
func (d Daemon) Start(tb testing.TB) {
	tb.Helper()
	if out, err := exec.Command(d.Name, "-d").CombinedOutput(); err != nil {
		tb.Fatalf("start %s: %v: %s", d.Name, err, out)
	}
	poll.Until(tb, 30*time.Second, d.Name+" answers", func() bool {
		return exec.Command("virsh", "-c", URI, "version").Run() == nil
	})
}

// Reboot boots a guest that was removed again, under its name and address.
func (h *Host) Reboot(g Guest, snapshot string, analysis time.Duration) {
	h.tb.Helper()
	h.Remove(g.Name)
	if err := h.boot(g, snapshot, analysis); err != nil {
		h.tb.Fatal(err)
	}
}

// Mark stores a file of a random name in the guest through its agent and
// returns its path: only the guest's memory holds it, so a revert to a
// snapshot taken before loses it.
func Mark(tb testing.TB, ip string) string {
	tb.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	path := "/tmp/sandfleet-mark-" + hex.EncodeToString(b[:])
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("filepath", path)
	fw, _ := mw.CreateFormFile("file", "mark")
	_, _ = fw.Write(b[:])
	_ = mw.Close()
	resp, err := http.Post("http://"+net.JoinHostPort(ip, "8000")+"/store", mw.FormDataContentType(), &body)
	if err != nil {
		tb.Fatalf("mark the guest at %s: %v", ip, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("mark the guest at %s: %s", ip, resp.Status)
	}
	return path
}

// Marked reports whether the guest at ip holds the file Mark stored.
func Marked(tb testing.TB, ip, path string) bool {
	tb.Helper()
	resp, err := http.PostForm("http://"+net.JoinHostPort(ip, "8000")+"/retrieve", url.Values{"filepath": {path}})
	if err != nil {
		tb.Fatalf("ask the guest at %s: %v", ip, err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
