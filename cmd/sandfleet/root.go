package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/config"
)

// Set at build time with -ldflags "-X main.version=… -X main.commit=…".
var (
	version = "0.1.0-dev"
	commit  = ""
)

type globals struct {
	configFile string
	dataDir    string
	logFormat  string
	server     string
	serverSet  bool // --server given explicitly
	token      string
}

func rootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "sandfleet",
		Short:         "The machine layer of a malware-analysis sandbox",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			g.serverSet = cmd.Flags().Changed("server")
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.configFile, "config", "", "configuration file (default: sandfleet.yaml in the working directory if present, else built-in defaults)")
	pf.StringVar(&g.dataDir, "data-dir", "", "data directory (overrides data_dir)")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&g.server, "server", "http://127.0.0.1:8090", "daemon address for client commands (default: the configuration's listen address)")
	// The default is read when used, not shown: --help must not print a token.
	pf.StringVar(&g.token, "token", "", "API token for client commands (default $SANDFLEET_TOKEN)")
	api.Version = version
	root.AddCommand(serveCmd(g), emulatorCmd(g), migrateCmd(g), versionCmd(),
		machinesCmd(g), poolsCmd(g), checkCmd(g), doctorCmd(g), submitCmd(g), tasksCmd(g), importCapeCmd(), tokenCmd(g), libvirtCmd(g))
	return root
}

// configPath is the configuration file in use: --config, else
// ./sandfleet.yaml if present, else "" (the defaults).
func (g *globals) configPath() string {
	if g.configFile != "" {
		return g.configFile
	}
	if _, err := os.Stat("sandfleet.yaml"); err == nil {
		return "sandfleet.yaml"
	}
	return ""
}

// load reads the configuration at configPath, then applies --data-dir.
func (g *globals) load() (*config.Config, error) {
	cfg, err := config.Load(g.configPath())
	if err != nil {
		return nil, err
	}
	if g.dataDir != "" {
		cfg.DataDir = g.dataDir
	}
	return cfg, nil
}

// target is the daemon client commands talk to: --server, else the listen
// address of the configuration in use (so `check --config X` asks the daemon
// that X runs), else the default.
func (g *globals) target() (string, error) {
	if g.serverSet {
		return g.server, nil
	}
	if g.configFile == "" {
		if _, err := os.Stat("sandfleet.yaml"); err != nil {
			return g.server, nil
		}
	}
	cfg, err := g.load()
	if err != nil {
		return "", err
	}
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return "", fmt.Errorf("listen: %q is not host:port", cfg.Listen)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// apiToken is --token, else $SANDFLEET_TOKEN.
func (g *globals) apiToken() string {
	if g.token != "" {
		return g.token
	}
	return os.Getenv("SANDFLEET_TOKEN")
}

// logger is the log of commands without a configuration: --log-format.
func (g *globals) logger() *slog.Logger {
	return newLogger(config.Log{Format: g.logFormat, Level: "info"})
}

// newLogger writes structured records to stderr; a bad format or level is
// reported by config validation, and falls back to text at info here.
func newLogger(c config.Log) *slog.Logger {
	level, _ := config.ParseLevel(c.Level)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit and Go version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			c := commit
			if c == "" {
				if bi, ok := debug.ReadBuildInfo(); ok {
					for _, s := range bi.Settings {
						if s.Key == "vcs.revision" {
							c = s.Value
						}
					}
				}
			}
			if c == "" {
				c = "unknown"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sandfleet %s\ncommit %s\n%s %s/%s\n", version, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		},
	}
}
