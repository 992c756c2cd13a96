package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Lease is an agent's ownership of one partition: the KV entry
// "p-<partition>" whose value is the owner, at Revision. It lasts LeaseTTL
// from the last write; RenewLease well within that.
type Lease struct {
	Partition int
	Owner     string
	Revision  uint64
}

// leaseKey is the key of partition p's lease: "p-<p>" for the default
// queue, "<queue>.p-<p>" for another.
func (c Config) leaseKey(p int) string {
	if c.IsDefaultQueue() {
		return "p-" + strconv.Itoa(p)
	}
	return c.Queue + ".p-" + strconv.Itoa(p)
}

// AcquireLease takes partition p for owner. If another owner holds it, the
// error is a *LeaseHeldError (errors.Is ErrLeaseHeld). If owner itself
// holds it (an agent restarted under the same name before its lease
// expired), the lease is taken over at a new revision.
func (t *Topology) AcquireLease(ctx context.Context, p int, owner string) (*Lease, error) {
	if p < 0 || p >= t.Config.Partitions {
		return nil, fmt.Errorf("queue: acquire lease: partition %d out of range [0,%d)", p, t.Config.Partitions)
	}
	if owner == "" {
		return nil, errors.New("queue: acquire lease: owner is required")
	}
	key := t.Config.leaseKey(p)
	// A lease can expire between a failed Create and the Get that names
	// its holder; a few rounds settle that race.
	for range 3 {
		rev, err := t.Leases.Create(ctx, key, []byte(owner))
		if err == nil {
			return &Lease{Partition: p, Owner: owner, Revision: rev}, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("queue: acquire lease %d: %w", p, err)
		}
		e, err := t.Leases.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("queue: acquire lease %d: %w", p, err)
		}
		if holder := string(e.Value()); holder != owner {
			return nil, &LeaseHeldError{Partition: p, Owner: holder}
		}
		rev, err = t.Leases.Update(ctx, key, []byte(owner), e.Revision())
		if err == nil {
			return &Lease{Partition: p, Owner: owner, Revision: rev}, nil
		}
		if !isRevisionMismatch(err) {
			return nil, fmt.Errorf("queue: acquire lease %d: %w", p, err)
		}
	}
	return nil, fmt.Errorf("queue: acquire lease %d: contended, try again: %w", p, ErrLeaseHeld)
}

// TakeLease takes partition p for owner without waiting for a dead
// holder's lease to expire. gone names the agents the caller knows to be
// gone, each with when it went (its registry entry expired or was removed
// then). A lease held by one of them is taken only if that holder last
// wrote it before it went, and only by a compare-and-set on that revision: a
// lease renewed after its holder was declared gone is alive and stays
// (*LeaseHeldError), and of several agents taking one lease at once exactly
// one wins. A free lease, or owner's own, is acquired as by AcquireLease; a
// lease held by anyone else is a *LeaseHeldError.
func (t *Topology) TakeLease(ctx context.Context, p int, owner string, gone map[string]time.Time) (*Lease, error) {
	if p < 0 || p >= t.Config.Partitions {
		return nil, fmt.Errorf("queue: take lease: partition %d out of range [0,%d)", p, t.Config.Partitions)
	}
	if owner == "" {
		return nil, errors.New("queue: take lease: owner is required")
	}
	key := t.Config.leaseKey(p)
	e, err := t.Leases.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return t.AcquireLease(ctx, p, owner)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: take lease %d: %w", p, err)
	}
	holder := string(e.Value())
	if holder == owner {
		return t.AcquireLease(ctx, p, owner)
	}
	wentAt, isGone := gone[holder]
	if !isGone || !e.Created().Before(wentAt) {
		return nil, &LeaseHeldError{Partition: p, Owner: holder}
	}
	rev, err := t.Leases.Update(ctx, key, []byte(owner), e.Revision())
	if err != nil {
		if isRevisionMismatch(err) {
			return nil, fmt.Errorf("queue: take lease %d from %s: contended, try again: %w", p, holder, ErrLeaseHeld)
		}
		return nil, fmt.Errorf("queue: take lease %d: %w", p, err)
	}
	return &Lease{Partition: p, Owner: owner, Revision: rev}, nil
}

// RenewLease extends l by another LeaseTTL and advances l.Revision. If the
// lease expired or someone else took it, the error is ErrLeaseLost and the
// caller must stop consuming the partition. Other errors (network) leave the
// lease's fate unknown: it is lost once LeaseTTL passes without a renewal.
func (t *Topology) RenewLease(ctx context.Context, l *Lease) error {
	rev, err := t.Leases.Update(ctx, t.Config.leaseKey(l.Partition), []byte(l.Owner), l.Revision)
	if err != nil {
		if isRevisionMismatch(err) || errors.Is(err, jetstream.ErrKeyNotFound) {
			return l.lost("")
		}
		return fmt.Errorf("queue: renew lease %d: %w", l.Partition, err)
	}
	l.Revision = rev
	return nil
}

// lost is the ErrLeaseLost error of l, with more said after its revision.
func (l *Lease) lost(more string) error {
	return fmt.Errorf("%w: partition %d (owner %s, revision %d%s)", ErrLeaseLost, l.Partition, l.Owner, l.Revision, more)
}

// ResumeLease follows a renewal of l whose outcome is unknown (an error
// other than ErrLeaseLost: say, sent as the connection dropped and applied
// by the server once it came back) and a later ErrLeaseLost: if the lease's
// latest revision is newer than l's and still names l's owner, that write
// was the unknown renewal (nobody wrote after it), and l moves to it.
// Otherwise the lease is lost (ErrLeaseLost). Call it only after such an
// unknown outcome: a lease this owner acquired anew under another Lease
// also names it.
func (t *Topology) ResumeLease(ctx context.Context, l *Lease) error {
	e, err := t.Leases.Get(ctx, t.Config.leaseKey(l.Partition))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return l.lost("")
	}
	if err != nil {
		return fmt.Errorf("queue: resume lease %d: %w", l.Partition, err)
	}
	if string(e.Value()) != l.Owner || e.Revision() <= l.Revision {
		return l.lost(fmt.Sprintf("; now %s at %d", e.Value(), e.Revision()))
	}
	l.Revision = e.Revision()
	return nil
}

// ReleaseLease gives partition l up at once, if l is still the latest
// revision; otherwise it returns ErrLeaseLost and changes nothing (the
// partition already belongs to someone else).
func (t *Topology) ReleaseLease(ctx context.Context, l *Lease) error {
	err := t.Leases.Delete(ctx, t.Config.leaseKey(l.Partition), jetstream.LastRevision(l.Revision))
	if err != nil {
		if isRevisionMismatch(err) || errors.Is(err, jetstream.ErrKeyNotFound) {
			return l.lost("")
		}
		return fmt.Errorf("queue: release lease %d: %w", l.Partition, err)
	}
	return nil
}

// LeaseOwners returns the live leases of the topology's queue by partition.
// Keys that are no lease of it (another queue's, or anything else a client
// of the bucket wrote: "junk", "p-999" in a queue of 64) are left out; they
// expire with the bucket's TTL like any lease, and must not stop the
// agents' rebalancing or `dispatcher status` meanwhile.
func (t *Topology) LeaseOwners(ctx context.Context) (map[int]Lease, error) {
	out := make(map[int]Lease)
	keyPrefix := strings.TrimSuffix(t.Config.leaseKey(0), "0")
	err := latestEntries(ctx, t.Leases, func(e jetstream.KeyValueEntry) error {
		n, ok := strings.CutPrefix(e.Key(), keyPrefix)
		if !ok {
			return nil
		}
		p, err := strconv.Atoi(n)
		if err != nil || p < 0 || p >= t.Config.Partitions || n != strconv.Itoa(p) {
			return nil
		}
		out[p] = Lease{Partition: p, Owner: string(e.Value()), Revision: e.Revision()}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// isRevisionMismatch reports a compare-and-set failure (wrong last
// sequence), which nats.go surfaces as ErrKeyExists.
func isRevisionMismatch(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
