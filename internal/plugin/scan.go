package plugin

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/latchkey-dev/latchkey/internal/keys"
)

// maxScanBytes skips files too large to be source or configuration.
const maxScanBytes = 16 << 20

func newScan(o *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "scan PATH...",
		Short: "Find Latchkey keys in files (for pre-commit hooks and CI)",
		Long: `Find Latchkey keys in files and directories. Only keys whose checksum holds
are reported, so there is next to no noise; keys are shown masked. Exits 1
when it finds any, 0 when none. Hex-format keys have no checksum and cannot
be found this way.`,
		Example: `  kubectl latchkey scan .
  git diff --cached --name-only | xargs kubectl latchkey scan   # pre-commit`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			found := 0
			for _, root := range args {
				err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
					if err != nil {
						return err
					}
					if d.IsDir() {
						if d.Name() == ".git" && path != root {
							return filepath.SkipDir
						}
						return nil
					}
					if info, err := d.Info(); err != nil || !info.Mode().IsRegular() || info.Size() > maxScanBytes {
						return nil
					}
					data, err := os.ReadFile(path)
					if err != nil {
						return err
					}
					for _, m := range keys.Find(data) {
						line := bytes.Count(data[:m.Offset], []byte("\n")) + 1
						fmt.Fprintf(o.Streams.Out, "%s:%d: Latchkey API key %s\n", path, line, m.Hint)
						found++
					}
					return nil
				})
				if err != nil {
					return fmt.Errorf("scanning %s: %w", root, err)
				}
			}
			if found > 0 {
				return fmt.Errorf("found %d Latchkey API key(s): remove them, and revoke any that were ever committed or shared", found)
			}
			return nil
		},
	}
}
