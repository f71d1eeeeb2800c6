package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/daemon"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

func serveCmd(g *globals) *cobra.Command {
	var listen, database string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon: API, scheduler, reconcilers, result server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("listen") {
				cfg.Listen = listen
			}
			if cmd.Flags().Changed("database") {
				cfg.Database = database
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if cmd.Flags().Changed("log-format") {
				cfg.Log.Format = g.logFormat
			}
			log := newLogger(cfg.Log)
			d, err := daemon.New(ctx, cfg, log)
			if err != nil {
				return err
			}
			defer d.Close()
			// SIGUSR1 pauses dispatch, SIGUSR2 resumes it, as in CAPE.
			usr := make(chan os.Signal, 2)
			signal.Notify(usr, syscall.SIGUSR1, syscall.SIGUSR2)
			defer signal.Stop(usr)
			go func() {
				for sig := range usr {
					if sig == syscall.SIGUSR1 {
						d.Pause()
					} else {
						d.Resume()
					}
				}
			}()
			return d.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "API address (overrides listen)")
	cmd.Flags().StringVar(&database, "database", "", "database URL: sqlite:///path.db or postgres://… (overrides database)")
	return cmd
}

func migrateCmd(g *globals) *cobra.Command {
	var database string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply database migrations and exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("database") {
				cfg.Database = database
			}
			if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			st, err := open.Open(ctx, cfg.DatabaseURL())
			if err != nil {
				return err
			}
			defer st.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "migrations applied (%s)\n", st.Dialect())
			return nil
		},
	}
	cmd.Flags().StringVar(&database, "database", "", "database URL (overrides database)")
	return cmd
}

func emulatorCmd(g *globals) *cobra.Command {
	var (
		listen, state, analysis string
		faults, ipBlock         string
		location, subnetPrefix  string
		lroDelay                time.Duration
		pageSize, agentPort     int
		galleryImages           []string
	)
	cmd := &cobra.Command{
		Use:   "emulator",
		Short: "Run the Azure Resource Manager emulator alone",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			opts := azemu.Options{
				Listen: listen, StateDir: state, LRODelay: lroDelay, PageSize: pageSize,
				AgentPort: agentPort, AnalysisDuration: analysis, IPBlock: ipBlock, Location: location,
				SubnetPrefix: subnetPrefix, Logger: g.logger(),
			}
			if cmd.Flags().Changed("gallery-images") {
				opts.GalleryImages = galleryImages
			}
			if faults != "" {
				f, err := azemu.ParseFaults([]byte(faults))
				if err != nil {
					return fmt.Errorf("--faults: %w", err)
				}
				opts.Faults = f
			}
			emu, err := azemu.New(opts)
			if err != nil {
				return err
			}
			if err := emu.Start(); err != nil {
				return err
			}
			defer emu.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "emulator listening on %s (CA: %s)\n", emu.URL(), emu.CAFile())
			<-ctx.Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:8443", "HTTPS address")
	f.StringVar(&state, "state", "./emulator-state", "state directory (kept across restarts; ca.pem is written here)")
	f.StringVar(&analysis, "analysis-duration", "2s", "how long an emulated analyzer runs: 2s, or a range 1s..3s")
	f.DurationVar(&lroDelay, "lro-delay", 0, "how long each long-running operation takes")
	f.IntVar(&pageSize, "page-size", 50, "items per page of list results")
	f.IntVar(&agentPort, "agent-port", 8000, "port of each emulated VM's guest agent")
	f.StringVar(&faults, "faults", "", `faults in force at start, as POST /_emulator/faults takes them: '{"throttle": {"match": "virtualMachines", "retry_after_s": 120}}'`)
	f.StringVar(&ipBlock, "ip-block", "", "loopback block for VM IPs, e.g. 127.42.0.0/16 (default: random, kept in the state)")
	f.StringVar(&location, "location", azemu.DefaultLocation, "the region the gallery's images are in")
	f.StringVar(&subnetPrefix, "subnet-prefix", azemu.DefaultSubnetPrefix, "the address prefix every subnet reports: its size bounds how many VMs fit (a /22 holds 1,019)")
	f.StringSliceVar(&galleryImages, "gallery-images", nil, "the gallery images that exist, e.g. win10,ubuntu-22.04; any other is not found (default: any image exists)")
	return cmd
}
