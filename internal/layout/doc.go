// Package layout holds no code, only the tests that pin the repository's
// layout rules: which packages may link what, and how long a file may
// grow. The README's Architecture section states the same rules for
// readers.
package layout
