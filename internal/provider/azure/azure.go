// Package azure is the provider for Azure Virtual Machine Scale Sets, written on
// the official Azure SDK for Go (armcompute, armnetwork, azidentity).
//
// One scale set backs one pool; its instances are the pool's machines, named
// <scale set>_<instance id>. Scale sets sandfleet creates carry the tag
// sandfleet-owned=true, so that a restarted sandfleet finds exactly its own.
//
// The driver never lets the SDK sit out a throttle: a 429 comes back at once as
// a *provider.ThrottledError carrying Retry-After, and the caller decides when
// to call again. Every long-running operation returns its resume token before
// anyone waits, and Wait polls it as ARM asks, after each reply's Retry-After,
// backing off from Options.PollInterval when there is none, bounded by its
// context.
package azure

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider"
)

// EmulatorToken is the bearer token credential "emulator" sends; sandfleet's
// ARM emulator accepts it.
const EmulatorToken = "sandfleet-emulator"

// emulatorSubscription stands in when the in-process emulator is used without
// a subscription id: the emulator accepts any.
const emulatorSubscription = "00000000-0000-0000-0000-000000000000"

// OwnerTag marks scale sets sandfleet created and may manage.
const OwnerTag = "sandfleet-owned"

// Tags sandfleet writes on the scale sets it creates, besides OwnerTag.
const (
	PoolTag     = "sandfleet-pool"
	PlatformTag = "sandfleet-platform"
	ArchTag     = "sandfleet-arch"
	TagsTag     = "sandfleet-tags" // the pool's tags, comma-separated
)

// Options tune a Driver beyond its configuration.
type Options struct {
	// CertPool is extra trust for the Resource Manager endpoint (the emulator's
	// CA), on top of the system roots and azure.ca_file.
	CertPool *x509.CertPool
	// PollInterval is the first pause between polls of a long-running
	// operation whose replies name no Retry-After; it grows by half each
	// poll, to five times this. Default 2s.
	PollInterval time.Duration
	// Logger receives a line per operation begun; default slog.Default().
	Logger *slog.Logger
	// Credential overrides the one azure.credential selects.
	Credential azcore.TokenCredential
	// MaxWait bounds a Wait whose context has no deadline (SPEC: no wait is
	// unbounded); default 300s, timeouts.cloud_operation's default.
	MaxWait time.Duration
	// RetryDelay is the SDK's first delay before retrying a 5xx or a lost
	// connection (it doubles each retry); default the SDK's 800ms.
	RetryDelay time.Duration
	// IPRefresh is how often a list reads every NIC of a scale set again,
	// to see an address changed behind sandfleet's back; default 3m.
	IPRefresh time.Duration
}

// Driver is the Azure VMSS provider. It is safe for concurrent use.
type Driver struct {
	cfg          config.Azure
	subscription string
	rg           string
	poll         time.Duration
	maxWait      time.Duration
	log          *slog.Logger

	sets      *armcompute.VirtualMachineScaleSetsClient
	images    *armcompute.GalleryImagesClient
	skus      *armcompute.ResourceSKUsClient
	usage     *armcompute.UsageClient
	subnets   *armnetwork.SubnetsClient
	arm       *arm.Client // the VM and NIC reads of reads.go
	transport *http.Client

	// vcpus caches the vCPUs of azure.instance_type: a size does not
	// change, and its SKU list is long.
	vcpus atomic.Int64

	ips ipCache
	// vmPages keeps each scale set's VM list pages decoded, to skip
	// decoding a page that has not changed since the last pass.
	vmPages pageCache
}

var _ provider.Provider = (*Driver)(nil)

// Capabilities: a scale set does everything the reconciler asks of a group.
func (d *Driver) Capabilities() provider.Capabilities {
	return provider.Capabilities{CreateGroup: true, DeleteGroup: true, UpdateImage: true, Capacity: true,
		Delete: true, BatchReimage: true, Tokens: true}
}

// New builds a driver from the azure section of the configuration. It reads the
// credential files it needs and fails with the config key at fault; it makes no
// network call.
func New(cfg config.Azure, opts Options) (*Driver, error) {
	sub := cfg.SubscriptionID
	if sub == "" {
		if cfg.Credential != "emulator" {
			return nil, errors.New("azure.subscription_id: required (or credential: emulator)")
		}
		sub = emulatorSubscription
	}
	if cfg.SandboxResourceGroup == "" {
		return nil, errors.New("azure.sandbox_resource_group: required")
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = cloud.AzurePublic.Services[cloud.ResourceManager].Endpoint
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("azure.endpoint: %q is not a URL", endpoint)
	}
	if u.Scheme != "https" {
		// azcore refuses to send a bearer token over plain HTTP.
		return nil, fmt.Errorf("azure.endpoint: %q: must be https", endpoint)
	}
	transport, err := newTransport(cfg.CAFile, opts.CertPool)
	if err != nil {
		return nil, err
	}
	cloudCfg := cloudFor(endpoint)
	cred := opts.Credential
	if cred == nil {
		cred, err = newCredential(cfg, azcore.ClientOptions{Cloud: cloudCfg, Transport: transport})
		if err != nil {
			return nil, err
		}
	}
	armOpts := &arm.ClientOptions{
		ClientOptions: policy.ClientOptions{
			Cloud:     cloudCfg,
			Transport: transport,
			Retry: policy.RetryOptions{
				// 429 is deliberately absent: a throttle goes back to the caller
				// at once with its Retry-After instead of blocking inside the SDK.
				StatusCodes: []int{
					http.StatusRequestTimeout, http.StatusInternalServerError, http.StatusBadGateway,
					http.StatusServiceUnavailable, http.StatusGatewayTimeout,
				},
				RetryDelay:    opts.RetryDelay,
				MaxRetryDelay: 10 * time.Second,
				// A backstop for calls made without a deadline.
				TryTimeout: 2 * time.Minute,
			},
		},
		// The emulator has no resource-provider registration endpoint.
		DisableRPRegistration: cfg.Credential == "emulator",
	}
	d := &Driver{
		cfg:          cfg,
		subscription: sub,
		rg:           cfg.SandboxResourceGroup,
		poll:         opts.PollInterval,
		maxWait:      opts.MaxWait,
		log:          opts.Logger,
		transport:    transport,
		ips:          ipCache{every: opts.IPRefresh},
	}
	if d.poll <= 0 {
		d.poll = 2 * time.Second
	}
	if d.maxWait <= 0 {
		d.maxWait = 300 * time.Second
	}
	if d.ips.every <= 0 {
		d.ips.every = defaultIPRefresh
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	d.log = d.log.With("provider", "azure")
	// Constructors only fail on empty arguments; keep the first error.
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	d.sets, err = armcompute.NewVirtualMachineScaleSetsClient(sub, cred, armOpts)
	keep(err)
	d.images, err = armcompute.NewGalleryImagesClient(sub, cred, armOpts)
	keep(err)
	d.skus, err = armcompute.NewResourceSKUsClient(sub, cred, armOpts)
	keep(err)
	d.usage, err = armcompute.NewUsageClient(sub, cred, armOpts)
	keep(err)
	d.arm, err = arm.NewClient(readerModule, readerVersion, cred, armOpts)
	keep(err)
	d.subnets, err = armnetwork.NewSubnetsClient(sub, cred, armOpts)
	keep(err)
	if len(errs) > 0 {
		return nil, fmt.Errorf("azure: %w", errors.Join(errs...))
	}
	return d, nil
}

// cloudFor maps a Resource Manager URL to its cloud: a known national cloud
// keeps its own Entra authority and audience; anything else (Azure Stack, an
// emulator) is its own audience with the public authority.
func cloudFor(endpoint string) cloud.Configuration {
	norm := strings.TrimRight(strings.ToLower(endpoint), "/")
	for _, c := range []cloud.Configuration{cloud.AzurePublic, cloud.AzureGovernment, cloud.AzureChina} {
		if strings.TrimRight(c.Services[cloud.ResourceManager].Endpoint, "/") == norm {
			return c
		}
	}
	c := cloud.Configuration{
		ActiveDirectoryAuthorityHost: cloud.AzurePublic.ActiveDirectoryAuthorityHost,
		Services:                     map[cloud.ServiceName]cloud.ServiceConfiguration{},
	}
	c.Services[cloud.ResourceManager] = cloud.ServiceConfiguration{Endpoint: endpoint, Audience: endpoint}
	return c
}

// newTransport returns an HTTP client trusting the system roots plus ca_file,
// and plus extra when given.
func newTransport(caFile string, extra *x509.CertPool) (*http.Client, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("azure.ca_file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("azure.ca_file: %s: no PEM certificate in it", caFile)
		}
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	if extra != nil {
		// A CertPool cannot be merged into another, so verify against each in
		// turn; this is the verification crypto/tls would do, with two root sets.
		tlsCfg.InsecureSkipVerify = true
		tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return verifyChain(cs, roots, extra)
		}
	}
	base, _ := http.DefaultTransport.(*http.Transport)
	var tr *http.Transport
	if base != nil {
		tr = base.Clone()
	} else {
		tr = &http.Transport{Proxy: http.ProxyFromEnvironment}
	}
	tr.TLSClientConfig = tlsCfg
	return &http.Client{Transport: tr}, nil
}

func verifyChain(cs tls.ConnectionState, pools ...*x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: server sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	var first error
	for _, roots := range pools {
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			DNSName:       cs.ServerName,
			Roots:         roots,
			Intermediates: inter,
		})
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// newCredential builds the credential azure.credential names.
func newCredential(cfg config.Azure, co azcore.ClientOptions) (azcore.TokenCredential, error) {
	switch cfg.Credential {
	case "", "default":
		cred, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{
			ClientOptions: co, TenantID: cfg.TenantID,
		})
		if err != nil {
			return nil, fmt.Errorf("azure.credential default: %w", err)
		}
		return cred, nil
	case "managed-identity":
		o := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: co}
		if cfg.ClientID != "" {
			o.ID = azidentity.ClientID(cfg.ClientID)
		}
		cred, err := azidentity.NewManagedIdentityCredential(o)
		if err != nil {
			return nil, fmt.Errorf("azure.credential managed-identity: %w", err)
		}
		return cred, nil
	case "secret":
		if err := need(cfg, "secret", "tenant_id", "client_id", "client_secret_file"); err != nil {
			return nil, err
		}
		secret, err := readTrimmed(cfg.ClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("azure.client_secret_file: %w", err)
		}
		if secret == "" {
			return nil, fmt.Errorf("azure.client_secret_file: %s is empty", cfg.ClientSecretFile)
		}
		cred, err := azidentity.NewClientSecretCredential(cfg.TenantID, cfg.ClientID, secret,
			&azidentity.ClientSecretCredentialOptions{ClientOptions: co})
		if err != nil {
			return nil, fmt.Errorf("azure.credential secret: %w", err)
		}
		return cred, nil
	case "certificate":
		if err := need(cfg, "certificate", "tenant_id", "client_id", "certificate_file"); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(cfg.CertificateFile)
		if err != nil {
			return nil, fmt.Errorf("azure.certificate_file: %w", err)
		}
		var password []byte
		if cfg.CertificatePasswordFile != "" {
			p, err := readTrimmed(cfg.CertificatePasswordFile)
			if err != nil {
				return nil, fmt.Errorf("azure.certificate_password_file: %w", err)
			}
			password = []byte(p)
		}
		certs, key, err := azidentity.ParseCertificates(data, password)
		if err != nil {
			return nil, fmt.Errorf("azure.certificate_file: %s: %w", cfg.CertificateFile, err)
		}
		cred, err := azidentity.NewClientCertificateCredential(cfg.TenantID, cfg.ClientID, certs, key,
			&azidentity.ClientCertificateCredentialOptions{ClientOptions: co})
		if err != nil {
			return nil, fmt.Errorf("azure.credential certificate: %w", err)
		}
		return cred, nil
	case "emulator":
		return staticToken(EmulatorToken), nil
	default:
		return nil, fmt.Errorf("azure.credential: %q: want default, managed-identity, secret, certificate or emulator", cfg.Credential)
	}
}

func need(cfg config.Azure, kind string, keys ...string) error {
	vals := map[string]string{
		"tenant_id": cfg.TenantID, "client_id": cfg.ClientID,
		"client_secret_file": cfg.ClientSecretFile, "certificate_file": cfg.CertificateFile,
	}
	for _, k := range keys {
		if vals[k] == "" {
			return fmt.Errorf("azure.%s: required with credential: %s", k, kind)
		}
	}
	return nil
}

func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// staticToken is a credential that always presents the same token.
type staticToken string

func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(24 * time.Hour)}, nil
}

// Close releases the driver's idle connections. Operations begun through it
// can still be resumed by another driver from their tokens.
func (d *Driver) Close() error {
	d.transport.CloseIdleConnections()
	return nil
}
