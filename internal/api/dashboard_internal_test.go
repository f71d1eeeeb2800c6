package api

import "testing"

func TestNaturalCompare(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"win10x64_2", "win10x64_10", -1},
		{"win10x64_10", "win10x64_2", 1},
		{"win10x64_02", "win10x64_2", -1},
		{"lab1", "win10x64_0", -1},
		{"a", "ab", -1},
		{"x9", "x9a", -1},
		{"", "", 0},
	} {
		if got := naturalCompare(c.a, c.b); got != c.want {
			t.Errorf("naturalCompare(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}
