package plugin

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/term"
)

// spinner shows progress on a terminal's stderr; elsewhere it is silent.
type spinner struct{ done chan struct{} }

func newSpinner(o *Options, msg string) *spinner {
	s := &spinner{done: make(chan struct{})}
	f, ok := o.Streams.ErrOut.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		close(s.done)
		return s
	}
	go func() {
		frames := []rune("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
		for i := 0; ; i++ {
			select {
			case <-s.done:
				fmt.Fprint(f, "\r\x1b[K")
				return
			case <-time.After(100 * time.Millisecond):
				fmt.Fprintf(f, "\r%c %s…", frames[i%len(frames)], msg)
			}
		}
	}()
	return s
}

func (s *spinner) stop() {
	select {
	case <-s.done:
	default:
		close(s.done)
		time.Sleep(10 * time.Millisecond)
	}
}
