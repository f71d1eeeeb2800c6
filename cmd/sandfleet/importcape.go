package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sandfleet/sandfleet/internal/capeconf"
)

func importCapeCmd() *cobra.Command {
	var (
		dir        string
		machinery  []string
		secretsDir string
	)
	cmd := &cobra.Command{
		Use:   "import-cape --conf DIR",
		Short: "Print a sandfleet configuration made from a CAPE installation's conf directory",
		Long: `Read CAPE's cuckoo.conf, az.conf, kvm.conf and physical.conf from DIR (CAPE's conf
directory: default/<name>.conf.default, then <name>.conf, then <name>.conf.d/*.conf,
as CAPE layers them; each is optional) and print a sandfleet YAML configuration.
Each key's comment names the CAPE option it came from; every CAPE option with no
sandfleet key is named at the end with the reason. Secrets are never printed: the
YAML names a file for each, to be created by hand.

The machinery imported is cuckoo.conf's [cuckoo] machinery (every one present when
there is no cuckoo.conf, or it is multi) unless --machinery says otherwise.

Exit status: 0, or 1 when sandfleet would not accept the configuration as it is
(the YAML is printed all the same, and the problems on stderr), 2 on error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return fmt.Errorf("--conf DIR is required")
			}
			res, err := capeconf.Import(dir, capeconf.Options{Machinery: machinery, SecretsDir: secretsDir})
			if err != nil {
				return err
			}
			out, err := res.YAML()
			if err != nil {
				return err
			}
			if _, err := cmd.OutOrStdout().Write(out); err != nil {
				return err
			}
			// Also on stderr, for whoever redirected the YAML to a file.
			for _, w := range res.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "import-cape: warning:", w)
			}
			if err := res.Validate(); err != nil {
				return &exitError{code: 1, err: err}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "conf", "", "CAPE's conf directory (e.g. /opt/CAPEv2/conf)")
	cmd.Flags().StringSliceVar(&machinery, "machinery", nil, "machineries to import: az, kvm, physical (default: cuckoo.conf's)")
	cmd.Flags().StringVar(&secretsDir, "secrets-dir", "/etc/sandfleet", "where the YAML says to create the files holding secrets")
	return cmd
}
