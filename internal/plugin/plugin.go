// Package plugin is `kubectl latchkey`: create, list, rotate, suspend,
// resume, revoke and check API keys, and look at a tenant's usage, from a
// terminal or, with console, in a browser.
package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/latchkey-dev/latchkey/internal/scheme"
)

// Options are what every command shares.
type Options struct {
	Streams genericiooptions.IOStreams
	Flags   *genericclioptions.ConfigFlags
	Clock   clock.PassiveClock
	// Color forces colour on or off; nil decides from the terminal.
	Color *bool
	// NewClient builds the Kubernetes client; tests may replace it.
	NewClient func() (client.Client, error)
}

// NewCommand returns the root command.
func NewCommand(o *Options) *cobra.Command {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Flags == nil {
		o.Flags = genericclioptions.NewConfigFlags(true)
	}
	if o.NewClient == nil {
		o.NewClient = func() (client.Client, error) {
			cfg, err := o.Flags.ToRESTConfig()
			if err != nil {
				return nil, fmt.Errorf("no usable kubeconfig (%w): set KUBECONFIG or pass --kubeconfig", err)
			}
			return client.New(cfg, client.Options{Scheme: scheme.New()})
		}
	}
	root := &cobra.Command{
		Use:         "kubectl-latchkey",
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl latchkey"},
		Short:       "Manage Latchkey API keys",
		Long: `Manage Latchkey API keys: ApiKeys whose raw key Latchkey delivers once to a
Secret and whose SHA-256 hash it keeps. The namespace is the tenant.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	o.Flags.AddFlags(root.PersistentFlags())
	root.SetIn(o.Streams.In)
	root.SetOut(o.Streams.Out)
	root.SetErr(o.Streams.ErrOut)
	root.AddCommand(newCreate(o), newList(o), newRotate(o), newSuspend(o), newResume(o), newRevoke(o), newEnable(o), newWhoAmI(o), newUsage(o), newScan(o), newUninstall(o), NewConsole(o))
	return root
}

// Main runs the plugin and returns the process exit code.
func Main(args []string, streams genericiooptions.IOStreams) int {
	cmd := NewCommand(&Options{Streams: streams})
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(streams.ErrOut, "error:", err)
		return 1
	}
	return 0
}

func (o *Options) namespace(all bool) (string, error) {
	if all {
		return "", nil
	}
	ns, _, err := o.Flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", fmt.Errorf("cannot tell the namespace (%w): pass -n NAMESPACE", err)
	}
	return ns, nil
}

// connect returns the namespace to work in (all: every one) and a client.
func (o *Options) connect(all bool) (string, client.Client, error) {
	ns, err := o.namespace(all)
	if err != nil {
		return "", nil, err
	}
	c, err := o.NewClient()
	return ns, c, err
}

func (o *Options) colour() bool {
	if o.Color != nil {
		return *o.Color
	}
	f, ok := o.Streams.Out.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) && os.Getenv("NO_COLOR") == ""
}

// printStructured writes v as JSON or YAML for -o json|yaml.
func printStructured(w io.Writer, format string, v any) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	default:
		return fmt.Errorf("unknown output format %q: use -o json or -o yaml", format)
	}
}

func checkOutput(format string, allowed ...string) error {
	if format == "" {
		return nil
	}
	for _, a := range allowed {
		if format == a {
			return nil
		}
	}
	return fmt.Errorf("unknown output format %q: use -o %s", format, strings.Join(allowed, " or -o "))
}

func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
