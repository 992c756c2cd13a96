package queue

import (
	"testing"
	"time"
)

// TestCronNext pins when a cron pattern fires next (what status shows as
// NEXT), with the server's rules: seconds first, steps, names, and a
// restricted day of month OR a restricted weekday.
func TestCronNext(t *testing.T) {
	t.Parallel()
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		berlin = nil
	}
	from := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC) // a Tuesday
	for _, tc := range []struct {
		pattern string
		loc     *time.Location
		want    time.Time
	}{
		{"0 0 2 * * *", time.UTC, time.Date(2026, 12, 2, 2, 0, 0, 0, time.UTC)},
		{"*/15 * * * * *", time.UTC, time.Date(2026, 12, 1, 23, 0, 15, 0, time.UTC)},
		{"0 30 9 * * mon-fri", time.UTC, time.Date(2026, 12, 2, 9, 30, 0, 0, time.UTC)},
		{"0 0 0 1 jan *", time.UTC, time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"@hourly", time.UTC, time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)},
		{"@weekly", time.UTC, time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)},
		// Day 13 or a Friday, whichever comes first: Friday the 4th.
		{"0 0 0 13 * 5", time.UTC, time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)},
		{"0 0 0 29 2 *", time.UTC, time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC)},
		{"0 5-10/5 23 * * *", time.UTC, time.Date(2026, 12, 1, 23, 5, 0, 0, time.UTC)},
	} {
		c, err := parseCron(tc.pattern)
		if err != nil {
			t.Errorf("%s: %v", tc.pattern, err)
			continue
		}
		if got := c.next(from, tc.loc); !got.Equal(tc.want) {
			t.Errorf("%s: next after %v is %v, want %v", tc.pattern, from, got, tc.want)
		}
	}
	if berlin != nil {
		c, _ := parseCron("0 0 2 * * *")
		if got, want := c.next(from, berlin), time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC); !got.Equal(want) {
			t.Errorf("02:00 Berlin: %v, want %v", got, want)
		}
	}
	for _, bad := range []string{"0 0 2 * *", "0 0 25 * * *", "0 0 2 * * 7", "0 0 2 * foo *", "0 */0 * * * *", "0 10-5 * * * *"} {
		if _, err := parseCron(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestNextEvery: the first firing is the store time rounded to the second
// plus the interval, then every interval, as the server does.
func TestNextEvery(t *testing.T) {
	t.Parallel()
	stored := time.Date(2026, 12, 1, 23, 0, 0, 600e6, time.UTC) // rounds to :01
	for now, want := range map[time.Duration]time.Duration{
		0:                      3 * time.Second,
		2 * time.Second:        3 * time.Second,
		3 * time.Second:        3 * time.Second,
		3*time.Second + 1:      5 * time.Second,
		10*time.Second + 500e6: 11 * time.Second,
	} {
		base := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)
		if got := nextEvery(stored, 2*time.Second, base.Add(now)); !got.Equal(base.Add(want)) {
			t.Errorf("now +%v: next %v, want +%v", now, got.Sub(base), want)
		}
	}
}
