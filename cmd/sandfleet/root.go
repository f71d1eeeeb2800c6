package main

import (
	"fmt"
	"log/slog"
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
	token      string
}

func rootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "sandfleet",
		Short:         "The machine layer of a malware-analysis sandbox",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.configFile, "config", "", "configuration file (default: sandfleet.yaml in the working directory if present, else built-in defaults)")
	pf.StringVar(&g.dataDir, "data-dir", "", "data directory (overrides data_dir)")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&g.server, "server", "http://127.0.0.1:8090", "daemon address for client commands")
	pf.StringVar(&g.token, "token", os.Getenv("SANDFLEET_TOKEN"), "API token for client commands (or SANDFLEET_TOKEN)")
	api.Version = version
	root.AddCommand(serveCmd(g), emulatorCmd(g), migrateCmd(g), versionCmd(),
		machinesCmd(g), poolsCmd(g), checkCmd(g))
	return root
}

// load reads the configuration: --config, else ./sandfleet.yaml if present,
// else the defaults; then --data-dir.
func (g *globals) load() (*config.Config, error) {
	path := g.configFile
	if path == "" {
		if _, err := os.Stat("sandfleet.yaml"); err == nil {
			path = "sandfleet.yaml"
		}
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if g.dataDir != "" {
		cfg.DataDir = g.dataDir
	}
	return cfg, nil
}

func (g *globals) logger() *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if g.logFormat == "json" {
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
