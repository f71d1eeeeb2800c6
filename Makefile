# sandfleet — build and test entry points (see README).
GO ?= go
PKGS := ./...

.PHONY: build run test test-short vet bench fuzz fuzz-short

build:
	$(GO) build -o bin/sandfleet ./cmd/sandfleet

run:
	$(GO) run ./cmd/sandfleet serve

# Every test, race detector on, against SQLite and the PostgreSQL at
# $$SANDFLEET_TEST_POSTGRES (default postgres://root@127.0.0.1:5432/postgres),
# then a short run of each parser's fuzzer.
test: vet
	$(GO) test -race -count=1 -timeout 25m $(PKGS)
	$(MAKE) fuzz-short

test-short:
	$(GO) test -count=1 -short $(PKGS)

vet:
	$(GO) vet $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./internal/store/... ./internal/fleet/...

# A short run of each fuzzer: the result server's stream, the task forms,
# any request to the API,
# the configuration, the emulator's faults. The stream fuzzer creates and
# removes an analysis folder a run, so it is bound by file-system metadata:
# on tmpfs it does about seven times the runs it does on a disk.
FUZZ_TMPDIR ?= $(shell [ -d /dev/shm ] && echo /dev/shm || echo $${TMPDIR:-/tmp})
FUZZTIME ?= 10s
fuzz-short:
	TMPDIR=$(FUZZ_TMPDIR) $(GO) test -run '^$$' -fuzz FuzzStream -fuzztime $(FUZZTIME) ./internal/resultserver/
	$(GO) test -run '^$$' -fuzz FuzzTaskForm -fuzztime $(FUZZTIME) ./internal/api/
	$(GO) test -run '^$$' -fuzz FuzzRequest -fuzztime $(FUZZTIME) ./internal/api/
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME) ./internal/config/
	$(GO) test -run '^$$' -fuzz FuzzParseFaults -fuzztime $(FUZZTIME) ./internal/azemu/
