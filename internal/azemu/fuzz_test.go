package azemu

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzParseFaults: no document panics the parser; one it refuses gets an
// error beginning "faults:"; one it accepts parses again, once marshalled,
// to the same faults.
func FuzzParseFaults(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"clear": true}`, `{"lro_delay_ms": 2000}`, `{"error_rate": 0.1}`,
		`{"throttle": {"match": "virtualMachines", "retry_after_s": 120, "count": 5}}`,
		`{"throttle": null, "fail_provisioning": 2, "operation_preempted": true}`,
		`{"quota": {"cores": 10}}`, `{"latency_ms": -1}`, `[1]`, `{"bogus": 1}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		got, err := ParseFaults(doc)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "faults:") {
				t.Fatalf("error %q does not say it is about faults", err)
			}
			return
		}
		again, err := json.Marshal(got)
		if err != nil {
			t.Fatalf("accepted faults do not marshal: %v", err)
		}
		back, err := ParseFaults(again)
		if err != nil {
			t.Fatalf("accepted faults %s do not parse again: %v", again, err)
		}
		if b1, _ := json.Marshal(back); string(b1) != string(again) {
			t.Fatalf("round trip changed faults: %s → %s", again, b1)
		}
	})
}
