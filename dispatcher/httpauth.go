package dispatcher

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Right is what an HTTP API token may do. Rights combine as a bit set.
type Right uint8

const (
	// RightSubmit allows POST /v1/jobs and POST /v1/jobs/batch.
	RightSubmit Right = 1 << iota
	// RightRead allows results, progress, status, agents and queues.
	RightRead
	// RightAdmin allows the dead-letter endpoints: list, get, replay,
	// purge.
	RightAdmin

	// RightAll is every right: the token given by PROCFLEET_HTTP_TOKEN.
	RightAll = RightSubmit | RightRead | RightAdmin
)

var rightNames = []struct {
	r    Right
	name string
}{{RightSubmit, "submit"}, {RightRead, "read"}, {RightAdmin, "admin"}}

func (r Right) String() string {
	var names []string
	for _, n := range rightNames {
		if r&n.r != 0 {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// ErrBadToken is wrapped by every error about an HTTP API token or token
// file; the message names the file and line.
var ErrBadToken = errors.New("dispatcher: invalid HTTP API token")

// MinTokenLength is the shortest HTTP API token accepted: 16 characters
// leave no room for guessing (`openssl rand -hex 32` gives 64).
const MinTokenLength = 16

// HTTPToken is one bearer token of the HTTP API and what it may do.
type HTTPToken struct {
	Token  string
	Rights Right
}

// ValidateToken checks that tok can be sent as a bearer token (RFC 6750
// b64token characters: letters, digits and -._~+/ with trailing =) and is
// at least MinTokenLength long.
func ValidateToken(tok string) error {
	// '=' padding adds no secret, so it does not count.
	body := strings.TrimRight(tok, "=")
	if body == "" {
		return fmt.Errorf("%w: a token must not be only '='", ErrBadToken)
	}
	if len(body) < MinTokenLength {
		return fmt.Errorf("%w: a token has %d characters before any '=' padding, want at least %d (e.g. openssl rand -hex 32)", ErrBadToken, len(body), MinTokenLength)
	}
	for _, c := range body {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', strings.ContainsRune("-._~+/", c):
		default:
			return fmt.Errorf("%w: a token may hold letters, digits and -._~+/ (then '=' padding), found %q", ErrBadToken, c)
		}
	}
	return nil
}

// ParseHTTPTokens reads a token file: one token per line, then its rights,
// comma-separated (submit, read, admin):
//
//	# who               token                              rights
//	3f9c...e1 submit            # a producer
//	a71b...07 read              # a dashboard
//	0c44...9d submit,read,admin # operators
//
// Blank lines and text after '#' are ignored. A token listed twice, an
// unknown right or a line without rights is an error naming the line.
func ParseHTTPTokens(r io.Reader, name string) ([]HTTPToken, error) {
	var out []HTTPToken
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return nil, fmt.Errorf("%w: %s:%d: want `<token> <right>[,<right>...]`, found %d fields", ErrBadToken, name, line, len(fields))
		}
		if err := ValidateToken(fields[0]); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		if prev, dup := seen[fields[0]]; dup {
			return nil, fmt.Errorf("%w: %s:%d: the token of line %d again", ErrBadToken, name, line, prev)
		}
		seen[fields[0]] = line
		var rights Right
		for _, rn := range strings.Split(fields[1], ",") {
			r, ok := parseRight(rn)
			if !ok {
				return nil, fmt.Errorf("%w: %s:%d: unknown right %q (submit, read or admin)", ErrBadToken, name, line, rn)
			}
			rights |= r
		}
		out = append(out, HTTPToken{Token: fields[0], Rights: rights})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadToken, name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s holds no token", ErrBadToken, name)
	}
	return out, nil
}

func parseRight(s string) (Right, bool) {
	for _, n := range rightNames {
		if s == n.name {
			return n.r, true
		}
	}
	return 0, false
}

// ReadHTTPTokenFile reads a token file (see ParseHTTPTokens).
func ReadHTTPTokenFile(path string) ([]HTTPToken, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadToken, err)
	}
	defer f.Close()
	return ParseHTTPTokens(f, path)
}

// tokenSet holds SHA-256 digests of the tokens, never the tokens, and
// checks a presented token against every one in constant time: neither the
// position of the first differing byte nor the token's length, nor which
// entry matched, shows in the time taken.
type tokenSet struct {
	digests [][sha256.Size]byte
	rights  []Right
}

func newTokenSet(tokens []HTTPToken) (*tokenSet, error) {
	ts := &tokenSet{}
	for _, t := range tokens {
		if err := ValidateToken(t.Token); err != nil {
			return nil, err
		}
		if t.Rights&RightAll == 0 {
			return nil, fmt.Errorf("%w: a token without rights", ErrBadToken)
		}
		ts.digests = append(ts.digests, sha256.Sum256([]byte(t.Token)))
		ts.rights = append(ts.rights, t.Rights&RightAll)
	}
	return ts, nil
}

// lookup returns the rights of tok, and whether it is known at all.
func (ts *tokenSet) lookup(tok string) (Right, bool) {
	d := sha256.Sum256([]byte(tok))
	var rights Right
	found := 0
	for i := range ts.digests {
		eq := subtle.ConstantTimeCompare(d[:], ts.digests[i][:])
		found |= eq
		// Branch-free: add the entry's rights only when it matched.
		rights |= ts.rights[i] & Right(-eq)
	}
	return rights, found == 1
}
