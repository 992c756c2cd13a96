package chaos

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

func (rep *Report) write(w io.Writer) {
	fmt.Fprintf(w, "\nprocfleet chaos report (seed %d)\n", rep.Seed)
	fmt.Fprintf(w, "  load:              %s on %d agents x %d workers\n", rep.Duration, rep.Agents, rep.Workers)
	fmt.Fprintf(w, "  faults:            %d worker kills, %d agent kills, %d agent restarts\n", rep.WorkerKills, rep.AgentKills, rep.AgentRestarts)
	failed := 0
	var kinds []string
	for k, n := range rep.Failed {
		failed += n
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(kinds)
	fmt.Fprintf(w, "  jobs:              %d accepted, %d ok, %d failed%s (%d never accepted)\n",
		rep.Accepted, rep.OK, failed, parenList(kinds), rep.Rejected)
	fmt.Fprintf(w, "  lost:              %d%s\n", rep.Lost, parenList(rep.LostIDs))
	if rep.ExecCounted {
		fmt.Fprintf(w, "  repeated:          %d executed more than once: %d after a kill cut the earlier run short, %d otherwise  [from the workers' execution log]\n",
			rep.Repeated, rep.RepeatedAfterKill, rep.Repeated-rep.RepeatedAfterKill)
	} else {
		fmt.Fprintf(w, "  repeated:          %d delivered more than once  [from result attempts: without an execution log, runs a kill cut short and deliveries that never reached a worker look alike]\n",
			rep.Repeated)
	}
	var causes []string
	for c, n := range rep.BreaksByCause {
		causes = append(causes, fmt.Sprintf("%s %d", c, n))
	}
	slices.Sort(causes)
	causes = append(causes, fmt.Sprintf("untraced %d", rep.Untraced))
	fmt.Fprintf(w, "  affinity breaks:   %d (%s); %d rebinds without new_session\n", rep.AffinityBreaks, strings.Join(causes, ", "), rep.RebindWithoutNewSession)
	if rep.Reordered >= 0 {
		fmt.Fprintf(w, "  reordered:         %d session jobs ran before an earlier job of their session that a fault sent back for a retry\n", rep.Reordered)
	}
	if len(rep.Failovers) == 0 {
		fmt.Fprintf(w, "  failover:          no agent was killed\n")
	} else {
		fmt.Fprintf(w, "  failover:          longest %s over %d agent kills (kill until all its partitions leased again)\n",
			rep.LongestFailover.Round(time.Millisecond), len(rep.Failovers))
	}
}

func parenList(items []string) string {
	if len(items) == 0 {
		return ""
	}
	return " (" + strings.Join(items, ", ") + ")"
}
