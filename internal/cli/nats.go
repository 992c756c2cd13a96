package cli

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// Connect dials NATS for a long-running program: it reconnects forever once
// connected, but a first connection that fails is an error naming the URL,
// and so is a server that refuses the connection its reply inboxes (see
// CheckInbox).
func Connect(url, name string, log *zap.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", zap.String("url", c.ConnectedUrlRedacted()))
		}),
		// Asynchronous errors, such as a permission violation on a
		// subscription, would otherwise go unseen.
		nats.ErrorHandler(func(c *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Error("nats", zap.String("subject", sub.Subject), zap.Error(err))
				return
			}
			log.Error("nats", zap.Error(err))
		}),
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("cannot reach NATS at %s: %w", url, err)
	}
	if err := CheckInbox(nc, 5*time.Second); err != nil {
		// The refused inbox's permission error reaches the error handler
		// on the connection's callback goroutine: let it (and the rest of
		// the queue) run before returning, so that nothing logs for a
		// connection the caller never got.
		closed := make(chan struct{})
		nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
		nc.Close()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
		}
		return nil, err
	}
	return nc, nil
}
