package main

import (
	"context"
	"errors"
	"io"
)

func cmdChaos(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("chaos: not implemented yet")
}
