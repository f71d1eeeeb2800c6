package azemu

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
)

// ipPool hands out the NIC private IPs. Every IP is a loopback address, so the
// VM's guest agent can bind it on this host (Linux routes all of 127.0.0.0/8
// to lo). Addresses are handed out in order from a cursor that wraps, so a
// freed address is not reused until the whole block has gone round once.
type ipPool struct {
	prefix netip.Prefix
	base   uint32 // first address of the block
	size   uint32 // addresses in the block
	cursor uint32 // offset of the next address to try
	used   map[uint32]bool
	inUse  uint32 // used addresses inside the block
}

var loopbackNet = netip.MustParsePrefix("127.0.0.0/8")

// parseIPBlock validates an address block for VMs: a prefix inside
// 127.0.0.0/8, /8 to /30. "127.42" and "127.42.0.0" are read as /16.
func parseIPBlock(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		a, aerr := netip.ParseAddr(s)
		if aerr != nil {
			if a2, err2 := netip.ParseAddr(s + ".0.0"); err2 == nil {
				a, aerr = a2, nil
			}
		}
		if aerr != nil {
			return netip.Prefix{}, fmt.Errorf("ip block %q: want a prefix such as 127.42.0.0/16", s)
		}
		p = netip.PrefixFrom(a, 16)
	}
	p = p.Masked()
	if !p.Addr().Is4() || !loopbackNet.Contains(p.Addr()) || p.Bits() < 8 || p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("ip block %q: must be an IPv4 prefix of /8 to /30 inside 127.0.0.0/8", s)
	}
	return p, nil
}

// randomIPBlock picks one of 1,880 blocks 127.X.Y.0/19 (X in 16..250, Y a
// multiple of 32; 8,190 addresses each), so that emulators started side by
// side (parallel tests in several processes) rarely share a block.
func randomIPBlock() netip.Prefix {
	x := byte(16 + rand.IntN(235))
	y := byte(32 * rand.IntN(8))
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{127, x, y, 0}), 19)
}

func newIPPool(p netip.Prefix, cursor uint32) *ipPool {
	b := p.Addr().As4()
	size := uint32(1) << (32 - p.Bits())
	return &ipPool{
		prefix: p,
		base:   binary.BigEndian.Uint32(b[:]),
		size:   size,
		cursor: cursor % size,
		used:   map[uint32]bool{},
	}
}

func ipToU32(s string) (uint32, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return 0, false
	}
	b := a.As4()
	return binary.BigEndian.Uint32(b[:]), true
}

func u32ToIP(v uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b).String()
}

const localhostU32 = 127<<24 | 1

// usable reports whether an address may be given to a VM: never 127.0.0.1,
// never one ending in .0 or .255.
func usable(v uint32) bool {
	last := v & 0xff
	return last != 0 && last != 255 && v != localhostU32
}

func (p *ipPool) contains(v uint32) bool { return v-p.base < p.size }

// capacity is the number of addresses the block can hand out in all.
func (p *ipPool) capacity() uint32 {
	var n uint32
	if p.size >= 256 {
		n = p.size / 256 * 254
	} else {
		for off := uint32(0); off < p.size; off++ {
			if usable(p.base + off) {
				n++
			}
		}
		return n
	}
	if p.contains(localhostU32) {
		n--
	}
	return n
}

func (p *ipPool) free() uint32 { return p.capacity() - p.inUse }

// markUsed records an address already held (state loaded from disk).
func (p *ipPool) markUsed(ip string) {
	v, ok := ipToU32(ip)
	if !ok || p.used[v] {
		return
	}
	p.used[v] = true
	if p.contains(v) {
		p.inUse++
	}
}

// alloc hands out the next free address, or "" when the block is full.
func (p *ipPool) alloc() string {
	if p.free() == 0 {
		return ""
	}
	for range p.size {
		v := p.base + p.cursor
		p.cursor = (p.cursor + 1) % p.size
		if usable(v) && !p.used[v] {
			p.used[v] = true
			p.inUse++
			return u32ToIP(v)
		}
	}
	return ""
}

// release returns an address to the pool.
func (p *ipPool) release(ip string) {
	v, ok := ipToU32(ip)
	if !ok || !p.used[v] {
		return
	}
	delete(p.used, v)
	if p.contains(v) {
		p.inUse--
	}
}
