package cli

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// EnvName is the environment variable behind a flag: PROCFLEET_ + the flag
// name in upper case with dashes as underscores.
func EnvName(flagName string) string {
	return "PROCFLEET_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ApplyEnv sets every flag of fs that was not given on the command line from
// its PROCFLEET_* variable, if that is set. It names the variable in errors.
func ApplyEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", EnvName(f.Name), v, e)
			}
		}
	})
	return err
}

// Parse parses args into fs, then applies the environment. Flags may come
// before or after positional arguments (`dlq replay 7 --user x` and
// `dlq replay --user x 7` mean the same); after a lone "--" every argument
// is positional. Positional arguments are left in fs.Args(). Parse refuses
// them: use ParseArgs for a command that takes any.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := ParseArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %s takes flags only (they start with --)", fs.Arg(0), fs.Name())
	}
	return nil
}

// ParseArgs is Parse for a command that takes positional arguments: they
// are left in fs.Args(), in order, wherever they stood among the flags.
func ParseArgs(fs *flag.FlagSet, args []string) error {
	var positional []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// The flag package stops at the first non-flag argument, or
		// after a "--", which ends the flags for good.
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			positional = append(positional, rest...)
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	// Leave the positional arguments in fs.Args(); "--" keeps a
	// positional that starts with "-" from being read as a flag.
	if err := fs.Parse(append([]string{"--"}, positional...)); err != nil {
		return err
	}
	return ApplyEnv(fs)
}

// DefaultNATSURL is NATS_URL, else the standard local server.
func DefaultNATSURL() string {
	if u := os.Getenv("NATS_URL"); u != "" {
		return u
	}
	return "nats://127.0.0.1:4222"
}

// Bytes is a flag value for sizes such as 512MiB, 2GB or 1048576.
type Bytes int64

func (b *Bytes) String() string { return strconv.FormatInt(int64(*b), 10) }

// Set parses a size with an optional unit (KB, MB, GB, KiB, MiB, GiB).
func (b *Bytes) Set(s string) error {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("invalid size %q", s)
	}
	*b = Bytes(n * float64(mult))
	return nil
}

// Argv is a flag value holding a command line split like a shell would for
// plain words and quotes (no expansion, no pipes): the worker command runs
// as argv, never through a shell.
type Argv []string

func (a *Argv) String() string { return strings.Join(*a, " ") }

// Set splits s into words, honouring single and double quotes and
// backslash escapes.
func (a *Argv) Set(s string) error {
	words, err := SplitArgs(s)
	if err != nil {
		return err
	}
	*a = words
	return nil
}

// SplitArgs splits a command line into words.
func SplitArgs(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	esc := false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case r == '\\' && quote != '\'':
			esc, inWord = true, true
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 || esc {
		return nil, fmt.Errorf("unterminated quote or escape in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// List is a repeatable flag; one value may also hold several items
// separated by commas (as an environment variable must).
type List []string

func (l *List) String() string { return strings.Join(*l, ",") }

// Set appends the comma-separated items of s.
func (l *List) Set(s string) error {
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}
