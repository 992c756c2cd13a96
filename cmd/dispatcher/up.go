package main

import (
	"context"
	"errors"
	"io"
)

func cmdUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("up: not implemented yet")
}
