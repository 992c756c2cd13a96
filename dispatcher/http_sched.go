package dispatcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// AddScheduleRequest is the body of POST /v1/schedules: a queue.Schedule,
// plus replace to overwrite a schedule of the same name.
type AddScheduleRequest struct {
	queue.Schedule
	Replace bool `json:"replace,omitempty"`
}

// SchedulesReply is the answer of GET /v1/schedules.
type SchedulesReply = ScheduleStatus

func (a *httpAPI) scheduleAdd(w http.ResponseWriter, r *http.Request) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
	limit := a.c.nc.MaxPayload() + submitSlack
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		a.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is over %d bytes", limit))
		return
	}
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, "reading the request body: "+err.Error())
		return
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req AddScheduleRequest
	if err := dec.Decode(&req); err != nil {
		a.writeError(w, r, badRequest("body is not a schedule {\"name\": ..., \"every\" or \"cron\": ..., \"session\": ..., \"job\": {...}}: %v", err))
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		a.writeError(w, r, badRequest("body holds more than one JSON value"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	if err := a.c.AddSchedule(ctx, &req.Schedule, req.Replace); err != nil {
		if errors.Is(err, queue.ErrScheduleExists) {
			a.fail(w, r, http.StatusConflict, err.Error())
			return
		}
		a.writeError(w, r, err)
		return
	}
	infos, err := a.c.Schedules(ctx)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	for _, info := range infos {
		if info.Name == req.Name {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			_ = json.NewEncoder(w).Encode(info)
			return
		}
	}
	a.writeError(w, r, fmt.Errorf("schedule %s stored but not listed", req.Name))
}

func (a *httpAPI) scheduleList(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	var reply SchedulesReply
	var err error
	if reply.Schedules, err = a.c.Schedules(ctx); err != nil {
		a.writeError(w, r, err)
		return
	}
	if reply.Delayed, reply.NDelayed, err = a.c.Delayed(ctx, maxDLQList); err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, reply)
}

func (a *httpAPI) scheduleRemove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !queue.ValidToken(name) {
		a.writeError(w, r, badRequest("schedule name %q must be 1-128 characters of [A-Za-z0-9_-]", truncateID(name)))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	err := a.c.RemoveSchedule(ctx, name)
	if errors.Is(err, queue.ErrScheduleNotFound) {
		a.fail(w, r, http.StatusNotFound, "no schedule named "+name)
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
