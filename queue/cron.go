package queue

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// A cron pattern as the NATS server reads it: six fields, seconds first,
// each a list of "*", "n", "a-b", with an optional "/step"; month and weekday
// also take names (jan, mon). It is parsed here to reject a bad pattern with
// a clear message before it is published, and to tell when a schedule fires
// next; the server's own scheduler decides when it really fires.
type cronSpec struct {
	sec, min, hour, dom, month, dow uint64
	domStar, dowStar                bool
}

type cronField struct {
	name     string
	min, max uint
	names    map[string]uint
}

var cronFields = [6]cronField{
	{name: "second", min: 0, max: 59},
	{name: "minute", min: 0, max: 59},
	{name: "hour", min: 0, max: 23},
	{name: "day of month", min: 1, max: 31},
	{name: "month", min: 1, max: 12, names: map[string]uint{
		"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
		"jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12}},
	{name: "day of week", min: 0, max: 6, names: map[string]uint{
		"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}},
}

func expandCronShorthand(p string) string {
	switch p {
	case "@yearly", "@annually":
		return "0 0 0 1 1 *"
	case "@monthly":
		return "0 0 0 1 * *"
	case "@weekly":
		return "0 0 0 * * 0"
	case "@daily", "@midnight":
		return "0 0 0 * * *"
	case "@hourly":
		return "0 0 * * * *"
	}
	return p
}

func parseCron(pattern string) (*cronSpec, error) {
	fields := strings.Fields(expandCronShorthand(pattern))
	if len(fields) != 6 {
		return nil, fmt.Errorf("want 6 fields, got %d", len(fields))
	}
	var bits [6]uint64
	var star [6]bool
	for i, f := range fields {
		b, s, err := parseCronField(f, cronFields[i])
		if err != nil {
			return nil, err
		}
		bits[i], star[i] = b, s
	}
	return &cronSpec{sec: bits[0], min: bits[1], hour: bits[2], dom: bits[3], month: bits[4], dow: bits[5],
		domStar: star[3], dowStar: star[5]}, nil
}

func parseCronField(field string, r cronField) (uint64, bool, error) {
	var bits uint64
	star := false
	for _, expr := range strings.Split(field, ",") {
		rangePart, stepPart, hasStep := strings.Cut(expr, "/")
		var lo, hi uint
		switch {
		case rangePart == "*" || rangePart == "?":
			lo, hi, star = r.min, r.max, !hasStep
		default:
			a, b, isRange := strings.Cut(rangePart, "-")
			var err error
			if lo, err = cronValue(a, r); err != nil {
				return 0, false, err
			}
			hi = lo
			if isRange {
				if hi, err = cronValue(b, r); err != nil {
					return 0, false, err
				}
			} else if hasStep {
				hi = r.max
			}
		}
		step := uint(1)
		if hasStep {
			n, err := strconv.ParseUint(stepPart, 10, 8)
			if err != nil || n == 0 {
				return 0, false, fmt.Errorf("%s: bad step %q", r.name, stepPart)
			}
			step = uint(n)
		}
		if lo > hi {
			return 0, false, fmt.Errorf("%s: range %q runs backwards", r.name, rangePart)
		}
		for v := lo; v <= hi; v += step {
			bits |= 1 << v
		}
	}
	return bits, star, nil
}

func cronValue(s string, r cronField) (uint, error) {
	if v, ok := r.names[strings.ToLower(s)]; ok {
		return v, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a number", r.name, s)
	}
	if uint(n) < r.min || uint(n) > r.max {
		return 0, fmt.Errorf("%s: %d is outside %d-%d", r.name, n, r.min, r.max)
	}
	return uint(n), nil
}

// next returns the first time after t (whole seconds) the pattern matches
// in loc, or the zero time if none within five years.
func (c *cronSpec) next(t time.Time, loc *time.Location) time.Time {
	t = t.In(loc).Truncate(time.Second).Add(time.Second)
	limit := t.AddDate(5, 0, 0)
	for t.Before(limit) {
		if c.month&(1<<uint(t.Month())) == 0 {
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, loc)
			continue
		}
		if !c.dayMatches(t) {
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
			continue
		}
		if c.hour&(1<<uint(t.Hour())) == 0 {
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, loc)
			continue
		}
		if c.min&(1<<uint(t.Minute())) == 0 {
			t = t.Truncate(time.Minute).Add(time.Minute)
			continue
		}
		if c.sec&(1<<uint(t.Second())) == 0 {
			t = t.Add(time.Second)
			continue
		}
		return t
	}
	return time.Time{}
}

// dayMatches: when both day fields are restricted, either may match (the
// classic cron rule, which the server follows too).
func (c *cronSpec) dayMatches(t time.Time) bool {
	domOK := c.dom&(1<<uint(t.Day())) != 0
	dowOK := c.dow&(1<<uint(t.Weekday())) != 0
	if c.domStar || c.dowStar {
		return domOK && dowOK
	}
	return domOK || dowOK
}
