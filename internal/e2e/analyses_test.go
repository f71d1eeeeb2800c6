package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

// submit posts one file to tasks/create/file/ and returns the task id.
func (d *daemon) submit(t testing.TB, name string, body []byte) int64 {
	t.Helper()
	return d.submitForm(t, name, body, map[string]string{"timeout": "30"})
}

// submitForm posts one file with form fields and returns the task id.
func (d *daemon) submitForm(t testing.TB, name string, body []byte, fields map[string]string) int64 {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	w, _ := mw.CreateFormFile("file", name)
	w.Write(body)
	for k, v := range fields {
		mw.WriteField(k, v)
	}
	mw.Close()
	resp, err := http.Post(d.api+"/apiv2/tasks/create/file/", mw.FormDataContentType(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Data struct {
			TaskIDs []int64 `json:"task_ids"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 || len(out.Data.TaskIDs) != 1 {
		t.Fatalf("submit %s: %s %v %+v", name, resp.Status, err, out)
	}
	return out.Data.TaskIDs[0]
}

// Sixty tasks on five emulated VMs with 1–3 s analyses, the daemon killed
// with SIGKILL three times along the way: every task ends completed or failed
// with a reason, none is lost; no machine ever serves two tasks at once; and
// every machine is reimaged between two uses.
func TestSixtyTasksThroughThreeKills(t *testing.T) {
	databases(t, func(t *testing.T, database func(string) string) {
		emu := startEmulator(t, t.TempDir(), "--analysis-duration", "1s..3s")
		dir := t.TempDir()
		dbURL := database(dir)
		conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Database: dbURL, Emulator: emu, Size: 5, LeaseTTL: "3s"})
		d := startDaemon(t, conf, listen)
		d.waitReady(t, 5, 60*time.Second)

		const n = 60
		var ids []int64
		for i := range n {
			ids = append(ids, d.submit(t, fmt.Sprintf("sample-%02d.exe", i), []byte(fmt.Sprintf("MZ sample %d", i))))
		}
		ctx := context.Background()
		st, err := open.Open(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		ended := func() int { return countEnded(t, st) }
		for _, at := range []int{8, 25, 42} {
			poll.Until(t, 3*time.Minute, fmt.Sprintf("%d tasks ended", at), func() bool { return ended() >= at })
			d.kill()
			d = startDaemon(t, conf, listen)
		}
		poll.Until(t, 5*time.Minute, "every task ended", func() bool { return ended() == n })

		ts, err := st.ListTasks(ctx, store.TaskFilter{})
		if err != nil {
			t.Fatal(err)
		}
		completed, retried := 0, 0
		for _, task := range ts {
			switch {
			case task.Status == store.TaskCompleted:
				completed++
			case task.Status == store.TaskFailedAnalysis && task.Error != "":
			default:
				t.Errorf("task %d ended %s (%q): want completed, or failed with a reason", task.ID, task.Status, task.Error)
			}
			if task.Attempt > 1 {
				retried++
			}
		}
		t.Logf("%d tasks: %d completed, %d needed more than one attempt", len(ts), completed, retried)
		if len(ts) != n {
			t.Fatalf("%d tasks in the database, want %d", len(ts), n)
		}
		checkOneTaskPerMachine(t, st, ts)
		checkReimagedBetweenUses(t, st, emu)
	})
}

// countEnded counts the tasks that ended, completed or failed.
func countEnded(t testing.TB, st store.Store) int {
	t.Helper()
	ts, err := st.ListTasks(context.Background(), store.TaskFilter{Statuses: []store.TaskStatus{store.TaskCompleted, store.TaskFailedAnalysis}})
	if err != nil {
		t.Fatal(err)
	}
	return len(ts)
}

// checkOneTaskPerMachine rebuilds, from the task events, when each attempt
// held its machine, and finds no two overlapping on one machine.
func checkOneTaskPerMachine(t *testing.T, st store.Store, ts []store.Task) {
	t.Helper()
	type span struct {
		task       int64
		start, end time.Time
	}
	byMachine := map[string][]span{}
	for _, task := range ts {
		evs, err := st.TaskEvents(context.Background(), task.ID)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range evs {
			if e.To != store.TaskRunning {
				continue
			}
			end := time.Now()
			if i+1 < len(evs) {
				end = evs[i+1].At
			}
			byMachine[e.Machine] = append(byMachine[e.Machine], span{task.ID, e.At, end})
		}
	}
	for label, spans := range byMachine {
		sort.Slice(spans, func(i, j int) bool { return spans[i].start.Before(spans[j].start) })
		for i := 1; i < len(spans); i++ {
			if spans[i].start.Before(spans[i-1].end) {
				t.Errorf("%s: task %d started at %s while task %d held it until %s", label,
					spans[i].task, spans[i].start.Format(time.StampMicro), spans[i-1].task, spans[i-1].end.Format(time.StampMicro))
			}
		}
	}
}

// checkReimagedBetweenUses finds, for each machine, a reimage between every
// two leases in its events, and the cloud's accepted reimages to match.
func checkReimagedBetweenUses(t *testing.T, st store.Store, emu *emulator) {
	t.Helper()
	ms, err := st.ListMachines(context.Background(), store.MachineFilter{})
	if err != nil {
		t.Fatal(err)
	}
	accepted := azemu.AcceptedPerInstance(emu.requests(t), "POST", "/reimage")
	for _, m := range ms {
		evs, err := st.MachineEvents(context.Background(), m.Label)
		if err != nil {
			t.Fatal(err)
		}
		leases, reimagedSince := 0, true
		for _, e := range evs {
			switch e.To {
			case store.Leased:
				if !reimagedSince {
					t.Errorf("%s leased again (%s) with no reimage since its last use", m.Label, e.Cause)
				}
				leases++
				reimagedSince = false
			case store.Provisioning:
				// Only a reimage that succeeded leads here from reimaging.
				reimagedSince = reimagedSince || e.From == store.Reimaging
			}
		}
		if leases > 1 && accepted[m.InstanceID] < leases-1 {
			t.Errorf("%s: %d uses, %d reimages accepted by the cloud", m.Label, leases, accepted[m.InstanceID])
		}
	}
}
