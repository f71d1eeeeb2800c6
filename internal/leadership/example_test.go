package leadership_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/sandfleet/sandfleet/internal/leadership"
	"github.com/sandfleet/sandfleet/internal/store/sqlite"
)

// One node alone on a database leads at once. When Run's context ends, it
// stops lead, resigns, and returns.
func Example() {
	dir, err := os.MkdirTemp("", "leadership")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "sandfleet.db"))
	if err != nil {
		panic(err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		panic(err)
	}

	e, err := leadership.New(st, leadership.Config{
		Name:   "reconciler/azure",
		Holder: "node-a",
		TTL:    15 * time.Second,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}
	ctx, shutdown := context.WithCancel(ctx)
	e.Run(ctx, func(ctx context.Context) {
		fmt.Println("this node reconciles")
		shutdown() // here at once; a daemon on SIGTERM
		<-ctx.Done()
		fmt.Println("stopped reconciling")
	}, func() {
		fmt.Println("another node reconciles; ready as a standby")
	})
	fmt.Println("lease resigned")
	// Output:
	// this node reconciles
	// stopped reconciling
	// lease resigned
}
