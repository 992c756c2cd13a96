package pool

// Intrusive FIFO lists: waiting and idling cost no allocation, and any
// element can leave from the middle (a canceled ticket, a session that gets
// busy again) in O(1).

// ticketQueue is a FIFO of tickets linked through Ticket.prev/next. A ticket
// is in at most one queue at a time.
type ticketQueue struct {
	head, tail *Ticket
	n          int
}

func (q *ticketQueue) empty() bool { return q.head == nil }

func (q *ticketQueue) push(t *Ticket) { q.insertAfter(q.tail, t) }

// insertAfter links t after prev, or at the front when prev is nil.
func (q *ticketQueue) insertAfter(prev, t *Ticket) {
	t.prev = prev
	if prev == nil {
		t.next = q.head
		q.head = t
	} else {
		t.next = prev.next
		prev.next = t
	}
	if t.next == nil {
		q.tail = t
	} else {
		t.next.prev = t
	}
	q.n++
}

func (q *ticketQueue) remove(t *Ticket) {
	if t.prev == nil {
		q.head = t.next
	} else {
		t.prev.next = t.next
	}
	if t.next == nil {
		q.tail = t.prev
	} else {
		t.next.prev = t.prev
	}
	t.prev, t.next = nil, nil
	q.n--
}

// sessLink is one set of list links inside a session.
type sessLink struct {
	prev, next *session
	in         bool
}

// sessList is a FIFO of sessions through the links that link selects, so that
// one session can sit in two different kinds of list at once.
type sessList struct {
	head, tail *session
	link       func(*session) *sessLink
}

func pendingLink(s *session) *sessLink { return &s.pend }
func idleLink(s *session) *sessLink    { return &s.idle }

func (l *sessList) push(s *session) {
	k := l.link(s)
	if k.in {
		return
	}
	k.in = true
	k.prev, k.next = l.tail, nil
	if l.tail == nil {
		l.head = s
	} else {
		l.link(l.tail).next = s
	}
	l.tail = s
}

func (l *sessList) remove(s *session) {
	k := l.link(s)
	if !k.in {
		return
	}
	if k.prev == nil {
		l.head = k.next
	} else {
		l.link(k.prev).next = k.next
	}
	if k.next == nil {
		l.tail = k.prev
	} else {
		l.link(k.next).prev = k.prev
	}
	*k = sessLink{}
}
