//go:build linux && amd64

// Command guestinit is the whole userland of the test guests libvirttest
// boots: the init of an initramfs next to the host's kernel. It loads the
// NIC's driver, gives eth0 QEMU user networking's guest address and serves
// CAPE's agent protocol on port 8000 (azemu's agent, whose analyzer reports
// to the result server through the user network's host alias). It never
// exits: init may not.
package main

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/sandfleet/sandfleet/internal/azemu"
)

// The addresses QEMU's user networking (slirp) gives a guest by default.
var (
	guestIP = [4]byte{10, 0, 2, 15}
	netmask = [4]byte{255, 255, 255, 0}
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	_ = syscall.Mount("proc", "/proc", "proc", 0, "")
	_ = syscall.Mount("sysfs", "/sys", "sysfs", 0, "")
	analysis := time.Second
	name := "guest"
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if v, ok := strings.CutPrefix(f, "sandfleet.analysis="); ok {
				if d, err := time.ParseDuration(v); err == nil {
					analysis = d
				}
			}
			if v, ok := strings.CutPrefix(f, "sandfleet.name="); ok {
				name = v
			}
		}
	}
	if err := loadModule("/e1000.ko"); err != nil {
		log.Error("load e1000", "err", err)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat("/sys/class/net/eth0"); err == nil {
			break
		}
	}
	if err := ifup("lo", [4]byte{127, 0, 0, 1}, [4]byte{255, 0, 0, 0}); err != nil {
		log.Error("lo", "err", err)
	}
	if err := ifup("eth0", guestIP, netmask); err != nil {
		log.Error("eth0", "err", err)
	}
	log.Info("sandfleet test guest: agent on :8000", "name", name, "analysis", analysis)
	for {
		if err := azemu.ServeAgent(context.Background(), ":8000", name, analysis, log); err != nil {
			log.Error("agent", "err", err)
			time.Sleep(time.Second)
		}
	}
}

// sysFinitModule is finit_module(2) on amd64, which package syscall does
// not name.
const sysFinitModule = 313

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	params := []byte{0}
	_, _, errno := syscall.Syscall(sysFinitModule, f.Fd(), uintptr(unsafe.Pointer(&params[0])), 0)
	if errno != 0 && errno != syscall.EEXIST {
		return errno
	}
	return nil
}

// ifreq is struct ifreq: a name and, here, a sockaddr_in or the flags.
type ifreq struct {
	name [16]byte
	data [24]byte
}

func ioctl(fd int, req uintptr, r *ifreq) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(r))); errno != 0 {
		return errno
	}
	return nil
}

// ifup gives an interface its address and brings it up.
func ifup(name string, ip, mask [4]byte) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	sockaddr := func(a [4]byte) *ifreq {
		r := &ifreq{}
		copy(r.name[:], name)
		r.data[0] = syscall.AF_INET // sin_family, little-endian
		copy(r.data[4:8], a[:])
		return r
	}
	if err := ioctl(fd, syscall.SIOCSIFADDR, sockaddr(ip)); err != nil {
		return err
	}
	if err := ioctl(fd, syscall.SIOCSIFNETMASK, sockaddr(mask)); err != nil {
		return err
	}
	r := &ifreq{}
	copy(r.name[:], name)
	if err := ioctl(fd, syscall.SIOCGIFFLAGS, r); err != nil {
		return err
	}
	r.data[0] |= syscall.IFF_UP | syscall.IFF_RUNNING
	return ioctl(fd, syscall.SIOCSIFFLAGS, r)
}
