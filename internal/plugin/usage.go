package plugin

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

func newUsage(o *Options) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Show the tenant's executions and keys, with a per-day chart",
		Example: `  kubectl latchkey usage -n payments
  kubectl latchkey usage -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "json"); err != nil {
				return err
			}
			ns, c, err := o.connect(false)
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(30 * time.Second)
			defer cancel()
			u := &authv1alpha1.Usage{}
			if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: authv1alpha1.UsageName}, u); err != nil {
				if apierrors.IsNotFound(err) {
					return fmt.Errorf("no usage in %s yet: Latchkey creates it with the namespace's first ApiKey", ns)
				}
				return err
			}
			if output != "" {
				return printStructured(o.Streams.Out, output, u.Status)
			}
			return printUsage(o.Streams.Out, ns, &u.Status)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "Output format: json.")
	return cmd
}

const barWidth = 40

// printUsage draws the summary cards and a stacked bar per day.
func printUsage(w io.Writer, ns string, s *authv1alpha1.UsageStatus) error {
	first, last := "", ""
	if len(s.Days) > 0 {
		first, last = s.Days[0].Date, s.Days[len(s.Days)-1].Date
	}
	fmt.Fprintf(w, "Usage of %s, %s to %s (%d days, UTC)\n\n", ns, first, last, len(s.Days))
	cards := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	rate, avg := "-", "-"
	if s.SuccessRate != "" {
		rate = s.SuccessRate + "%"
	}
	if s.AverageDurationSeconds != "" {
		avg = s.AverageDurationSeconds + "s"
	}
	fmt.Fprintln(cards, "  Executions\tSuccess rate\tAvg duration\tActive keys")
	fmt.Fprintf(cards, "  %d\t%s\t%s\t%d\n", s.Executions, rate, avg, s.Keys.Active)
	if err := cards.Flush(); err != nil {
		return err
	}
	if s.InFlight > 0 {
		fmt.Fprintf(w, "  (%d in flight or paused: counted in executions only)\n", s.InFlight)
	}

	fmt.Fprintf(w, "\nExecutions per day: █ succeeded  ▒ failed  ░ in flight\n")
	var most int64
	for _, d := range s.Days {
		most = max(most, d.Total)
	}
	for _, d := range s.Days {
		fmt.Fprintf(w, "  %s │%s %d\n", d.Date[5:], bar(d, most), d.Total)
	}
	return nil
}

// bar draws one day scaled to the busiest day, so that a day with any
// executions shows at least one cell.
func bar(d authv1alpha1.UsageDay, most int64) string {
	if most == 0 || d.Total == 0 {
		return strings.Repeat(" ", barWidth)
	}
	cells := func(n int64) int {
		c := int(n * barWidth / most)
		if n > 0 && c == 0 {
			c = 1
		}
		return c
	}
	ok, failed := cells(d.Succeeded), cells(d.Failed)
	open := cells(d.Total - d.Succeeded - d.Failed)
	used := min(ok+failed+open, barWidth)
	return strings.Repeat("█", ok) + strings.Repeat("▒", failed) + strings.Repeat("░", open) + strings.Repeat(" ", barWidth-used)
}
