# sandfleet — build and test entry points (see README).
GO ?= go
PKGS := ./...

.PHONY: build run test test-short vet bench fuzz fuzz-short

build:
	$(GO) build -o bin/sandfleet ./cmd/sandfleet

run:
	$(GO) run ./cmd/sandfleet serve

# Every test, race detector on, against SQLite and the PostgreSQL at
# $$SANDFLEET_TEST_POSTGRES (default postgres://root@127.0.0.1:5432/postgres).
test: vet
	$(GO) test -race -count=1 -timeout 25m $(PKGS)

test-short:
	$(GO) test -count=1 -short $(PKGS)

vet:
	$(GO) vet $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./internal/store/... ./internal/fleet/...

# A short run of the result server's stream fuzzer. Each run creates and
# removes an analysis folder, so it is bound by file-system metadata: on
# tmpfs it does about seven times the runs it does on a disk.
FUZZ_TMPDIR ?= $(shell [ -d /dev/shm ] && echo /dev/shm || echo $${TMPDIR:-/tmp})
fuzz-short:
	TMPDIR=$(FUZZ_TMPDIR) $(GO) test -run '^$$' -fuzz FuzzStream -fuzztime 10s ./internal/resultserver/
