package azemu

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// Token is the bearer token the emulator accepts (credential: emulator).
const Token = "sandfleet-emulator"

// Credential is an azcore.TokenCredential that hands out Token, for SDK
// clients talking to the emulator.
type Credential struct{}

// GetToken returns Token, valid for a day.
func (Credential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: Token, ExpiresOn: time.Now().Add(24 * time.Hour)}, nil
}

// Defaults for Options.
const (
	DefaultListen           = "127.0.0.1:0"
	DefaultPageSize         = 50
	DefaultAgentPort        = 8000
	DefaultAnalysisDuration = "2s"
	DefaultSubnetPrefix     = "10.0.0.0/22"
	DefaultLocation         = "westeurope"
)

// Options configure an Emulator. The zero value is usable: it listens on a
// free loopback port and keeps its state in a temporary directory.
type Options struct {
	// Listen is the HTTPS listen address ("127.0.0.1:8443"; port 0 picks one).
	Listen string
	// StateDir keeps state.json and the CA (ca.pem, ca-key.pem). Empty: a
	// temporary directory removed by Close.
	StateDir string
	// LRODelay is how long long-running operations stay InProgress; 0 ends
	// them by the first poll. The lro_delay_ms fault overrides it.
	LRODelay time.Duration
	// PageSize is the number of items per page of a list (default 50).
	PageSize int
	// AgentPort is the port guest agents listen on (default 8000).
	AgentPort int
	// AnalysisDuration is how long an emulated analyzer runs: "2s" or a
	// range "1s..3s" (default 2s).
	AnalysisDuration string
	// IPBlock overrides the loopback block VM IPs come from, such as
	// "127.42.0.0/16". Empty: the block kept in the state, or on first start
	// a random 127.X.Y.0/19 (X in 16..250, Y a multiple of 32).
	IPBlock string
	// SubnetPrefix is the addressPrefix every subnet reports (default
	// 10.0.0.0/22). It only feeds capacity arithmetic; NIC IPs come from IPBlock.
	SubnetPrefix string
	// Logger receives the emulator's logs (default slog.Default()).
	Logger *slog.Logger
	// Faults in force at start (see POST /_emulator/faults).
	Faults Faults
	// Location is the region the emulator's galleries are in, as a gallery
	// image reports it, and the one ARM's errors name when a request has
	// none (default westeurope, sandfleet's default azure.region).
	Location string
	// GalleryImages names the gallery image definitions that exist, in
	// every gallery of every resource group; any other is not found. Nil:
	// any image exists.
	GalleryImages []string
}

// Emulator is one Azure Resource Manager emulator. Create it with New, then
// Start it (or Serve); Close stops it.
type Emulator struct {
	opts     Options
	log      *slog.Logger
	dir      string
	tempDir  bool
	ca       *authority
	pool     *x509.CertPool
	analysis [2]time.Duration
	// images holds Options.GalleryImages, lower-cased as ARM compares
	// names; nil when any image exists.
	images map[string]bool

	mu     sync.Mutex // guards everything below up to saveMu
	st     *state
	faults Faults
	gen    uint64 // bumped by every change of st
	saved  uint64 // gen on disk
	closed bool

	saveMu sync.Mutex // serialises writes of state.json

	agentMu    sync.Mutex // serialises agent reconciliation
	agents     map[string]*agent
	agentGen   uint64 // gen the agents were last reconciled to
	agentRetry bool   // an agent could not be bound; try again

	reqlog requestLog
	limits rateLimits

	lifeMu   sync.Mutex
	started  bool
	ln       net.Listener
	srv      *http.Server
	url      string
	kick     chan struct{}
	quit     chan struct{}
	loopDone chan struct{}
	serveErr chan error
}

// New validates opts, loads the state directory (creating the CA on first
// use) and returns an emulator ready to Start.
func New(opts Options) (*Emulator, error) {
	if opts.Listen == "" {
		opts.Listen = DefaultListen
	}
	if opts.PageSize == 0 {
		opts.PageSize = DefaultPageSize
	}
	if opts.PageSize < 1 {
		return nil, fmt.Errorf("page size %d: must be >= 1", opts.PageSize)
	}
	if opts.AgentPort == 0 {
		opts.AgentPort = DefaultAgentPort
	}
	if opts.AgentPort < 1 || opts.AgentPort > 65535 {
		return nil, fmt.Errorf("agent port %d: must be 1..65535", opts.AgentPort)
	}
	if opts.LRODelay < 0 {
		return nil, fmt.Errorf("lro delay %s: must be >= 0", opts.LRODelay)
	}
	if opts.AnalysisDuration == "" {
		opts.AnalysisDuration = DefaultAnalysisDuration
	}
	lo, hi, err := ParseDurationRange(opts.AnalysisDuration)
	if err != nil {
		return nil, err
	}
	if opts.Location == "" {
		opts.Location = DefaultLocation
	}
	if opts.SubnetPrefix == "" {
		opts.SubnetPrefix = DefaultSubnetPrefix
	}
	if _, err := netip.ParsePrefix(opts.SubnetPrefix); err != nil {
		return nil, fmt.Errorf("subnet prefix: %w", err)
	}
	var block netip.Prefix
	if opts.IPBlock != "" {
		if block, err = parseIPBlock(opts.IPBlock); err != nil {
			return nil, err
		}
	}
	if _, _, err := net.SplitHostPort(opts.Listen); err != nil {
		return nil, fmt.Errorf("listen address %q: %w", opts.Listen, err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	faults, _, err := mergeFaults(Faults{}, mustJSON(opts.Faults))
	if err != nil {
		return nil, err
	}
	var images map[string]bool
	if opts.GalleryImages != nil {
		images = map[string]bool{}
		for _, name := range opts.GalleryImages {
			if name == "" {
				return nil, errors.New("gallery images: an empty name")
			}
			images[strings.ToLower(name)] = true
		}
	}

	e := &Emulator{
		opts:     opts,
		log:      opts.Logger.With("component", "azemu"),
		dir:      opts.StateDir,
		analysis: [2]time.Duration{lo, hi},
		images:   images,
		faults:   faults,
		agents:   map[string]*agent{},
		// The agents of the VMs in the state have never been started.
		agentRetry: true,
	}
	if e.dir == "" {
		d, err := os.MkdirTemp("", "azemu-*")
		if err != nil {
			return nil, err
		}
		e.dir, e.tempDir = d, true
	} else if err := os.MkdirAll(e.dir, 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if e.ca, err = loadOrCreateAuthority(e.dir); err != nil {
		return nil, err
	}
	e.pool = x509.NewCertPool()
	e.pool.AddCert(e.ca.cert)
	p, err := loadState(e.dir)
	if err != nil {
		return nil, err
	}
	if e.st, err = newState(p, block); err != nil {
		return nil, err
	}
	if p == nil || p.IPBlock != e.st.ips.prefix.String() {
		// Keep the address block chosen now, so a restart reuses it.
		e.gen++
	}
	return e, nil
}

// ParseDurationRange reads "2s" or "1s..3s".
func ParseDurationRange(s string) (lo, hi time.Duration, err error) {
	a, b, isRange := strings.Cut(strings.TrimSpace(s), "..")
	if lo, err = time.ParseDuration(strings.TrimSpace(a)); err != nil {
		return 0, 0, fmt.Errorf("analysis duration %q: %w", s, err)
	}
	hi = lo
	if isRange {
		if hi, err = time.ParseDuration(strings.TrimSpace(b)); err != nil {
			return 0, 0, fmt.Errorf("analysis duration %q: %w", s, err)
		}
	}
	if lo < 0 || hi < lo {
		return 0, 0, fmt.Errorf("analysis duration %q: want 0 <= min <= max", s)
	}
	return lo, hi, nil
}

// Start listens and serves in the background, and brings up the guest agents
// of the VMs in the state.
func (e *Emulator) Start() error {
	e.lifeMu.Lock()
	defer e.lifeMu.Unlock()
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if e.started || closed {
		return errors.New("azemu: already started or closed")
	}
	ln, err := e.listen()
	if err != nil {
		return fmt.Errorf("azemu: listen: %w", err)
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	listenHost, _, _ := net.SplitHostPort(e.opts.Listen)
	cert, err := e.ca.serverCertificate(host, listenHost)
	if err != nil {
		_ = ln.Close()
		return err
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	e.ln = ln
	e.url = "https://" + net.JoinHostPort(host, port)
	e.srv = &http.Server{
		Handler:           e.handler(),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
	}
	e.kick = make(chan struct{}, 1)
	e.quit = make(chan struct{})
	e.loopDone = make(chan struct{})
	e.serveErr = make(chan error, 1)
	e.started = true

	e.mu.Lock()
	if a := ln.Addr().String(); e.st.listen != a {
		e.st.listen = a
		e.gen++
	}
	e.mu.Unlock()
	e.settle()
	// Who finds the state directory finds the emulator: the CA to trust is
	// there already, and the port may be one picked now.
	if err := writeFileAtomic(filepath.Join(e.dir, EndpointFile), []byte(e.url+"\n"), 0o644); err != nil {
		e.log.Warn("write endpoint file", "err", err)
	}

	go func() {
		err := e.srv.ServeTLS(ln, "", "")
		if !errors.Is(err, http.ErrServerClosed) {
			e.serveErr <- err
		}
		close(e.serveErr)
	}()
	go e.loop()
	e.log.Info("Azure emulator listening", "url", e.url, "state", e.dir,
		"ip_block", e.IPBlock(), "agent_port", e.opts.AgentPort)
	return nil
}

// listen binds Options.Listen. Asked for any port on a host it listened on
// before, it first tries the port it had then: a cloud's endpoint does not
// move, and clients' resume tokens hold absolute polling URLs.
func (e *Emulator) listen() (net.Listener, error) {
	host, port, _ := net.SplitHostPort(e.opts.Listen)
	e.mu.Lock()
	last := e.st.listen
	e.mu.Unlock()
	if port == "0" && last != "" {
		if lh, _, err := net.SplitHostPort(last); err == nil && lh == host {
			if ln, err := net.Listen("tcp", last); err == nil {
				return ln, nil
			}
			e.log.Info("previous emulator port is taken; picking another", "previous", last)
		}
	}
	return net.Listen("tcp", e.opts.Listen)
}

// Serve starts the emulator and runs it until ctx is done, then closes it.
func (e *Emulator) Serve(ctx context.Context) error {
	if err := e.Start(); err != nil {
		return err
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-e.serveErr:
	}
	return errors.Join(serveErr, e.Close())
}

// Close stops the server, the background work and every agent, and makes
// sure the state is on disk. It is safe to call more than once.
func (e *Emulator) Close() error {
	e.lifeMu.Lock()
	defer e.lifeMu.Unlock()
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	gen := e.gen
	e.mu.Unlock()

	var errs []error
	if e.started {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := e.srv.Shutdown(ctx); err != nil {
			_ = e.srv.Close()
		}
		cancel()
		close(e.quit)
		<-e.loopDone
	}
	e.agentMu.Lock()
	for ip, a := range e.agents {
		a.stop()
		delete(e.agents, ip)
	}
	e.agentMu.Unlock()
	if err := e.commit(gen); err != nil {
		errs = append(errs, err)
	}
	if e.started {
		// Nothing answers there any more.
		if err := os.Remove(filepath.Join(e.dir, EndpointFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if e.tempDir {
		errs = append(errs, os.RemoveAll(e.dir))
	}
	return errors.Join(errs...)
}

// URL is the Resource Manager endpoint, https://host:port (after Start).
func (e *Emulator) URL() string {
	e.lifeMu.Lock()
	defer e.lifeMu.Unlock()
	return e.url
}

// Addr is the address the emulator listens on (after Start).
func (e *Emulator) Addr() string {
	e.lifeMu.Lock()
	defer e.lifeMu.Unlock()
	if e.ln == nil {
		return ""
	}
	return e.ln.Addr().String()
}

// CAFile is the path of the PEM certificate clients must trust.
func (e *Emulator) CAFile() string { return filepath.Join(e.dir, caCertFile) }

// EndpointFile, in the state directory, holds the URL of the emulator
// serving from it, while it serves.
const EndpointFile = "endpoint"

// Endpoint finds the emulator serving from state directory dir: its URL
// and the CA file to trust. An error wrapping fs.ErrNotExist says none has
// started there, or the last one stopped; after a crash the URL may be one
// that no longer answers.
func Endpoint(dir string) (url, caFile string, err error) {
	b, err := os.ReadFile(filepath.Join(dir, EndpointFile))
	if err != nil {
		return "", "", err
	}
	url = strings.TrimSpace(string(b))
	if url == "" {
		return "", "", fmt.Errorf("%s: empty", filepath.Join(dir, EndpointFile))
	}
	return url, filepath.Join(dir, caCertFile), nil
}

// CertPool holds the emulator's CA, for a client transport's RootCAs.
func (e *Emulator) CertPool() *x509.CertPool { return e.pool.Clone() }

// StateDir is where the emulator keeps its state.
func (e *Emulator) StateDir() string { return e.dir }

// IPBlock is the loopback block VM IPs are allocated from.
func (e *Emulator) IPBlock() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.ips.prefix.String()
}

// AgentPort is the port every VM's guest agent listens on.
func (e *Emulator) AgentPort() int { return e.opts.AgentPort }

// AnalysisDuration is the range an emulated analysis lasts.
func (e *Emulator) AnalysisDuration() (lo, hi time.Duration) {
	return e.analysis[0], e.analysis[1]
}

// loop ends operations when their time comes, retries agents that could not
// be bound, and forgets old operations.
func (e *Emulator) loop() {
	defer close(e.loopDone)
	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		e.mu.Lock()
		wait := time.Hour
		if len(e.st.pending) > 0 {
			wait = max(time.Until(e.st.pending[0].End), 0)
		}
		e.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-e.quit:
			return
		case <-e.kick:
		case <-timer.C:
		case <-retry.C:
		case <-prune.C:
			e.mu.Lock()
			e.st.pruneOps(time.Now())
			e.mu.Unlock()
		}
		e.settle()
	}
}

// settle ends the operations whose time has come, then makes the state
// durable and the agents current.
func (e *Emulator) settle() {
	e.mu.Lock()
	e.settleLocked(time.Now())
	gen := e.gen
	e.mu.Unlock()
	_ = e.publish(gen)
}

// publish makes the state as of gen durable and brings the agents in line
// with it. A failure to write is logged, and returned for the reply that
// would acknowledge the change.
func (e *Emulator) publish(gen uint64) error {
	err := e.commit(gen)
	if err != nil {
		e.log.Error("write state", "err", err)
	}
	e.syncAgents()
	return err
}

// wake tells the loop that an operation was added.
func (e *Emulator) wake() {
	if e.kick == nil {
		return
	}
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// commit makes sure the state as of gen is on disk before returning. Writes
// coalesce: one write covers every change made before it started.
func (e *Emulator) commit(gen uint64) error {
	e.saveMu.Lock()
	defer e.saveMu.Unlock()
	e.mu.Lock()
	if e.saved >= gen {
		e.mu.Unlock()
		return nil
	}
	data, err := e.st.snapshot()
	cur := e.gen
	e.mu.Unlock()
	if err != nil {
		return fmt.Errorf("snapshot state: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(e.dir, stateFile), data, 0o644); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	e.mu.Lock()
	e.saved = max(e.saved, cur)
	e.mu.Unlock()
	return nil
}

// syncAgents starts and stops guest agents to match the VMs. Binding happens
// outside e.mu; agentMu keeps reconciliations in order, and since each one
// works from a snapshot taken after the previous one ended, the last one
// always leaves the agents as the state says.
func (e *Emulator) syncAgents() {
	e.agentMu.Lock()
	defer e.agentMu.Unlock()
	e.mu.Lock()
	if e.closed || (e.agentGen == e.gen && !e.agentRetry) {
		e.mu.Unlock()
		return
	}
	want := make(map[string]agentSpec, len(e.agents)+16)
	for _, s := range e.st.sets {
		windows := s.view().osType != "Linux"
		for _, v := range s.VMs {
			if w := v.agentWanted(); w != agentDown {
				want[v.IP] = agentSpec{mode: w, boot: v.Boot, windows: windows, name: s.vmName(v.ID)}
			}
		}
	}
	gen := e.gen
	e.mu.Unlock()

	port := strconv.Itoa(e.opts.AgentPort)
	for ip, a := range e.agents {
		// A VM that went, or came back from a restart, loses its agent:
		// a reboot must not keep an analysis' state.
		if w, ok := want[ip]; !ok || w.boot != a.boot {
			a.stop()
			delete(e.agents, ip)
			e.log.Debug("agent stopped", "ip", ip)
		}
	}
	retry := false
	for ip, spec := range want {
		if a, ok := e.agents[ip]; ok {
			a.setMode(spec.mode)
			continue
		}
		a, err := startAgent(ip, net.JoinHostPort(ip, port), spec, e.analysis, e.log)
		if err != nil {
			retry = true
			e.log.Warn("agent cannot listen; will retry", "ip", ip, "err", err)
			continue
		}
		e.agents[ip] = a
		e.log.Debug("agent started", "ip", ip, "mode", spec.mode, "boot", spec.boot)
	}
	e.mu.Lock()
	e.agentGen, e.agentRetry = gen, retry
	e.mu.Unlock()
}

// agentRunning reports what the agent at ip is doing: up, hang, fail or down.
func (e *Emulator) agentRunning(ip string) string {
	e.agentMu.Lock()
	defer e.agentMu.Unlock()
	a, ok := e.agents[ip]
	if !ok {
		return agentDown
	}
	return a.state()
}
