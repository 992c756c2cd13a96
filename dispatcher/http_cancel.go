package dispatcher

import (
	"context"
	"net/http"

	"github.com/procfleet/procfleet/queue"
)

// cancelJob serves DELETE /v1/jobs/{id}: it records a cancel of the job
// (right: submit, as whoever may put a job in may call it back). 202 when
// the cancel is recorded for a job without a result yet (it ends
// "canceled"), 200 with "finished": true when the job had already ended
// (it keeps its result).
func (a *httpAPI) cancelJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !queue.ValidToken(id) {
		a.writeError(w, r, badRequest("job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncateID(id)))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	reply, err := a.c.Cancel(ctx, id)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if !reply.Finished {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
	}
	writeJSON(w, reply)
}
