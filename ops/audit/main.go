// An independent reader of the job's audit checkpoints: Go's golang.org/x/mod/sumdb/note, the
// reference implementation of C2SP signed notes. Usage: go run . VERIFIER_KEY CHECKPOINT_FILE.
// Prints the note text when a signature by the key verifies; exits 1 otherwise.
package main

import (
	"fmt"
	"os"

	"golang.org/x/mod/sumdb/note"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go run . VERIFIER_KEY CHECKPOINT_FILE")
		os.Exit(2)
	}
	verifier, err := note.NewVerifier(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "verifier key:", err)
		os.Exit(1)
	}
	msg, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	n, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		fmt.Fprintln(os.Stderr, "checkpoint:", err)
		os.Exit(1)
	}
	fmt.Print(n.Text)
}
