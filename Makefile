# sandfleet — build and test entry points (see README).
GO ?= go
PKGS := ./...

.PHONY: build run test test-short vet bench fuzz

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
